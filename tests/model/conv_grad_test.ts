/**
 * model/conv_grad.ts: the tap-by-tap conv3d filter gradient webgpu uses, against the cpu backend's
 * Conv3DBackpropFilterV2.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { conv3dFilterGradByTaps } from "../../model/conv_grad.ts";

await tf.setBackend("cpu");

type Shape5 = [number, number, number, number, number];

// The tap-by-tap filter gradient webgpu uses, against the cpu backend's Conv3DBackpropFilterV2 (the
// native C loop when built, else tfjs's): independent code either way.
for (
  const [xShape, filterShape, stride, pad] of [
    [[2, 6, 5, 7, 3], [3, 3, 3, 3, 5], 1, "same"], // the stem
    [[1, 8, 6, 4, 4], [2, 2, 2, 4, 6], 2, "valid"], // a down-sampling convolution
    [[1, 5, 7, 6, 2], [3, 1, 2, 2, 3], 1, "same"], // an even kernel: padding uneven
    [[1, 7, 6, 9, 2], [3, 3, 3, 2, 4], 2, "same"], // stride 2 with padding, odd sizes
  ] as [Shape5, Shape5, number, "same" | "valid"][]
) {
  Deno.test(`conv3dFilterGradByTaps equals Conv3DBackpropFilterV2, x=[${xShape}] w=[${filterShape}] stride ${stride} ${pad}`, () => {
    const x = tf.randomNormal(xShape, 0, 1, "float32", 1) as tf.Tensor5D;
    const info = tf.backend_util.computeConv3DInfo(
      x.shape,
      filterShape,
      stride,
      1,
      pad,
    );
    const dy = tf.randomNormal(
      [xShape[0], info.outDepth, info.outHeight, info.outWidth, filterShape[4]],
      0,
      1,
      "float32",
      2,
    ) as tf.Tensor5D;
    const before = tf.memory().numTensors;
    const byTaps = conv3dFilterGradByTaps(x, dy, filterShape, stride, pad);
    assertEquals(tf.memory().numTensors, before + 1, "only the result is left");
    const reference = tf.tidy(() =>
      tf.grad((w: tf.Tensor) => tf.sum(tf.mul(tf.conv3d(x, w as tf.Tensor5D, stride, pad), dy)))(
        tf.zeros(filterShape),
      )
    );
    assertEquals(byTaps.shape, filterShape);
    const a = byTaps.dataSync();
    const e = reference.dataSync();
    let worst = 0;
    let scale = 0;
    for (let i = 0; i < e.length; i++) {
      worst = Math.max(worst, Math.abs(a[i] - e[i]));
      scale = Math.max(scale, Math.abs(e[i]));
    }
    assert(scale > 0 && worst / scale < 1e-5, `relative error ${worst / scale}`);
    tf.dispose([x, dy, byTaps, reference]);
  });
}

Deno.test("conv3dFilterGradByTaps names a dy that does not fit the convolution", () => {
  const x = tf.zeros([1, 4, 4, 4, 2]) as tf.Tensor5D;
  const dy = tf.zeros([1, 4, 4, 4, 3]) as tf.Tensor5D;
  assertThrows(
    () => conv3dFilterGradByTaps(x, dy, [2, 2, 2, 2, 3], 2, "valid"),
    TypeError,
    "dy [1,4,4,4,3] must be [1,2,2,2,3]",
  );
  tf.dispose([x, dy]);
});
