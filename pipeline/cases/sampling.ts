/**
 * Training batches: random crops from preprocessed cases, a share of them forced to contain tumor
 * (nnU-Net's foreground oversampling), with data augmentation. Every random choice comes from the
 * generator passed in, so a seed fixes the batch.
 * @module
 */
import { regionChannels } from "../labels.ts";
import { imageChannels, type PreprocessedCase, targetChannels } from "./preprocess.ts";
import { cropBox, type Dims, mirrorVolume } from "../volume/mod.ts";

/** Augmentation probabilities and ranges; `false` turns augmentation off. */
export interface AugmentOptions {
  /** Probability of a rotation (each axis ±`maxRotation` degrees) and scaling. */
  spatial: number;
  maxRotation: number;
  /** Scale factor range [lo, hi] of the spatial transform. */
  scale: [number, number];
  /** Probability of mirroring, per axis. */
  mirror: number;
  /** Per channel: probability and range of a multiplicative intensity factor. */
  intensityScale: number;
  intensityScaleRange: [number, number];
  /** Per channel: probability and range of an additive intensity shift (z-score units). */
  intensityShift: number;
  intensityShiftRange: [number, number];
  /** Per channel: probability and range of a gamma transform over the patch's intensity range. */
  gamma: number;
  gammaRange: [number, number];
}

/** Defaults close to nnU-Net's for BraTS. */
export const DEFAULT_AUGMENT: Readonly<AugmentOptions> = Object.freeze({
  spatial: 0.2,
  maxRotation: 15,
  scale: [0.85, 1.15] as [number, number],
  mirror: 0.5,
  intensityScale: 0.15,
  intensityScaleRange: [0.75, 1.25] as [number, number],
  intensityShift: 0.15,
  intensityShiftRange: [-0.1, 0.1] as [number, number],
  gamma: 0.3,
  gammaRange: [0.7, 1.5] as [number, number],
});

/** Options of {@linkcode sampleBatch}. */
export interface SamplingOptions {
  /** Crop edge in voxels (cubes). */
  crop: number;
  /** Share of crops forced to contain tumor (whole tumor), when the case has any. Default 1/3. */
  foregroundFraction?: number;
  /** Augmentation; `false` for none. Default {@linkcode DEFAULT_AUGMENT}. */
  augment?: false | Partial<AugmentOptions>;
}

/**
 * Cases by index, for when they are not all in memory: `get` returns case `index`, reading it
 * when it must (e.g. `StreamedCases` in case_cache.ts, from local disk).
 */
export interface CaseSource {
  readonly length: number;
  get(index: number): PreprocessedCase;
}

/** The cases to sample from: in memory, or a {@linkcode CaseSource}. */
export type Cases = readonly PreprocessedCase[] | CaseSource;

/** Case `index` of `cases`. */
export function caseAt(cases: Cases, index: number): PreprocessedCase {
  return "get" in cases ? cases.get(index) : cases[index];
}

/** A batch: channel-last arrays [batch, crop, crop, crop, channels]. */
export interface Batch {
  image: Float32Array;
  /** Each region in {0, 1}: WT, TC, ET for BraTS. */
  target: Float32Array;
  batch: number;
  crop: number;
  /** Which crops were forced to contain tumor. */
  forced: boolean[];
  ids: string[];
}

const tumorIndexCache = new WeakMap<PreprocessedCase, Int32Array>();

/** Indices (in the case's box) of tumor voxels (in any region), computed once per case. */
export function tumorVoxels(c: PreprocessedCase): Int32Array {
  let idx = tumorIndexCache.get(c);
  if (!idx) {
    const r = c.regions;
    let count = 0;
    if (r) { for (let i = 0; i < r.length; i++) if (r[i] !== 0) count++; }
    idx = new Int32Array(count);
    if (r) { for (let i = 0, j = 0; i < r.length; i++) if (r[i] !== 0) idx[j++] = i; }
    tumorIndexCache.set(c, idx);
  }
  return idx;
}

const randInt = (rand: () => number, lo: number, hi: number) =>
  lo + Math.min(Math.floor(rand() * (hi - lo + 1)), hi - lo);
const uniform = (rand: () => number, [lo, hi]: [number, number]) => lo + rand() * (hi - lo);

