/**
 * model/depthwise_conv3d.ts, the depthwise 3D convolution TensorFlow.js lacks: against per-channel
 * tf.conv3d, depthwiseConv2d per plane and a plain loop (values), autodiff of those composites and
 * central differences (gradients); leaks, what it keeps between forward and backward, peak memory.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { depthwiseConv3d } from "../../model/depthwise_conv3d.ts";
import {
  assertAllClose,
  directionalDerivative,
  numericGradient,
  peakBytesAbove,
  randomNormal,
  seededRandom,
  type TensorFn,
  valueAndGrads,
} from "../_grad_check.ts";

await tf.setBackend("cpu");

type Shape5 = [number, number, number, number, number];

// ---------------------------------------------------------------------------------------------
// References for depthwiseConv3d
// ---------------------------------------------------------------------------------------------

/** Channel by channel with tf.conv3d: slice channel i, convolve with filter[..., i:i+1, :]. */
function depthwiseByConv3d(x: tf.Tensor5D, filter: tf.Tensor5D): tf.Tensor5D {
  return tf.tidy(() => {
    const [kd, kh, kw, c] = filter.shape;
    const outs: tf.Tensor5D[] = [];
    for (let i = 0; i < c; i++) {
      const xi = tf.slice(x, [0, 0, 0, 0, i], [-1, -1, -1, -1, 1]); // [n, d, h, w, 1]
      const fi = tf.slice(filter, [0, 0, 0, i, 0], [kd, kh, kw, 1, 1]); // [kd, kh, kw, 1, 1]
      outs.push(tf.conv3d(xi, fi, 1, "same"));
    }
    return tf.concat(outs, 4);
  });
}

/**
 * The straightforward composite from depthwiseConv2d, left to automatic differentiation: pad depth,
 * one depthwiseConv2d per depth offset on the shifted planes, sum (the memory baseline).
 */
function depthwiseByPlanes(x: tf.Tensor5D, filter: tf.Tensor5D): tf.Tensor5D {
  return tf.tidy(() => {
    const [n, d, h, w, c] = x.shape;
    const [kd, kh, kw] = filter.shape;
    const pd = (kd - 1) / 2;
    const padded = tf.pad(x, [[0, 0], [pd, pd], [0, 0], [0, 0], [0, 0]]); // [n, d+2pd, h, w, c]
    let sum: tf.Tensor4D | null = null;
    for (let a = 0; a < kd; a++) {
      const planes = tf.reshape(tf.slice(padded, [0, a, 0, 0, 0], [n, d, h, w, c]), [
        n * d,
        h,
        w,
        c,
      ]) as tf.Tensor4D; // [n·d, h, w, c]
      const fa = tf.reshape(tf.slice(filter, [a, 0, 0, 0, 0], [1, kh, kw, c, 1]), [kh, kw, c, 1]);
      const term = tf.depthwiseConv2d(planes, fa as tf.Tensor4D, 1, "same");
      sum = sum === null ? term : tf.add(sum, term);
    }
    return tf.reshape(sum!, x.shape) as tf.Tensor5D;
  });
}

/** Seven nested loops in float64. */
function depthwiseLoop(x: tf.Tensor5D, filter: tf.Tensor5D): Float64Array {
  const [n, d, h, w, c] = x.shape;
  const [kd, kh, kw] = filter.shape;
  const xv = x.dataSync();
  const fv = filter.dataSync();
  const out = new Float64Array(xv.length);
  const at = (i: number, z: number, y: number, u: number, ch: number) =>
    (((i * d + z) * h + y) * w + u) * c + ch;
  for (let i = 0; i < n; i++) {
    for (let z = 0; z < d; z++) {
      for (let y = 0; y < h; y++) {
        for (let u = 0; u < w; u++) {
          for (let ch = 0; ch < c; ch++) {
            let s = 0;
            for (let a = 0; a < kd; a++) {
              for (let b = 0; b < kh; b++) {
                for (let e = 0; e < kw; e++) {
                  const zz = z + a - (kd - 1) / 2;
                  const yy = y + b - (kh - 1) / 2;
                  const uu = u + e - (kw - 1) / 2;
                  if (zz < 0 || zz >= d || yy < 0 || yy >= h || uu < 0 || uu >= w) continue;
                  s += xv[at(i, zz, yy, uu, ch)] * fv[((a * kh + b) * kw + e) * c + ch];
                }
              }
            }
            out[at(i, z, y, u, ch)] = s;
          }
        }
      }
    }
  }
  return out;
}

const dwFused: TensorFn = (x, f) => depthwiseConv3d(x as tf.Tensor5D, f as tf.Tensor5D);
const dwByConv3d: TensorFn = (x, f) => depthwiseByConv3d(x as tf.Tensor5D, f as tf.Tensor5D);
const dwByPlanes: TensorFn = (x, f) => depthwiseByPlanes(x as tf.Tensor5D, f as tf.Tensor5D);

