/**
 * Depthwise 3D convolution: one filter per channel, stride 1, padding "same", no bias, with its
 * own gradient.
 *
 * TensorFlow.js 4.22 has no depthwise (or grouped) conv3d. This one is built from
 * `tf.depthwiseConv2d` only, so it runs on every backend, and it is wrapped in `tf.customGrad` so
 * that the forward pass keeps just `x` and `filter` for the backward pass instead of the
 * per-depth-offset intermediates automatic differentiation would hold (value and gradient of
 * x=[1,8,8,8,16] peak at 0.21 MB against 1.09 MB for that composite, cpu backend).
 *
 * - forward: one depthwiseConv2d per depth offset over the `d` planes of each sample (2D images),
 *   each result added to the output shifted by its offset along depth;
 * - dx: the same convolution of `dy` with the spatially flipped filter;
 * - dfilter: one strided depthwiseConv2d per height offset in which `dy` plays the filter (see
 *   {@linkcode filterGradient}). tfjs's own `DepthwiseConv2dNativeBackpropFilter` kernel is not
 *   exported as an op, and on the cpu backend it takes 3 s or more for one depth offset (9 of the
 *   27 taps) of a [1,32,32,32,64] input, against 0.2–0.3 s for all 27 taps here.
 *
 * On the cpu backend with the native kernels on (model/native, the default of `selectBackend`),
 * the forward pass and both gradients are single C kernels instead.
 *
 * @example
 * ```ts
 * import * as tf from "./tf.ts";
 * import { depthwiseConv3d } from "./depthwise_conv3d.ts";
 *
 * await tf.setBackend("cpu");
 * const x = tf.ones([1, 4, 4, 4, 2]) as tf.Tensor5D;
 * const filter = tf.ones([3, 3, 3, 2, 1]) as tf.Tensor5D;
 * const y = depthwiseConv3d(x, filter); // [1, 4, 4, 4, 2]; 27 at interior voxels, 8 at corners
 * tf.dispose([x, filter, y]);
 * ```
 * @module
 */
import * as tf from "./tf.ts";
import {
  hasKernel,
  REV_DEPTHWISE_CONV3D,
  REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
  REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
} from "./native/names.ts";

/**
 * Depthwise 3D convolution with stride 1 and padding "same": channel `i` of the output is channel
 * `i` of `x` correlated with `filter[..., i, 0]`, zeros outside the volume.
 *
 * The gradient with respect to both arguments is analytic; between the forward and the backward
 * pass only `x` and `filter` are kept.
 *
 * @param x The input, float32 `[n, d, h, w, c]`.
 * @param filter The filters, float32 `[kd, kh, kw, c, 1]` with odd `kd`, `kh`, `kw` (3×3×3 in the
 *   reference network).
 * @returns The output, `[n, d, h, w, c]`.
 * @throws {TypeError} When a rank, a shape or a dtype is wrong or a kernel size is even.
 */
export function depthwiseConv3d(x: tf.Tensor5D, filter: tf.Tensor5D): tf.Tensor5D {
  validate(x, filter);
  return depthwiseConv3dWithGrad(x, filter);
}

