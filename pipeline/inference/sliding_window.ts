/**
 * Sliding-window inference: a volume of any size through a network trained on smaller crops.
 *
 * As nnU-Net does: windows overlap (0.5 by default; {@linkcode autoOverlap} lowers it to 0.25 on
 * volumes where 0.5 would cost more than a whole BraTS case can afford on a CPU), each window's probabilities are weighted by a
 * Gaussian centred on it (σ = 1/8 of the window) so that predictions near a window's border, which
 * see less context, count less, and the weighted sum is divided by the summed weights. Optional
 * test-time augmentation averages the 8 mirrorings over the three axes.
 *
 * The network comes as a {@linkcode WindowPredictor}: a function from windows to probabilities
 * with its channel counts, so that this module runs any model (model/predict.ts makes one of the
 * U-Net) and tests can run it on a plain function.
 * @module
 */
import { cropBox, type Dims, mirrorVolume } from "../volume/mod.ts";

/**
 * What sliding-window inference needs of a network: channels in and out, the multiple a window's
 * edges must be, and the probabilities of a batch of windows.
 */
export interface WindowPredictor {
  /** Channels of an input voxel. */
  inChannels: number;
  /** Channels (regions) of an output voxel. */
  outChannels: number;
  /** Each window edge must be a multiple of this (the network's down-sampling factor). */
  multiple: number;
  /**
   * Probabilities of `count` windows of `shape` voxels (x, y, z).
   * @param input [count, z, y, x, inChannels] float32, channel-last
   * @returns [count, z, y, x, outChannels] probabilities in [0, 1]
   */
  predict(
    input: Float32Array,
    count: number,
    shape: readonly [number, number, number],
  ): Promise<Float32Array>;
}

/** Options of {@linkcode slidingWindowProbabilities}. */
export interface SlidingWindowOptions {
  /** Window edge in voxels (a cube, shrunk on axes where the volume is smaller). Default 128. */
  window?: number;
  /**
   * Fraction of a window its neighbour overlaps, in [0, {@linkcode MAX_OVERLAP}], or `"auto"`
   * ({@linkcode autoOverlap}). Default 0.5.
   */
  overlap?: Overlap;
  /** Windows per forward pass. Default 1. */
  batch?: number;
  /** Average the 8 mirrorings over x, y, z (test-time augmentation). Default false. */
  mirror?: boolean;
  /** Called after each forward pass with windows done and windows in all. */
  onWindow?: (done: number, total: number) => void;
}

/**
 * The largest window overlap: at 0.95 a window moves by 1/20 of its edge, 20³ = 8,000 times the
 * windows of no overlap; beyond it the count explodes for no measurable gain (nnU-Net uses 0.5).
 */
export const MAX_OVERLAP = 0.95;
/** The overlaps accepted, as help texts and errors print them. */
export const OVERLAP_RANGE = `[0, ${MAX_OVERLAP}]`;

/** A window overlap: a fraction in {@linkcode OVERLAP_RANGE}, or `"auto"` ({@linkcode autoOverlap}). */
export type Overlap = number | "auto";

/**
 * The most voxels the windows of `"auto"` may cover at overlap 0.5: 2²³ (8.4 M), about 35 s of
 * forward passes on 2 CPU cores at 32³ windows (4 µs a voxel measured, BENCHMARKS.md). A whole
 * BraTS case's brain box (about 137×173×135) at 0.5 takes 21 M (640 windows of 32³, 108 s end to
 * end), at 0.25 8.3 M (252 windows, 46 s) for a whole-tumour Dice within 0.0022; the synthetic
 * cases of the tests and the demo (up to 96×96×72 at 32³: 3.3 M) stay at 0.5.
 */
export const AUTO_OVERLAP_VOXELS = 2 ** 23;

/**
 * The overlap `"auto"` means on a volume of `dims` with windows of edge `window` (a multiple of
 * `m`): 0.5, nnU-Net's, when its windows cover at most {@linkcode AUTO_OVERLAP_VOXELS} voxels,
 * else 0.25, MONAI's default, which runs about 2.5 times fewer windows. It depends only on the
 * volume's extent and the window, so the same case always gets the same overlap.
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { autoOverlap } from "./sliding_window.ts";
 * assertEquals(autoOverlap([96, 96, 72], 32, 16), 0.5); // 100 windows of 32³
 * assertEquals(autoOverlap([137, 173, 135], 32, 16), 0.25); // a brain: 640 windows at 0.5
 * ```
 */
export function autoOverlap(dims: Dims, window: number, m: number): number {
  const shape = windowShape(dims, window, m);
  const windows = dims.reduce((p, d, a) => p * windowStarts(d, shape[a], 0.5).length, 1);
  return windows * shape[0] * shape[1] * shape[2] <= AUTO_OVERLAP_VOXELS ? 0.5 : 0.25;
}

/** `overlap` with `"auto"` resolved for a volume of `dims` (see {@linkcode autoOverlap}). */
export function resolveOverlap(overlap: Overlap, dims: Dims, window: number, m: number): number {
  return overlap === "auto" ? autoOverlap(dims, window, m) : overlap;
}

/**
 * Starts of windows of `window` voxels covering `extent` voxels with at least `overlap` between
 * neighbours, spread evenly from 0 to `extent - window` (one start at 0 when the window is larger).
 */
export function windowStarts(extent: number, window: number, overlap: number): number[] {
  if (extent <= window) return [0];
  const stride = window * (1 - overlap);
  const n = Math.ceil((extent - window) / stride) + 1;
  const step = (extent - window) / (n - 1);
  return Array.from({ length: n }, (_, i) => Math.round(i * step));
}