/**
 * Where a crop of edge `s` starts on each axis of a case's box: anywhere the crop stays inside the
 * box (or, when the box is smaller than the crop, anywhere the box stays inside the crop), and,
 * when `forced` and the case has tumor, so that a random tumor voxel lies inside it.
 */
export function cropStart(
  c: PreprocessedCase,
  s: number,
  forced: boolean,
  rand: () => number,
): Dims {
  const size = c.box.size;
  const lo = size.map((d) => Math.min(0, d - s));
  const hi = size.map((d) => Math.max(0, d - s));
  const tumor = forced ? tumorVoxels(c) : new Int32Array(0);
  if (tumor.length > 0) {
    const i = tumor[randInt(rand, 0, tumor.length - 1)];
    const p = [i % size[0], Math.floor(i / size[0]) % size[1], Math.floor(i / (size[0] * size[1]))];
    return p.map((v, a) => Math.min(Math.max(v - randInt(rand, 0, s - 1), lo[a]), hi[a])) as Dims;
  }
  return lo.map((l, a) => randInt(rand, l, hi[a])) as Dims;
}

/** Rotation (degrees about x, then y, then z) times scale, as a row-major 3×3 over (x, y, z). */
function rotationScale(ax: number, ay: number, az: number, scale: number): number[] {
  const [cx, sx, cy, sy, cz, sz] = [ax, ay, az].flatMap((d) => {
    const r = (d * Math.PI) / 180;
    return [Math.cos(r), Math.sin(r)];
  });
  // Rz · Ry · Rx
  const m = [
    cz * cy,
    cz * sy * sx - sz * cx,
    cz * sy * cx + sz * sx,
    sz * cy,
    sz * sy * sx + cz * cx,
    sz * sy * cx - cz * sx,
    -sy,
    cy * sx,
    cy * cx,
  ];
  return m.map((v) => v * scale);
}

/**
 * A crop whose voxel `o` samples the case at `centre + M·(o − (s−1)/2)`: trilinear for the image,
 * nearest voxel for the region bits (keeping WT ⊇ TC ⊇ ET), zero outside the box.
 */
function transformedCrop(
  c: PreprocessedCase,
  start: Dims,
  s: number,
  m: number[],
): { image: Float32Array; regions?: Uint8Array } {
  const [nx, ny, nz] = c.box.size;
  const half = (s - 1) / 2;
  const centre = start.map((v) => v + half);
  const ch = imageChannels(c);
  const image = new Float32Array(s ** 3 * ch);
  const regions = c.regions ? new Uint8Array(s ** 3) : undefined;
  const src = c.image;
  let o = 0;
  for (let z = 0; z < s; z++) {
    for (let y = 0; y < s; y++) {
      for (let x = 0; x < s; x++, o++) {
        const dx = x - half, dy = y - half, dz = z - half;
        const px = centre[0] + m[0] * dx + m[1] * dy + m[2] * dz;
        const py = centre[1] + m[3] * dx + m[4] * dy + m[5] * dz;
        const pz = centre[2] + m[6] * dx + m[7] * dy + m[8] * dz;
        if (regions && c.regions) {
          const rx = Math.round(px), ry = Math.round(py), rz = Math.round(pz);
          if (rx >= 0 && rx < nx && ry >= 0 && ry < ny && rz >= 0 && rz < nz) {
            regions[o] = c.regions[(rz * ny + ry) * nx + rx];
          }
        }
        const x0 = Math.floor(px), y0 = Math.floor(py), z0 = Math.floor(pz);
        if (x0 < -1 || x0 >= nx || y0 < -1 || y0 >= ny || z0 < -1 || z0 >= nz) continue;
        const fx = px - x0, fy = py - y0, fz = pz - z0;
        for (let k = 0; k < 8; k++) {
          const xi = x0 + (k & 1), yi = y0 + ((k >> 1) & 1), zi = z0 + (k >> 2);
          if (xi < 0 || xi >= nx || yi < 0 || yi >= ny || zi < 0 || zi >= nz) continue;
          const w = (k & 1 ? fx : 1 - fx) * ((k >> 1) & 1 ? fy : 1 - fy) * (k >> 2 ? fz : 1 - fz);
          if (w === 0) continue;
          const si = ((zi * ny + yi) * nx + xi) * ch;
          for (let k = 0; k < ch; k++) image[o * ch + k] += w * src[si + k];
        }
      }
    }
  }
  return { image, regions };
}

