/**
 * Surface distances between binary masks on a voxel grid with anisotropic spacing: the exact
 * Euclidean distance transform, mask surfaces, and the 95th-percentile Hausdorff distance as MedPy's
 * `hd95` defines it (the distance BraTS and nnU-Net report).
 *
 * Masks are flat arrays in NIfTI order, x fastest: voxel (x, y, z) is at `x + nx * (y + ny * z)`;
 * a nonzero value is inside. `dims` is `[nx, ny, nz]` and `spacing` the voxel size along each, in
 * millimetres (a NIfTI header's pixdim).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { hd95 } from "./distance.ts";
 * // Two single voxels 3 voxels apart along z, 2 mm each.
 * const a = new Uint8Array(4 * 4 * 4);
 * const b = new Uint8Array(4 * 4 * 4);
 * a[1 + 4 * (1 + 4 * 0)] = 1;
 * b[1 + 4 * (1 + 4 * 3)] = 1;
 * assertEquals(hd95(a, b, [4, 4, 4], [1, 1, 2]), 6);
 * ```
 * @module
 */
import { checkGrid, cropMask, maskBox, unionBox } from "../volume/mod.ts";

/** Any flat array of voxel values; nonzero is inside the mask. */
export type MaskArray = ArrayLike<number>;

/**
 * The surface of a mask as MedPy defines it: the mask minus its erosion by the 6-connected
 * structuring element, with everything outside the volume counted as background (SciPy's
 * `binary_erosion` default), so mask voxels on the volume's border are surface.
 * @returns 1 for surface voxels, 0 elsewhere
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { surface } from "./distance.ts";
 * // A full 3×3×3 cube: all but the centre is surface.
 * const s = surface(new Uint8Array(27).fill(1), [3, 3, 3]);
 * assertEquals(s.reduce((n, v) => n + v, 0), 26);
 * ```
 */
export function surface(mask: MaskArray, dims: readonly number[]): Uint8Array {
  const [nx, ny, nz] = checkGrid(mask, dims, "surface");
  const sxy = nx * ny;
  const out = new Uint8Array(mask.length);
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        if (mask[i] === 0) continue;
        const interior = x > 0 && x < nx - 1 && y > 0 && y < ny - 1 && z > 0 && z < nz - 1 &&
          mask[i - 1] !== 0 && mask[i + 1] !== 0 && mask[i - nx] !== 0 && mask[i + nx] !== 0 &&
          mask[i - sxy] !== 0 && mask[i + sxy] !== 0;
        if (!interior) out[i] = 1;
      }
    }
  }
  return out;
}

/**
 * The exact squared Euclidean distance, in mm², from every voxel to the nearest nonzero voxel of
 * `features` (0 on the features, Infinity everywhere when there are none): Felzenszwalb and
 * Huttenlocher's separable transform, one pass of lower parabola envelopes per axis, each axis
 * weighted by its spacing. Time and memory are linear in the number of voxels.
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { squaredDistanceTransform } from "./distance.ts";
 * const f = new Uint8Array(5);
 * f[0] = 1;
 * assertEquals([...squaredDistanceTransform(f, [5, 1, 1], [2, 1, 1])], [0, 4, 16, 36, 64]);
 * ```
 */
export function squaredDistanceTransform(
  features: MaskArray,
  dims: readonly number[],
  spacing: readonly number[] = [1, 1, 1],
): Float64Array {
  const [nx, ny, nz] = checkGrid(features, dims, "squaredDistanceTransform");
  checkSpacing(spacing, "squaredDistanceTransform");
  const d = new Float64Array(features.length);
  for (let i = 0; i < d.length; i++) d[i] = features[i] !== 0 ? 0 : Infinity;
  const longest = Math.max(nx, ny, nz);
  const scratch: Scratch = {
    f: new Float64Array(longest),
    v: new Int32Array(longest),
    z: new Float64Array(longest + 1),
  };
  const sxy = nx * ny;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) transformLine(d, nx * (y + ny * z), 1, nx, spacing[0], scratch);
  }
  if (ny > 1) {
    for (let z = 0; z < nz; z++) {
      for (let x = 0; x < nx; x++) transformLine(d, x + sxy * z, nx, ny, spacing[1], scratch);
    }
  }
  if (nz > 1) {
    for (let i = 0; i < sxy; i++) transformLine(d, i, sxy, nz, spacing[2], scratch);
  }
  return d;
}

interface Scratch {
  /** The line's input values. */
  f: Float64Array;
  /** Positions of the parabolas in the lower envelope. */
  v: Int32Array;
  /** Where each envelope parabola starts to be the lowest (index units). */
  z: Float64Array;
}

/**
 * One 1D pass in place: `d[q] = min_p (w·(q − p))² + d[p]` along a line of `n` values `stride`
 * apart from `start`, where `w` is the voxel size along the line.
 */
function transformLine(
  d: Float64Array,
  start: number,
  stride: number,
  n: number,
  w: number,
  { f, v, z }: Scratch,
): void {
  const w2 = w * w;
  let k = -1;
  for (let q = 0, i = start; q < n; q++, i += stride) {
    const fq = d[i];
    f[q] = fq;
    if (fq === Infinity) continue;
    if (k < 0) {
      k = 0;
      v[0] = q;
      z[0] = -Infinity;
      continue;
    }
    const hq = fq + w2 * q * q;
    let s: number;
    for (;;) {
      const p = v[k];
      // Where the parabolas rooted at p and q are equally high.
      s = (hq - (f[p] + w2 * p * p)) / (2 * w2 * (q - p));
      if (s > z[k]) break;
      k--;
    }
    k++;
    v[k] = q;
    z[k] = s;
  }
  if (k < 0) return; // nothing finite on this line
  z[k + 1] = Infinity;
  let j = 0;
  for (let q = 0, i = start; q < n; q++, i += stride) {
    while (z[j + 1] < q) j++;
    const dq = w * (q - v[j]);
    d[i] = dq * dq + f[v[j]];
  }
}