function dwInputs(xShape: Shape5, k: [number, number, number], seed: number) {
  const rng = seededRandom(seed);
  const x = randomNormal<tf.Rank.R5>(xShape, rng);
  const filter = randomNormal<tf.Rank.R5>([...k, xShape[4], 1], rng);
  const dy = randomNormal<tf.Rank.R5>(xShape, rng);
  return { x, filter, dy, rng };
}

const kName = (k: number[]) => (k.every((v) => v === k[0]) ? `k=${k[0]}` : `k=[${k}]`);

// ---------------------------------------------------------------------------------------------
// depthwiseConv3d
// ---------------------------------------------------------------------------------------------

const DW_CASES: { x: Shape5; k: [number, number, number] }[] = [
  { x: [1, 5, 6, 7, 4], k: [3, 3, 3] },
  { x: [2, 4, 5, 3, 3], k: [3, 3, 3] },
  { x: [1, 3, 4, 4, 1], k: [1, 1, 1] },
  { x: [2, 6, 5, 4, 2], k: [5, 5, 5] },
  { x: [1, 2, 3, 2, 2], k: [5, 3, 3] }, // kernel deeper than the volume
  { x: [2, 3, 4, 5, 2], k: [1, 3, 5] },
];

for (const [i, { x: xShape, k }] of DW_CASES.entries()) {
  const shapes = `x=[${xShape}] ${kName(k)}`;

  Deno.test(`depthwiseConv3d() equals per-channel tf.conv3d, ${shapes}`, () => {
    const { x, filter, dy } = dwInputs(xShape, k, 100 + i);
    const y = depthwiseConv3d(x, filter);
    const ref = depthwiseByConv3d(x, filter);
    assertAllClose(y, ref, 1e-6, "output");
    tf.dispose([x, filter, dy, y, ref]);
  });

  Deno.test(`depthwiseConv3d() dx and dfilter equal autodiff of per-channel conv3d, ${shapes}`, () => {
    const { x, filter, dy } = dwInputs(xShape, k, 200 + i);
    const fused = valueAndGrads(dwFused, [x, filter], dy);
    const ref = valueAndGrads(dwByConv3d, [x, filter], dy);
    assertAllClose(fused.grads[0], ref.grads[0], 1e-5, "dx");
    assertAllClose(fused.grads[1], ref.grads[1], 1e-5, "dfilter");
    tf.dispose([x, filter, dy, fused.value, ref.value, ...fused.grads, ...ref.grads]);
  });
}

Deno.test("depthwiseConv3d() equals a plain loop, x=[2,3,4,5,3] k=3 and x=[1,4,3,5,2] k=[3,1,5]", () => {
  for (const [xShape, k] of [[[2, 3, 4, 5, 3], [3, 3, 3]], [[1, 4, 3, 5, 2], [3, 1, 5]]] as const) {
    const { x, filter, dy } = dwInputs([...xShape], [...k], 7);
    const y = depthwiseConv3d(x, filter);
    assertAllClose(y.dataSync(), depthwiseLoop(x, filter), 1e-6, `x=[${xShape}]`);
    tf.dispose([x, filter, dy, y]);
  }
});

Deno.test("depthwiseConv3d() equals the depthwiseConv2d-per-plane composite, x=[2,5,4,6,3] k=3", () => {
  const { x, filter, dy } = dwInputs([2, 5, 4, 6, 3], [3, 3, 3], 8);
  const fused = valueAndGrads(dwFused, [x, filter], dy);
  const ref = valueAndGrads(dwByPlanes, [x, filter], dy);
  assertAllClose(fused.value, ref.value, 1e-6, "output");
  assertAllClose(fused.grads[0], ref.grads[0], 1e-5, "dx");
  assertAllClose(fused.grads[1], ref.grads[1], 1e-5, "dfilter");
  tf.dispose([x, filter, dy, fused.value, ref.value, ...fused.grads, ...ref.grads]);
});

Deno.test("depthwiseConv3d() gradients match central differences element by element, x=[1,3,3,3,2] k=3", () => {
  const { x, filter, dy } = dwInputs([1, 3, 3, 3, 2], [3, 3, 3], 9);
  const { value, grads } = valueAndGrads(dwFused, [x, filter], dy);
  // Linear in each argument: the differences are exact but for float32 rounding of the output.
  assertAllClose(
    grads[0].dataSync(),
    numericGradient(dwFused, [x, filter], 0, dy, 1e-2),
    1e-3,
    "dx",
  );
  assertAllClose(
    grads[1].dataSync(),
    numericGradient(dwFused, [x, filter], 1, dy, 1e-2),
    1e-3,
    "dfilter",
  );
  tf.dispose([x, filter, dy, value, ...grads]);
});