const depthwiseConv3dWithGrad = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
  const [x, filter, save] = args as [tf.Tensor5D, tf.Tensor5D, tf.GradSaveFunc];
  // Only the inputs are saved (references, no new buffers): everything else the backward pass
  // needs is cheaper to recompute than to keep for the length of a network's forward pass.
  save([x, filter]);
  return {
    value: hasKernel(REV_DEPTHWISE_CONV3D)
      ? tf.engine().runKernel<tf.Tensor5D>(REV_DEPTHWISE_CONV3D, { x, filter })
      : convolve(x, filter), // [n, d, h, w, c]
    gradFunc: (dy: tf.Tensor5D, saved: tf.Tensor[]) => {
      const [xs, fs] = saved as [tf.Tensor5D, tf.Tensor5D];
      if (hasKernel(REV_DEPTHWISE_CONV3D_BACKPROP_INPUT)) return nativeGradients(xs, fs, dy);
      // The tape calls this outside any scope of ours: without a tidy, every intermediate would
      // live until the whole backward pass ends.
      return tf.tidy(() => {
        // dfilter first: its padded copies are freed before dx's buffers exist.
        const dFilter = filterGradient(xs, dy, fs.shape); // [kd, kh, kw, c, 1]
        // Reversed as rank 4: the webgpu backend's Reverse kernel fails on rank-5 tensors (4.22).
        const [kd, kh, kw, c] = fs.shape;
        const flipped = tf.reshape<tf.Rank.R5>(
          tf.reverse(tf.reshape(fs, [kd, kh, kw, c]), [0, 1, 2]),
          fs.shape,
        ); // [kd, kh, kw, c, 1]
        const dx = convolve(dy, flipped); // [n, d, h, w, c]
        return [dx, dFilter];
      });
    },
  };
}) as (x: tf.Tensor5D, filter: tf.Tensor5D) => tf.Tensor5D;

/**
 * dx and dfilter from the native kernels of the cpu backend (model/native), which compute the
 * same sums as {@linkcode convolve} and {@linkcode filterGradient} directly, with no
 * intermediates.
 */
function nativeGradients(x: tf.Tensor5D, filter: tf.Tensor5D, dy: tf.Tensor5D): tf.Tensor5D[] {
  const engine = tf.engine();
  const dFilter = engine.runKernel<tf.Tensor5D>(
    REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
    { x, dy },
    { filterShape: filter.shape },
  ); // [kd, kh, kw, c, 1]
  const dx = engine.runKernel<tf.Tensor5D>(REV_DEPTHWISE_CONV3D_BACKPROP_INPUT, { dy, filter }); // [n, d, h, w, c]
  return [dx, dFilter];
}

function validate(x: tf.Tensor, filter: tf.Tensor): void {
  if (x.rank !== 5) {
    throw new TypeError(
      `depthwiseConv3d: x must be rank 5 [n,d,h,w,c], found rank ${x.rank} [${x.shape}]`,
    );
  }
  const c = x.shape[4];
  const [kd, kh, kw, fc, m] = filter.shape;
  if (filter.rank !== 5 || fc !== c || m !== 1) {
    throw new TypeError(
      `depthwiseConv3d: filter must be [kd,kh,kw,c,1] with c = ${c}, found [${filter.shape}]`,
    );
  }
  if (kd % 2 === 0 || kh % 2 === 0 || kw % 2 === 0) {
    throw new TypeError(
      `depthwiseConv3d: padding "same" needs odd kernel sizes, found filter [${filter.shape}]`,
    );
  }
  for (const [name, t] of [["x", x], ["filter", filter]] as const) {
    if (t.dtype !== "float32") {
      throw new TypeError(`depthwiseConv3d: ${name} must be float32, found ${t.dtype}`);
    }
  }
}

/** The forward convolution of a whole batch, sample by sample (see {@linkcode convolveSample}). */
function convolve(x: tf.Tensor5D, filter: tf.Tensor5D): tf.Tensor5D {
  // Why per sample: the depth shifts below are slices along the first axis, which the cpu
  // backend makes as views; slicing depth in a batch of several samples copies element by element.
  const ys: tf.Tensor4D[] = [];
  for (let i = 0; i < x.shape[0]; i++) {
    const xi = sample(x, i); // [d, h, w, c]
    ys.push(convolveSample(xi, filter)); // [d, h, w, c]
    xi.dispose();
  }
  const y = ys.length === 1 ? ys[0] : tf.concat(ys, 0); // [n·d, h, w, c]
  const out = tf.reshape<tf.Rank.R5>(y, x.shape); // [n, d, h, w, c]
  tf.dispose([...ys, y]);
  return out;
}

/**
 * Convolves one sample `[d, h, w, c]`. Its `d` planes are a batch of 2D images: plane `z` of the
 * output is the sum over depth offsets `a` of depthwiseConv2d(plane `z + a - pd`, `filter[a]`).
 * For each offset, the depthwiseConv2d runs once on the planes that reach the output, and its
 * result is laid on the output's planes with zero planes where the offset falls outside.
 */