/** Per-channel intensity augmentation of a [voxels, channels] patch, in place. */
function augmentIntensity(
  image: Float32Array,
  channels: number,
  a: AugmentOptions,
  rand: () => number,
): void {
  const n = image.length / channels;
  for (let ch = 0; ch < channels; ch++) {
    const scale = rand() < a.intensityScale ? uniform(rand, a.intensityScaleRange) : 1;
    const shift = rand() < a.intensityShift ? uniform(rand, a.intensityShiftRange) : 0;
    const gamma = rand() < a.gamma ? uniform(rand, a.gammaRange) : 1;
    if (scale !== 1 || shift !== 0) {
      for (let i = 0; i < n; i++) {
        image[i * channels + ch] = image[i * channels + ch] * scale + shift;
      }
    }
    if (gamma !== 1) {
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < n; i++) {
        const v = image[i * channels + ch];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const range = hi - lo;
      if (range > 1e-7) {
        for (let i = 0; i < n; i++) {
          const j = i * channels + ch;
          image[j] = ((image[j] - lo) / range) ** gamma * range + lo;
        }
      }
    }
  }
}

/**
 * One crop: where, whether forced, the spatial transform, mirroring and intensity changes, all
 * drawn from `rand` in a fixed order.
 */
export function sampleCrop(
  c: PreprocessedCase,
  options: SamplingOptions,
  rand: () => number,
): { image: Float32Array; target: Float32Array; forced: boolean } {
  const s = options.crop;
  const fg = options.foregroundFraction ?? 1 / 3;
  const aug = options.augment === false ? undefined : { ...DEFAULT_AUGMENT, ...options.augment };
  const forced = rand() < fg;
  const start = cropStart(c, s, forced, rand);
  const ch = imageChannels(c);
  let image: Float32Array;
  let regions: Uint8Array | undefined;
  if (aug && rand() < aug.spatial) {
    const r = () => uniform(rand, [-aug.maxRotation, aug.maxRotation]);
    const m = rotationScale(r(), r(), r(), uniform(rand, aug.scale));
    ({ image, regions } = transformedCrop(c, start, s, m));
  } else {
    image = cropBox(c.image, c.box.size, ch, start, [s, s, s]);
    regions = c.regions ? cropBox(c.regions, c.box.size, 1, start, [s, s, s]) : undefined;
  }
  const k = targetChannels(c);
  let target = regions ? regionChannels(regions, k) : new Float32Array(s ** 3 * k);
  if (aug) {
    let axes = 0;
    for (let a = 0; a < 3; a++) if (rand() < aug.mirror) axes |= 1 << a;
    image = mirrorVolume(image, [s, s, s], ch, axes);
    target = mirrorVolume(target, [s, s, s], k, axes);
    augmentIntensity(image, ch, aug, rand);
  }
  return { image, target, forced };
}

/**
 * A batch of `batch` crops from cases drawn uniformly at random. Only the number of cases decides
 * which is drawn, so cases read on demand give the same batch as cases in memory.
 */
export function sampleBatch(
  cases: Cases,
  batch: number,
  options: SamplingOptions,
  rand: () => number,
): Batch {
  if (cases.length === 0) throw new RangeError("No cases to sample from");
  const s = options.crop;
  let image = new Float32Array(0);
  let target = new Float32Array(0);
  const forced: boolean[] = [];
  const ids: string[] = [];
  for (let b = 0; b < batch; b++) {
    const c = caseAt(cases, randInt(rand, 0, cases.length - 1));
    const crop = sampleCrop(c, options, rand);
    // Every case of a dataset has the same channels and regions: the first crop sizes the batch.
    if (b === 0) {
      image = new Float32Array(batch * crop.image.length);
      target = new Float32Array(batch * crop.target.length);
    }
    image.set(crop.image, b * crop.image.length);
    target.set(crop.target, b * crop.target.length);
    forced.push(crop.forced);
    ids.push(c.id);
  }
  return { image, target, batch, crop: s, forced, ids };
}