/**
 * The distance in mm from each surface voxel of `a` to the nearest surface voxel of `b`, in voxel
 * order: MedPy's `__surface_distances(a, b, spacing, connectivity=1)`. The transform runs only over
 * the box holding both masks, which holds the nearest surface voxel of `b` to any voxel of `a`.
 * @throws {RangeError} when either mask is empty (no surface to measure from or to)
 */
export function surfaceDistances(
  a: MaskArray,
  b: MaskArray,
  dims: readonly number[],
  spacing: readonly number[] = [1, 1, 1],
): Float64Array {
  const pair = croppedPair(a, b, dims, spacing, "surfaceDistances");
  return directed(surface(pair.a, pair.dims), surface(pair.b, pair.dims), pair.dims, spacing);
}

/**
 * The 95th-percentile Hausdorff distance in mm between two non-empty masks, as MedPy's `hd95`:
 * the surface distances from `a` to `b` and from `b` to `a` pooled into one set, of which the 95th
 * percentile is taken with linear interpolation (numpy.percentile's default). Symmetric in `a` and
 * `b`. Empty masks are the caller's rule to apply (BraTS's is in pipeline/evaluation/evaluation.ts).
 * @throws {RangeError} when either mask is empty
 */
export function hd95(
  a: MaskArray,
  b: MaskArray,
  dims: readonly number[],
  spacing: readonly number[] = [1, 1, 1],
): number {
  return percentile(pooledSurfaceDistances(a, b, dims, spacing), 95);
}

/**
 * Both directed surface distance sets of `a` and `b`, `a` to `b` first then `b` to `a`, in one
 * array: what {@linkcode hd95} takes the percentile of (and the Hausdorff distance the maximum of).
 * @throws {RangeError} when either mask is empty
 */
export function pooledSurfaceDistances(
  a: MaskArray,
  b: MaskArray,
  dims: readonly number[],
  spacing: readonly number[] = [1, 1, 1],
): Float64Array {
  const pair = croppedPair(a, b, dims, spacing, "hd95");
  const sa = surface(pair.a, pair.dims);
  const sb = surface(pair.b, pair.dims);
  const ab = directed(sa, sb, pair.dims, spacing);
  const ba = directed(sb, sa, pair.dims, spacing);
  const all = new Float64Array(ab.length + ba.length);
  all.set(ab);
  all.set(ba, ab.length);
  return all;
}

/**
 * The `q`-th percentile (0..100) of `values` with linear interpolation between the two nearest
 * ranks, as numpy.percentile's default: rank `q/100 · (n − 1)` of the sorted values.
 * @throws {RangeError} for no values or `q` outside 0..100
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { percentile } from "./distance.ts";
 * assertEquals(percentile([4, 1, 3, 2], 50), 2.5);
 * assertEquals(percentile([0, 10], 95), 9.5);
 * ```
 */
export function percentile(values: ArrayLike<number>, q: number): number {
  if (values.length === 0) throw new RangeError("Cannot take a percentile of no values");
  if (!(q >= 0 && q <= 100)) throw new RangeError(`A percentile must be in 0..100, got ${q}`);
  const sorted = Float64Array.from(values).sort();
  const rank = (q / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, sorted.length - 1);
  const t = rank - lo;
  // numpy's lerp: exact at both ends of the interval.
  return t === 0
    ? sorted[lo]
    : t >= 0.5
    ? sorted[hi] - (sorted[hi] - sorted[lo]) * (1 - t)
    : sorted[lo] + (sorted[hi] - sorted[lo]) * t;
}

/** Distances from each surface voxel in `from` to the nearest voxel of `to` (surfaces, one grid). */
function directed(
  from: Uint8Array,
  to: Uint8Array,
  dims: readonly number[],
  spacing: readonly number[],
): Float64Array {
  const dt = squaredDistanceTransform(to, dims, spacing);
  let n = 0;
  for (let i = 0; i < from.length; i++) n += from[i];
  const out = new Float64Array(n);
  for (let i = 0, o = 0; i < from.length; i++) if (from[i] !== 0) out[o++] = Math.sqrt(dt[i]);
  return out;
}

/** Both masks cropped to the box holding both (their surfaces and distances are unchanged). */
function croppedPair(
  a: MaskArray,
  b: MaskArray,
  dims: readonly number[],
  spacing: readonly number[],
  what: string,
): { a: MaskArray; b: MaskArray; dims: [number, number, number] } {
  checkGrid(a, dims, what);
  checkGrid(b, dims, what);
  checkSpacing(spacing, what);
  const boxA = maskBox(a, dims);
  const boxB = maskBox(b, dims);
  if (!boxA || !boxB) {
    throw new RangeError(
      `Cannot compute ${what}: the ${!boxA ? "first" : "second"} mask is empty (no surface)`,
    );
  }
  const box = unionBox(boxA, boxB);
  if (box.size.every((d, k) => d === dims[k])) {
    return { a, b, dims: [dims[0], dims[1], dims[2]] };
  }
  return { a: cropMask(a, dims, box), b: cropMask(b, dims, box), dims: box.size };
}

function checkSpacing(spacing: readonly number[], what: string): void {
  if (spacing.length !== 3 || !spacing.every((s) => Number.isFinite(s) && s > 0)) {
    throw new RangeError(
      `Cannot compute ${what}: spacing must be 3 positive voxel sizes in mm, got ${
        JSON.stringify(spacing)
      }`,
    );
  }
}