Deno.test("depthwiseConv3d() gradients match directional central differences, x=[2,4,5,3,3] k=3", () => {
  const { x, filter, dy, rng } = dwInputs([2, 4, 5, 3, 3], [3, 3, 3], 10);
  const { value, grads } = valueAndGrads(dwFused, [x, filter], dy);
  for (const which of [0, 1]) {
    const direction = randomNormal([x, filter][which].shape, rng);
    const { numeric, analytic } = directionalDerivative(
      dwFused,
      [x, filter],
      which,
      dy,
      grads[which],
      direction,
      1e-2,
    );
    assertAllClose([numeric], [analytic], 1e-3, which === 0 ? "dx·v" : "dfilter·v");
    direction.dispose();
  }
  tf.dispose([x, filter, dy, value, ...grads]);
});

Deno.test("depthwiseConv3d() leaks no tensor in forward and gradient, x=[2,4,5,3,3] k=3", () => {
  const { x, filter, dy } = dwInputs([2, 4, 5, 3, 3], [3, 3, 3], 11);
  const before = tf.memory().numTensors;
  const y = depthwiseConv3d(x, filter);
  y.dispose();
  const { value, grads } = valueAndGrads(dwFused, [x, filter], dy);
  tf.dispose([value, ...grads]);
  assertEquals(tf.memory().numTensors, before);
  tf.dispose([x, filter, dy]);
});

Deno.test("depthwiseConv3d() keeps only x and filter between forward and backward, x=[2,4,5,3,3] k=3", () => {
  const { x, filter, dy } = dwInputs([2, 4, 5, 3, 3], [3, 3, 3], 12);
  const before = tf.memory().numBytes;
  let kept = -1;
  const { value, grads } = valueAndGrads(
    (a, b) => {
      const y = dwFused(a, b);
      kept = tf.memory().numBytes - before - y.size * 4;
      return y;
    },
    [x, filter],
    dy,
  );
  // The tape's saved tensors are clones of the inputs (the same buffers, counted again).
  assertEquals(kept, (x.size + filter.size) * 4);
  tf.dispose([x, filter, dy, value, ...grads]);
});

Deno.test("depthwiseConv3d() value-and-grad peaks below the autodiff composites, x=[1,8,8,8,16] k=3", async () => {
  const { x, filter, dy } = dwInputs([1, 8, 8, 8, 16], [3, 3, 3], 13);
  const peak = (f: TensorFn) =>
    peakBytesAbove(() => {
      const { value, grads } = valueAndGrads(f, [x, filter], dy);
      tf.dispose([value, ...grads]);
    });
  const fused = await peak(dwFused);
  const byPlanes = await peak(dwByPlanes);
  const byConv3d = await peak(dwByConv3d);
  console.log(
    `  peakBytes above inputs, x=[1,8,8,8,16] k=3: fused ${fused}, depthwiseConv2d composite ${byPlanes}, per-channel conv3d composite ${byConv3d}`,
  );
  assert(fused < byPlanes, `fused ${fused} >= depthwiseConv2d composite ${byPlanes}`);
  assert(fused < byConv3d, `fused ${fused} >= per-channel conv3d composite ${byConv3d}`);
  tf.dispose([x, filter, dy]);
});

Deno.test("depthwiseConv3d() rejects wrong ranks, shapes, kernel sizes and dtypes", () => {
  const x = tf.zeros([1, 4, 4, 4, 8]) as tf.Tensor5D;
  const bad = tf.zeros([3, 3, 3, 4, 1]) as tf.Tensor5D;
  assertThrows(
    () => depthwiseConv3d(x, bad),
    TypeError,
    "depthwiseConv3d: filter must be [kd,kh,kw,c,1] with c = 8, found [3,3,3,4,1]",
  );
  const multiplier = tf.zeros([3, 3, 3, 8, 2]) as tf.Tensor5D;
  assertThrows(() => depthwiseConv3d(x, multiplier), TypeError, "found [3,3,3,8,2]");
  const even = tf.zeros([3, 2, 3, 8, 1]) as tf.Tensor5D;
  assertThrows(() => depthwiseConv3d(x, even), TypeError, "odd kernel sizes");
  const x4 = tf.zeros([4, 4, 4, 8]) as unknown as tf.Tensor5D;
  const filter = tf.zeros([3, 3, 3, 8, 1]) as tf.Tensor5D;
  assertThrows(() => depthwiseConv3d(x4, filter), TypeError, "x must be rank 5");
  const xi = tf.zeros([1, 4, 4, 4, 8], "int32") as tf.Tensor5D;
  assertThrows(() => depthwiseConv3d(xi, filter), TypeError, "x must be float32, found int32");
  tf.dispose([x, bad, multiplier, even, x4, filter, xi]);
});