function convolveSample(xs: tf.Tensor4D, filter: tf.Tensor5D): tf.Tensor4D {
  const [d, h, w, c] = xs.shape;
  const [kd, kh, kw] = filter.shape;
  const pd = (kd - 1) / 2;
  // The centre offset first: it covers every plane and starts the sum.
  const offsets = [pd, ...Array.from({ length: kd }, (_, a) => a).filter((a) => a !== pd)];
  let acc: tf.Tensor4D | null = null; // [d, h, w, c]
  for (const a of offsets) {
    const shift = a - pd;
    const lo = Math.max(0, -shift); // output planes [lo, hi) read input planes [lo, hi) + shift
    const hi = Math.min(d, d - shift);
    if (hi <= lo) continue; // this offset only ever reads the zero padding
    const fa = tf.reshape<tf.Rank.R4>(
      tf.slice(filter, [a, 0, 0, 0, 0], [1, kh, kw, c, 1]),
      [kh, kw, c, 1],
    );
    const input = shift === 0 ? xs : planes(xs, lo + shift, hi + shift); // [hi - lo, h, w, c]
    const z = tf.depthwiseConv2d(input, fa, 1, "same"); // [hi - lo, h, w, c]
    tf.dispose(input === xs ? [fa] : [fa, input]);
    if (acc === null) {
      acc = z;
      continue;
    }
    const parts: tf.Tensor4D[] = [z];
    if (lo > 0) parts.unshift(tf.zeros([lo, h, w, c]));
    if (hi < d) parts.push(tf.zeros([d - hi, h, w, c]));
    const laid = tf.concat(parts, 0); // [d, h, w, c]
    tf.dispose(parts);
    const next: tf.Tensor4D = tf.add(acc, laid);
    tf.dispose([acc, laid]);
    acc = next;
  }
  return acc!;
}

/**
 * The gradient with respect to the filter:
 * `dF[a, b, e, c] = Σ_{n,z,y,x} x[n, z+a-pd, y+b-ph, x+e-pw, c] · dy[n, z, y, x, c]`.
 *
 * Why this formulation: it is a correlation of `x` with `dy` in which `dy` is the (large) filter
 * and the output is only `kd × kw` per channel. Both tensors are viewed as 2D images whose rows
 * are (depth, height) pairs, `row = z·s + y` with the row stride `s = h + 2·ph`: `x` is padded by
 * `ph` zero rows above and below each plane (so `y + b - ph` never spills into a neighbouring
 * plane) and `dy` by `2·ph` below. For each height offset `b`, one depthwiseConv2d with
 * `dy` as a `[d·s, w, c, 1]` filter, row stride `s` and explicit zero padding of
 * `pd·s - b` rows on top gives output row `a` = depth offset `a` and column `e` = width offset
 * `e`. The cost is that of the forward convolution and nothing of size `kd·kh·kw × x` is built.
 */
function filterGradient(
  x: tf.Tensor5D,
  dy: tf.Tensor5D,
  filterShape: [number, number, number, number, number],
): tf.Tensor5D {
  const [n, d, h, w, c] = x.shape;
  let sum: tf.Tensor4D | null = null; // [kd, kh, kw, c]
  for (let i = 0; i < n; i++) {
    const xi = n === 1 ? x : tf.slice(x, [i, 0, 0, 0, 0], [1, d, h, w, c]); // [1, d, h, w, c]
    const dyi = n === 1 ? dy : tf.slice(dy, [i, 0, 0, 0, 0], [1, d, h, w, c]); // [1, d, h, w, c]
    const gi = filterGradientSample(xi, dyi, filterShape); // [kd, kh, kw, c]
    if (n > 1) tf.dispose([xi, dyi]);
    if (sum === null) {
      sum = gi;
    } else {
      const next: tf.Tensor4D = tf.add(sum, gi);
      tf.dispose([sum, gi]);
      sum = next;
    }
  }
  const out = tf.reshape<tf.Rank.R5>(sum!, filterShape); // [kd, kh, kw, c, 1]
  sum!.dispose();
  return out;
}