/** The window shape used on a volume: the requested edge, or less, a multiple of `m` per axis. */
export function windowShape(dims: Dims, window: number, m: number): Dims {
  if (!Number.isInteger(window) || window < m || window % m !== 0) {
    throw new RangeError(`Window edge ${window} must be a positive multiple of ${m}`);
  }
  return dims.map((d) => Math.min(window, Math.ceil(d / m) * m)) as Dims;
}

/** Gaussian importance map over a window [z, y, x], σ = edge/8, peak 1, floor at 1e-3 of peak. */
export function gaussianWeights(shape: Dims): Float32Array {
  const axis = (n: number) => {
    const sigma = n / 8;
    const c = (n - 1) / 2;
    return Float64Array.from({ length: n }, (_, i) => Math.exp(-((i - c) ** 2) / (2 * sigma ** 2)));
  };
  const [gx, gy, gz] = shape.map(axis);
  const out = new Float32Array(shape[0] * shape[1] * shape[2]);
  let i = 0;
  for (let z = 0; z < shape[2]; z++) {
    for (let y = 0; y < shape[1]; y++) {
      for (let x = 0; x < shape[0]; x++) out[i++] = Math.max(gz[z] * gy[y] * gx[x], 1e-3);
    }
  }
  return out;
}

/**
 * Probabilities (sigmoid of the logits) of every voxel of a channel-last volume.
 *
 * @param image [z, y, x, inChannels] float32
 * @param dims the volume's extent along x, y, z
 * @returns [z, y, x, outChannels] probabilities in [0, 1]
 * @throws {RangeError} synchronously checked arguments are reported as a rejected promise
 */
export async function slidingWindowProbabilities(
  net: WindowPredictor,
  image: Float32Array,
  dims: Dims,
  options: SlidingWindowOptions = {},
): Promise<Float32Array> {
  const { window = 128, batch = 1, mirror = false, onWindow } = options;
  const cin = net.inChannels;
  const cout = net.outChannels;
  const n = dims[0] * dims[1] * dims[2];
  if (image.length !== n * cin) {
    throw new RangeError(
      `Image has ${image.length} values; dims [${dims}] × ${cin} channels need ${n * cin}`,
    );
  }
  const overlap = resolveOverlap(options.overlap ?? 0.5, dims, window, net.multiple);
  if (!(overlap >= 0 && overlap <= MAX_OVERLAP)) {
    throw new RangeError(`Overlap ${overlap} is not in ${OVERLAP_RANGE}`);
  }
  if (!Number.isInteger(batch) || batch < 1) throw new RangeError(`Batch ${batch} is not ≥ 1`);
  const shape = windowShape(dims, window, net.multiple);
  const weights = gaussianWeights(shape);
  const starts: Dims[] = [];
  const [sx, sy, sz] = dims.map((d, a) => windowStarts(d, shape[a], overlap));
  for (const z of sz) for (const y of sy) for (const x of sx) starts.push([x, y, z]);
  const wv = shape[0] * shape[1] * shape[2];
  const sum = new Float32Array(n * cout);
  const weightSum = new Float32Array(n);
  const flips = mirror ? [0, 1, 2, 3, 4, 5, 6, 7] : [0];
  const passes = Math.ceil(starts.length / batch) * flips.length;
  let done = 0;
  for (let b0 = 0; b0 < starts.length; b0 += batch) {
    const group = starts.slice(b0, b0 + batch);
    const crops = group.map((s) => cropBox(image, dims, cin, s, shape));
    const probs = group.map(() => new Float32Array(wv * cout));
    for (const axes of flips) {
      const input = new Float32Array(group.length * wv * cin);
      crops.forEach((c, i) => input.set(mirrorVolume(c, shape, cin, axes), i * wv * cin));
      const values = await net.predict(input, group.length, shape);
      if (values.length !== group.length * wv * cout) {
        throw new RangeError(
          `predict returned ${values.length} values for ${group.length} window(s) of ` +
            `${shape.join("×")} × ${cout} channels`,
        );
      }
      group.forEach((_, i) => {
        const p = mirrorVolume(
          values.subarray(i * wv * cout, (i + 1) * wv * cout),
          shape,
          cout,
          axes,
        );
        const acc = probs[i];
        for (let j = 0; j < acc.length; j++) acc[j] += p[j];
      });
      onWindow?.(++done, passes);
    }
    group.forEach((s, i) =>
      accumulate(probs[i], 1 / flips.length, weights, s, shape, dims, cout, sum, weightSum)
    );
  }
  for (let i = 0; i < n; i++) {
    const w = weightSum[i];
    for (let k = 0; k < cout; k++) sum[i * cout + k] /= w;
  }
  return sum;
}

/** Adds a window's probabilities (× `scale` × its Gaussian) into the volume's running sums. */
function accumulate(
  probs: Float32Array,
  scale: number,
  weights: Float32Array,
  start: Dims,
  shape: Dims,
  dims: Dims,
  cout: number,
  sum: Float32Array,
  weightSum: Float32Array,
) {
  const [nx, ny, nz] = dims;
  for (let z = 0; z < shape[2]; z++) {
    const vz = start[2] + z;
    if (vz >= nz) break;
    for (let y = 0; y < shape[1]; y++) {
      const vy = start[1] + y;
      if (vy >= ny) break;
      for (let x = 0; x < shape[0]; x++) {
        const vx = start[0] + x;
        if (vx >= nx) break;
        const w = (z * shape[1] + y) * shape[0] + x;
        const v = (vz * ny + vy) * nx + vx;
        const g = weights[w];
        weightSum[v] += g;
        for (let k = 0; k < cout; k++) sum[v * cout + k] += probs[w * cout + k] * scale * g;
      }
    }
  }
}
