/**
 * The filter gradient of a dense 3D convolution as one matrix product per kernel tap, for the
 * backends whose own `Conv3DBackpropFilterV2` is one thread per filter element.
 *
 * tfjs-webgpu's kernel gives each of the filter's kd·kh·kw·ci·co values one thread that loops over
 * every output voxel: for the stem at 128³ that is 1,728 threads walking 2 million voxels each,
 * which leaves a GPU of some 270,000 resident threads almost idle and waiting on memory. Here each
 * tap (a, b, e) is `dW[a, b, e] = X_tᵀ · dY`, where `X_t` [voxels, ci] holds the input each output
 * voxel reads through that tap (a strided slice of the input; output voxels whose read falls in
 * the padding add nothing and are left out of both factors) and `dY` [voxels, co]: a product with
 * a long inner dimension and a small output, which tfjs-webgpu runs as a split-K matrix product
 * across the whole GPU. One tap's slices are alive at a time.
 * @module
 */
import * as tf from "./tf.ts";
import { webGpuAdapterIsSoftware } from "./backend.ts";
import { envVar } from "./env.ts";

/**
 * How the network's convolution-filter gradients are computed: `taps` by
 * {@linkcode conv3dFilterGradByTaps}, `kernel` by the backend's `Conv3DBackpropFilterV2`, `auto`
 * taps on webgpu with a hardware adapter and the kernel everywhere else. On Mesa's software
 * adapter the taps are slower (its split-K matrix products are: 0.40 s vs 0.21 s for the stem's
 * gradient at 32³, 7.0 s vs 0.43 s at 64³, though 0.06 s vs 0.11 s for the first down-sampling
 * convolution's); no GPU was at hand to measure the hardware side, which `bench kernels` on webgpu
 * compares.
 */
export type ConvFilterGradMode = "auto" | "taps" | "kernel";

const MODES: readonly ConvFilterGradMode[] = ["auto", "taps", "kernel"];

let mode: ConvFilterGradMode = parseMode(envVar("REVUNET_CONV_FILTER_GRAD"));

function parseMode(value: string | undefined): ConvFilterGradMode {
  if (value === undefined || value === "") return "auto";
  if ((MODES as readonly string[]).includes(value)) return value as ConvFilterGradMode;
  throw new RangeError(
    `REVUNET_CONV_FILTER_GRAD must be one of ${MODES.join(", ")}, found ${JSON.stringify(value)}`,
  );
}

/** Sets the mode (see {@linkcode ConvFilterGradMode}); returns the previous one. */
export function setConvFilterGradMode(next: ConvFilterGradMode): ConvFilterGradMode {
  const was = mode;
  mode = parseMode(next);
  return was;
}

/** Whether the network computes its convolution-filter gradients by taps on this backend. */
export function convFilterGradByTaps(): boolean {
  if (tf.getBackend() !== "webgpu") return false;
  return mode === "taps" || (mode === "auto" && !webGpuAdapterIsSoftware());
}

/**
 * dW [kd, kh, kw, ci, co] of `y = conv3d(x, W, stride, pad)` (dilation 1) given dy, the same
 * values as tfjs's `Conv3DBackpropFilterV2` up to float32 summation order.
 */
export function conv3dFilterGradByTaps(
  x: tf.Tensor5D,
  dy: tf.Tensor5D,
  filterShape: [number, number, number, number, number],
  stride: number,
  pad: "same" | "valid",
): tf.Tensor5D {
  const [kd, kh, kw, ci, co] = filterShape;
  const info = tf.backend_util.computeConv3DInfo(x.shape, filterShape, stride, 1, pad);
  const [n, od, oh, ow] = [x.shape[0], info.outDepth, info.outHeight, info.outWidth];
  if (dy.shape.join() !== [n, od, oh, ow, co].join()) {
    throw new TypeError(
      `conv3dFilterGradByTaps: dy [${dy.shape}] must be [${[n, od, oh, ow, co]}] for x ` +
        `[${x.shape}], filter [${filterShape}], stride ${stride}, ${pad}`,
    );
  }
  if (x.shape[4] !== ci) {
    throw new TypeError(
      `conv3dFilterGradByTaps: x [${x.shape}] has ${x.shape[4]} channels, the filter ${ci}`,
    );
  }
  return tf.tidy(() => {
    const p = info.padInfo;
    const front = [p.front, p.top, p.left];
    const inDims = [x.shape[1], x.shape[2], x.shape[3]];
    const outDims = [od, oh, ow];
    const taps: tf.Tensor[] = [];
    for (let a = 0; a < kd; a++) {
      for (let b = 0; b < kh; b++) {
        for (let e = 0; e < kw; e++) {
          // The output voxels o whose read o·stride + tap − front falls inside the input (the rest
          // read padding, zeros, and add nothing); no padded copy (tfjs-webgpu cannot pad 5-D).
          const first: number[] = [];
          const count: number[] = [];
          [a, b, e].forEach((t, i) => {
            const lo = Math.max(0, Math.ceil((front[i] - t) / stride));
            const hi = Math.min(
              outDims[i] - 1,
              Math.floor((inDims[i] - 1 + front[i] - t) / stride),
            );
            first.push(lo);
            count.push(Math.max(0, hi - lo + 1));
          });
          if (count.some((c) => c === 0)) {
            taps.push(tf.zeros([ci, co]));
            continue;
          }
          const start = first.map((o, i) => o * stride + [a, b, e][i] - front[i]);
          const reads = tf.stridedSlice(
            x,
            [0, ...start, 0],
            [n, ...start.map((s0, i) => s0 + stride * (count[i] - 1) + 1), ci],
            [1, stride, stride, stride, 1],
          ); // [n, count, ci]
          const grads = count.every((c, i) => c === outDims[i])
            ? dy
            : tf.slice(dy, [0, ...first, 0], [n, ...count, co]);
          taps.push(tf.matMul(tf.reshape(reads, [-1, ci]), tf.reshape(grads, [-1, co]), true));
          // Only one tap's copies at a time.
          reads.dispose();
          if (grads !== dy) grads.dispose();
        }
      }
    }
    return tf.reshape(tf.stack(taps), filterShape) as tf.Tensor5D;
  });
}