function filterGradientSample(
  xs: tf.Tensor5D,
  dys: tf.Tensor5D,
  [kd, kh, kw]: [number, number, number, number, number],
): tf.Tensor4D {
  const [, d, h, w, c] = xs.shape;
  const pd = (kd - 1) / 2;
  const ph = (kh - 1) / 2;
  const pw = (kw - 1) / 2;
  const s = h + 2 * ph; // row stride of both images
  const xRows = paddedRows(xs, ph, ph, [1, d * s, w, c]); // [1, d·s, w, c]
  const dyFilter = paddedRows(dys, 0, 2 * ph, [d * s, w, c, 1]); // [d·s, w, c, 1]
  const perB: tf.Tensor3D[] = [];
  for (let b = 0; b < kh; b++) {
    // Output row a must read x row (z + a - pd)·s + y + b for dy row z·s + y, i.e. padded row
    // a·s + z·s + y with pd·s - b rows of zeros on top; when that is negative (kd = 1), the first
    // rows of x are sliced off instead (a view: x is one sample).
    const top = pd * s - b;
    const input = top >= 0 ? xRows : tf.slice(xRows, [0, -top, 0, 0], [1, d * s + top, w, c]);
    const padTop = Math.max(top, 0);
    // (d + kd - 1)·s padded rows make exactly kd output rows with stride s.
    const padBottom = (d + kd - 1) * s - padTop - (input.shape[1] as number);
    const padding: [[number, number], [number, number], [number, number], [number, number]] = [
      [0, 0],
      [padTop, padBottom],
      [pw, pw],
      [0, 0],
    ];
    const g = tf.depthwiseConv2d(input, dyFilter, [s, 1], padding); // [1, kd, kw, c]
    if (input !== xRows) input.dispose();
    perB.push(tf.reshape(g, [kd, kw, c]));
    g.dispose();
  }
  tf.dispose([xRows, dyFilter]);
  const out = tf.stack(perB, 1) as tf.Tensor4D; // [kd, kh, kw, c]
  tf.dispose(perB);
  return out;
}

/**
 * One sample `[1, d, h, w, c]` with `above` and `below` zero rows added to each plane (by
 * concatenation, a row copy), viewed as `shape` (of `d·(h + above + below)·w·c` values).
 */
function paddedRows(
  t: tf.Tensor5D,
  above: number,
  below: number,
  shape: [number, number, number, number],
): tf.Tensor4D {
  const [, d, , w, c] = t.shape;
  const parts: tf.Tensor5D[] = [];
  if (above > 0) parts.push(tf.zeros([1, d, above, w, c]));
  parts.push(t);
  if (below > 0) parts.push(tf.zeros([1, d, below, w, c]));
  const padded = parts.length === 1 ? t : tf.concat(parts, 2); // [1, d, h + above + below, w, c]
  const out = tf.reshape<tf.Rank.R4>(padded, shape);
  tf.dispose(parts.filter((p) => p !== t));
  if (padded !== t) padded.dispose();
  return out;
}

/** Sample `i` of `[n, d, h, w, c]` as `[d, h, w, c]` (a view on the cpu backend). */
function sample(t: tf.Tensor5D, i: number): tf.Tensor4D {
  const [n, d, h, w, c] = t.shape;
  if (n === 1) return tf.reshape<tf.Rank.R4>(t, [d, h, w, c]);
  const s = tf.slice(t, [i, 0, 0, 0, 0], [1, d, h, w, c]); // [1, d, h, w, c]
  const out = tf.reshape<tf.Rank.R4>(s, [d, h, w, c]);
  s.dispose();
  return out;
}

/** Planes `[from, to)` of `[d, h, w, c]` (a view on the cpu backend). */
function planes(t: tf.Tensor4D, from: number, to: number): tf.Tensor4D {
  const [, h, w, c] = t.shape;
  return tf.slice(t, [from, 0, 0, 0], [to - from, h, w, c]);
}
