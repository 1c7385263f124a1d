/**
 * BraTS-like synthetic cases built on a real brain: four MRI contrasts with a smooth bias field and
 * Rician noise, and a segmentation with necrotic core, enhancing rim and edema of random shape and
 * place, written in a BraTS release's file naming and label convention. Deterministic for a seed.
 *
 * The anatomy comes from a template T1: Debian's `mricron-data` ch2bet (a skull-stripped 1 mm
 * brain) when it is installed, else a procedural head. Each case resamples the template onto its
 * grid with a small random scaling, rotation and shift, splits it into CSF, grey and white matter
 * by its intensities, and paints each modality from per-tissue means.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { writeSynthDataset } from "./synth.ts";
 * const out = await Deno.makeTempDir(); // or s3://bucket/prefix
 * const summary = await writeSynthDataset(out, { cases: 1, seed: 1, dims: [32, 32, 32] });
 * assertEquals(summary.cases[0].id, "BraTS2021_00000");
 * assertEquals(summary.cases[0].files.seg, `${out}/BraTS2021_00000/BraTS2021_00000_seg.nii.gz`);
 * await Deno.remove(out, { recursive: true });
 * ```
 * @module
 */
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import { ENHANCING_LABEL, MODALITIES, type Modality, type Naming, SUFFIXES } from "../cases/mod.ts";
import { createNiftiHeader, encodeNifti, scaledData } from "../nifti/mod.ts";
import { readNifti } from "../nifti/mod.ts";
import { seededRandom } from "../cases/mod.ts";
import { joinUri, mapConcurrent, parseUri, putObject } from "../storage/mod.ts";

/** Where Debian's `mricron-data` installs the skull-stripped Colin 27 brain. */
export const CH2BET_PATH = "/usr/share/mricron/templates/ch2bet.nii.gz";

/** The naming schemes `synth` writes: 2018–2020 ids, 2021 ids, 2023+ names. */
export const SYNTH_NAMINGS = ["brats2020", "brats2021", "brats2023"] as const;
/** A BraTS release's file naming and label convention. */
export type SynthNaming = typeof SYNTH_NAMINGS[number];

/** BraTS's own grid. */
export const DEFAULT_SYNTH_DIMS: Readonly<[number, number, number]> = [240, 240, 155];
/** Smallest and largest voxels per axis a synthetic case may have. */
export const SYNTH_MIN_DIM = 32;
export const SYNTH_MAX_DIM = 1024;

type Vec3 = [number, number, number];
type Mat3 = [Vec3, Vec3, Vec3];

// ---------------------------------------------------------------------------------------------
// Templates

/** A brain template: a T1-like volume, background 0, and what the generator derived from it. */
export interface SynthTemplate {
  /** What it is, for summaries: `"ch2bet (/usr/...)"`, `"procedural"`. */
  source: string;
  /** Voxels, x fastest. */
  data: Float32Array;
  dims: Vec3;
  /** Voxel to world (RAS mm), 4×4. */
  affine: number[][];
  /** Mean intensity of CSF, grey matter and white matter (3-means over brain voxels). */
  classMeans: Vec3;
  /** Intensity above which a voxel is brain. */
  threshold: number;
  /** Centre of the brain's bounding box, in template voxels. */
  centre: Vec3;
  /** Size of the brain's bounding box along world x, y, z in mm. */
  extent: Vec3;
}

const templates = new Map<string, Promise<SynthTemplate>>();
const gzipAsync = promisify(gzip);

/**
 * Loads the template the generator builds on, once per process.
 * @param path a NIfTI file (local path or URI) holding a skull-stripped T1 brain; `null` for the
 *   procedural head; by default ch2bet when `mricron-data` is installed, else the procedural head.
 * @throws when an explicit `path` cannot be read, is not 3D, or has no brain in it
 */
export function loadSynthTemplate(path?: string | null): Promise<SynthTemplate> {
  const key = path === undefined ? (fileExists(CH2BET_PATH) ? CH2BET_PATH : null) : path;
  const cacheKey = key ?? "\0procedural";
  let found = templates.get(cacheKey);
  if (!found) {
    found = key === null ? Promise.resolve(proceduralTemplate()) : readTemplate(key);
    // A failed load is not cached: the file may appear later.
    found.catch(() => templates.delete(cacheKey));
    templates.set(cacheKey, found);
  }
  return found;
}

function fileExists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

async function readTemplate(uri: string): Promise<SynthTemplate> {
  const image = await readNifti(uri);
  const { dims } = image.header;
  if (dims.length < 3 || dims.slice(3).some((d) => d !== 1)) {
    throw new RangeError(
      `Cannot use "${uri}" as a synthesis template: it must be a 3D volume, found dims [${dims}]`,
    );
  }
  const name = uri.split("/").pop()!.replace(/\.nii(\.gz)?$/, "");
  return analyzeTemplate(
    `${name} (${uri})`,
    scaledData(image),
    dims.slice(0, 3) as Vec3,
    image.header.affine,
  );
}

/** Derives tissue means, the brain threshold and the brain's box from a template's voxels. */
function analyzeTemplate(
  source: string,
  data: Float32Array,
  dims: Vec3,
  affine: number[][],
): SynthTemplate {
  const classMeans = threeMeans(data, source);
  const threshold = 0.5 * classMeans[0];
  const [nx, ny] = dims;
  const lo = [Infinity, Infinity, Infinity];
  const hi = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < data.length; i++) {
    if (!(data[i] > threshold)) continue;
    const p = [i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))];
    for (let k = 0; k < 3; k++) {
      if (p[k] < lo[k]) lo[k] = p[k];
      if (p[k] > hi[k]) hi[k] = p[k];
    }
  }
  const centre = [0, 1, 2].map((k) => (lo[k] + hi[k]) / 2) as Vec3;
  const size = [0, 1, 2].map((k) => hi[k] - lo[k] + 1);
  const extent = [0, 1, 2].map((r) =>
    [0, 1, 2].reduce((s, c) => s + Math.abs(affine[r][c]) * size[c], 0)
  ) as Vec3;
  return { source, data, dims, affine, classMeans, threshold, centre, extent };
}

/** CSF, GM and WM means: 3-means on a histogram of the positive voxels. */
function threeMeans(data: Float32Array, source: string): Vec3 {
  let max = 0;
  for (let i = 0; i < data.length; i++) if (data[i] > max) max = data[i];
  const bins = 512;
  const hist = new Float64Array(bins);
  let count = 0;
  // Voxels below 2% of the maximum are background or its interpolation fringe.
  const floor = 0.02 * max;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v > floor) {
      hist[Math.min(bins - 1, Math.floor((v / max) * bins))]++;
      count++;
    }
  }
  if (count < 1000) {
    throw new RangeError(
      `Cannot use ${source} as a synthesis template: only ${count} voxels are brain (positive)`,
    );
  }
  const value = (b: number) => ((b + 0.5) / bins) * max;
  // Start from the 15th, 50th and 85th percentiles.
  const means: number[] = [];
  for (let b = 0, seen = 0, q = 0; b < bins && q < 3; b++) {
    seen += hist[b];
    while (q < 3 && seen >= [0.15, 0.5, 0.85][q] * count) {
      means.push(value(b));
      q++;
    }
  }
  for (let iter = 0; iter < 100; iter++) {
    const sum = [0, 0, 0];
    const n = [0, 0, 0];
    for (let b = 0; b < bins; b++) {
      const v = value(b);
      let k = 0;
      for (let j = 1; j < 3; j++) if (Math.abs(v - means[j]) < Math.abs(v - means[k])) k = j;
      sum[k] += hist[b] * v;
      n[k] += hist[b];
    }
    const next = means.map((m, k) => (n[k] > 0 ? sum[k] / n[k] : m));
    const moved = Math.max(...next.map((m, k) => Math.abs(m - means[k])));
    means.splice(0, 3, ...next);
    if (moved < 1e-6 * max) break;
  }
  means.sort((a, b) => a - b);
  return means as Vec3;
}

/**
 * A procedural brain on a 1.5 mm RAS grid with ch2bet-like intensities (CSF 33, GM 82, WM 112):
 * two lumpy ellipsoids (cerebrum, cerebellum), a folded cortex with sulci, an interhemispheric
 * fissure, lateral ventricles and deep grey nuclei. Its randomness has a fixed seed: it is anatomy,
 * the same in every case; cases differ by how they are placed and painted.
 */
export function proceduralTemplate(): SynthTemplate {
  const rand = seededRandom(0x0b7a1e5);
  const lumps = valueNoise(rand);
  const folds = valueNoise(rand);
  const sulci = valueNoise(rand);
  const h = 1.5;
  const dims: Vec3 = [108, 132, 108];
  const origin = dims.map((d) => -((d - 1) / 2) * h);
  const affine = [[h, 0, 0, origin[0]], [0, h, 0, origin[1]], [0, 0, h, origin[2]], [0, 0, 0, 1]];
  const [CSF, GM, WM] = [33, 82, 112];
  const raw = new Float32Array(dims[0] * dims[1] * dims[2]);
  for (let k = 0, i = 0; k < dims[2]; k++) {
    const z = origin[2] + k * h;
    for (let j = 0; j < dims[1]; j++) {
      const y = origin[1] + j * h;
      for (let ii = 0; ii < dims[0]; ii++, i++) {
        const x = origin[0] + ii * h;
        const lump = 1 + 0.05 * lumps(x / 18, y / 18, z / 18);
        // Depth below each lobe's surface in mm, roughly: (1 - ρ) times its smallest semi-axis.
        const cerebrum = (1 - norm3(x / 66, (y - 4) / 82, z / (z > 0 ? 62 : 46)) * lump) * 56;
        const cerebellum = (1 - norm3(x / 50, (y + 50) / 28, (z + 34) / 20) * lump) * 22;
        const depth = Math.max(cerebrum, cerebellum);
        if (depth <= 0) continue;
        let v = WM;
        // Cortex 3–7 mm thick; sulci are CSF sheets reaching 14–28 mm in, lined with grey
        // matter, so white matter runs into each gyrus between two of them.
        const sulcus = Math.abs(sulci(x / 9, y / 9, z / 9));
        const reach = 14 + 14 * (0.5 + 0.5 * folds(x / 15, y / 15, z / 15));
        const inward = Math.max(0, 1 - depth / reach);
        if (depth < 3 + 4 * (0.5 + 0.5 * folds(x / 7, y / 7, z / 7))) v = GM;
        if (sulcus < 0.2 * Math.sqrt(inward)) v = GM;
        if (sulcus < 0.05 * inward) v = CSF;
        if (depth < 1.2) v = CSF;
        if (cerebrum > cerebellum && Math.abs(x) < 1.6 && z > -12 && cerebrum < 45) v = CSF;
        // Deep grey nuclei, then the lateral ventricles beside the midline.
        if (norm3((Math.abs(x) - 19) / 9, (y + 2) / 14, (z - 2) / 10) < 1) v = GM;
        if (norm3((Math.abs(x) - 8) / 6, (y - 2) / 24, (z - 12) / 8) < 1) v = CSF;
        raw[i] = v;
      }
    }
  }
  // A 3-voxel box along each axis: partial volume at the tissue borders, as in a real scan.
  const data = boxBlur(raw, dims, 3);
  // Keep the background exactly 0, as skull-stripped BraTS volumes have it.
  for (let i = 0; i < data.length; i++) if (data[i] < 8) data[i] = 0;
  return analyzeTemplate("procedural", data, dims, affine);
}

/** A centred moving average `width` voxels wide (odd) along each axis, zero outside the volume. */
function boxBlur(src: Float32Array, dims: Vec3, width: number): Float32Array {
  const half = (width - 1) / 2;
  let a = src;
  const strides = [1, dims[0], dims[0] * dims[1]];
  for (let axis = 0; axis < 3; axis++) {
    const out = new Float32Array(a.length);
    const s = strides[axis];
    const n = dims[axis];
    // Lines along `axis` start at hi + lo: each step of s * n is one block of s lines.
    for (let hi = 0; hi < a.length; hi += s * n) {
      for (let lo = 0; lo < s; lo++) {
        const start = hi + lo;
        let sum = 0;
        for (let k = 0; k < Math.min(half, n); k++) sum += a[start + k * s];
        for (let k = 0; k < n; k++) {
          if (k + half < n) sum += a[start + (k + half) * s];
          if (k - half - 1 >= 0) sum -= a[start + (k - half - 1) * s];
          out[start + k * s] = sum / width;
        }
      }
    }
    a = out;
  }
  return a;
}

const smoothed = new WeakMap<SynthTemplate, Map<number, Float32Array>>();

/**
 * The template's voxels averaged over about one output voxel, so that a brain scaled down onto a
 * small grid is not aliased; the template itself when output voxels are not much coarser.
 */
function antiAliased(template: SynthTemplate, scale: number): Float32Array {
  const h = Math.cbrt(
    Math.abs(matDet(template.affine.slice(0, 3).map((r) => r.slice(0, 3)) as Mat3)),
  );
  const width = 2 * Math.round((1 / (scale * h) - 1) / 2) + 1;
  if (width < 3) return template.data;
  let cache = smoothed.get(template);
  if (!cache) smoothed.set(template, cache = new Map());
  let data = cache.get(width);
  if (!data) cache.set(width, data = boxBlur(template.data, template.dims, width));
  return data;
}

// ---------------------------------------------------------------------------------------------
// Randomness

/** Smooth noise in about [-1, 1]: a periodic 16³ lattice of seeded values, interpolated. */
type Noise = (x: number, y: number, z: number) => number;

const PERIOD = 16;

function valueNoise(rand: () => number): Noise {
  const lattice = new Float32Array(PERIOD ** 3);
  for (let i = 0; i < lattice.length; i++) lattice[i] = 2 * rand() - 1;
  const at = (i: number, j: number, k: number) =>
    lattice[(i & 15) + 16 * ((j & 15) + 16 * (k & 15))];
  return (x, y, z) => {
    const fx = Math.floor(x);
    const fy = Math.floor(y);
    const fz = Math.floor(z);
    let tx = x - fx;
    let ty = y - fy;
    let tz = z - fz;
    tx = tx * tx * (3 - 2 * tx);
    ty = ty * ty * (3 - 2 * ty);
    tz = tz * tz * (3 - 2 * tz);
    const c00 = at(fx, fy, fz) + tx * (at(fx + 1, fy, fz) - at(fx, fy, fz));
    const c10 = at(fx, fy + 1, fz) + tx * (at(fx + 1, fy + 1, fz) - at(fx, fy + 1, fz));
    const c01 = at(fx, fy, fz + 1) + tx * (at(fx + 1, fy, fz + 1) - at(fx, fy, fz + 1));
    const c11 = at(fx, fy + 1, fz + 1) +
      tx * (at(fx + 1, fy + 1, fz + 1) - at(fx, fy + 1, fz + 1));
    const c0 = c00 + ty * (c10 - c00);
    const c1 = c01 + ty * (c11 - c01);
    return c0 + tz * (c1 - c0);
  };
}

const uniform = (rand: () => number, lo: number, hi: number) => lo + (hi - lo) * rand();

// ---------------------------------------------------------------------------------------------
// Small 3×3 algebra

function matMul(a: Mat3, b: Mat3): Mat3 {
  return [0, 1, 2].map((r) =>
    [0, 1, 2].map((c) => a[r][0] * b[0][c] + a[r][1] * b[1][c] + a[r][2] * b[2][c])
  ) as Mat3;
}

function matDet(m: Mat3): number {
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
}

function matInv(m: Mat3): Mat3 {
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  const A = e * i - f * h;
  const B = -(d * i - f * g);
  const C = d * h - e * g;
  const det = a * A + b * B + c * C;
  return [
    [A / det, -(b * i - c * h) / det, (b * f - c * e) / det],
    [B / det, (a * i - c * g) / det, -(a * f - c * d) / det],
    [C / det, -(a * h - b * g) / det, (a * e - b * d) / det],
  ];
}

function rotation(ax: number, ay: number, az: number): Mat3 {
  const [cx, sx, cy, sy, cz, sz] = [ax, ay, az].flatMap((a) => [Math.cos(a), Math.sin(a)]);
  const rx: Mat3 = [[1, 0, 0], [0, cx, -sx], [0, sx, cx]];
  const ry: Mat3 = [[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]];
  const rz: Mat3 = [[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]];
  return matMul(rz, matMul(ry, rx));
}

const diag = (v: Vec3): Mat3 => [[v[0], 0, 0], [0, v[1], 0], [0, 0, v[2]]];

// Math.hypot is several times slower than this in V8, and these run per voxel.
const norm3 = (x: number, y: number, z: number) => Math.sqrt(x * x + y * y + z * z);

// ---------------------------------------------------------------------------------------------
// Contrasts

/**
 * Relative intensity of each tissue per modality: CSF, GM, WM, then edema, enhancing tumor and
 * necrosis. T1: WM > GM > CSF; T2: CSF brightest; FLAIR: CSF dark, edema bright; T1ce: T1 with a
 * bright enhancing rim around a dark necrotic core.
 */
const CONTRAST: Record<Modality, readonly number[]> = {
  flair: [0.08, 0.55, 0.42, 1.0, 0.8, 0.5],
  t1: [0.25, 0.52, 0.75, 0.42, 0.5, 0.2],
  t1ce: [0.25, 0.52, 0.72, 0.45, 1.15, 0.17],
  t2: [1.0, 0.58, 0.4, 0.95, 0.75, 1.0],
};
/** Scanner units of each modality before the per-case gain. */
const GAIN: Record<Modality, number> = { flair: 800, t1: 1000, t1ce: 1100, t2: 1300 };

// ---------------------------------------------------------------------------------------------
// Cases

/** Options of {@linkcode synthCase}. */
export interface SynthCaseOptions {
  /** Every random choice of the case comes from this seed. */
  seed: number;
  /** Voxels along x, y, z (1 mm each). @default [240, 240, 155] */
  dims?: Readonly<[number, number, number]>;
  /** Label of enhancing tumor: 4 (2018–2021) or 3 (2023+). @default 4 */
  enhancingLabel?: 3 | 4;
}

/** Where one lesion went and how big it is, in voxels. */
export interface SynthLesion {
  /** Voxel x, y, z of its centre. */
  centre: Vec3;
  edema: number;
  enhancing: number;
  necrosis: number;
}

/** One generated case. All volumes are x fastest on the grid `dims` with `affine`. */
export interface SynthCase {
  dims: Vec3;
  /** Voxel to world: 1 mm, x and y flipped, as BraTS volumes are stored. */
  affine: number[][];
  /** int16 images, 0 outside the brain and at least 1 inside. */
  images: Record<Modality, Int16Array>;
  /** uint8 labels: 0 background, 1 necrotic core, 2 edema, 3 or 4 enhancing tumor. */
  seg: Uint8Array;
  /** The healthy anatomy under the tumor: 0 outside the brain, 1 CSF, 2 GM, 3 WM. */
  tissue: Uint8Array;
  /** Brain voxels (nonzero in the images). */
  brainVoxels: number;
  lesions: SynthLesion[];
}

/**
 * Generates one case on `template` (see {@linkcode loadSynthTemplate}).
 * @throws {RangeError} for dims that are not 3 integers in 32..1024 (a smaller brain leaves no
 *   room for a nested tumor)
 */
export function synthCase(template: SynthTemplate, options: SynthCaseOptions): SynthCase {
  const dims = [...(options.dims ?? DEFAULT_SYNTH_DIMS)] as Vec3;
  checkDims(dims);
  const enhancingLabel = options.enhancingLabel ?? 4;
  const rand = seededRandom(options.seed);
  const [nx, ny, nz] = dims;
  const n = nx * ny * nz;

  // Place the template's brain: fit it in the grid, then vary size, pose and position a little.
  const fit = Math.min(1, ...dims.map((d, k) => (d - 2 - 0.02 * d) / template.extent[k]));
  const stretch = [0, 1, 2].map(() => fit * uniform(rand, 0.93, 1.04)) as Vec3;
  const deg = Math.PI / 180;
  const rot = rotation(
    uniform(rand, -2, 2) * deg,
    uniform(rand, -2, 2) * deg,
    uniform(rand, -5, 5) * deg,
  );
  let place = matMul(rot, diag(stretch)); // template mm → output mm, both RAS
  const reach = [0, 1, 2].map((r) =>
    [0, 1, 2].reduce((s, c) => s + Math.abs(place[r][c]) * template.extent[c], 0)
  );
  const shrink = Math.min(1, ...dims.map((d, k) => (d - 2) / reach[k]));
  place = place.map((row) => row.map((v) => v * shrink)) as Mat3;
  const shift = dims.map((d, k) => {
    const slack = Math.max(0, (d - 2 - reach[k] * shrink) / 2);
    return uniform(rand, -1, 1) * Math.min(slack, 8 * fit);
  });
  const centreOut = dims.map((d, k) => (d - 1) / 2 + shift[k]) as Vec3;
  // BraTS stores x and y flipped: output voxel offsets map to RAS offsets through diag(-1, -1, 1).
  const flip = diag([-1, -1, 1]);
  const tLin = template.affine.slice(0, 3).map((row) => row.slice(0, 3)) as Mat3;
  const toTemplate = matMul(matInv(tLin), matMul(matInv(place), flip));

  const t = resample(template, antiAliased(template, fit), dims, toTemplate, centreOut);
  const [cCsf, cGm, cWm] = template.classMeans;
  const brain = new Uint8Array(n);
  const tissue = new Uint8Array(n);
  let brainVoxels = 0;
  for (let i = 0; i < n; i++) {
    const v = t[i];
    if (!(v > template.threshold)) continue;
    brain[i] = 1;
    brainVoxels++;
    tissue[i] = v < (cCsf + cGm) / 2 ? 1 : v < (cGm + cWm) / 2 ? 2 : 3;
  }
  const wmFraction = (v: number) => Math.min(1, Math.max(0, (v - cGm) / (cWm - cGm)));

  // Contrast, bias and noise of this "scanner".
  const gains = MODALITIES.map((m) => GAIN[m] * uniform(rand, 0.8, 1.25));
  const contrast = MODALITIES.map((m) => CONTRAST[m].map((c) => c * uniform(rand, 0.93, 1.07)));
  const biasAmp = MODALITIES.map(() => uniform(rand, 0.06, 0.18));
  const biasField = MODALITIES.map(() => valueNoise(rand));
  const biasOffset = MODALITIES.map(() => [0, 1, 2].map(() => rand() * PERIOD));
  const noiseLevel = MODALITIES.map(() => uniform(rand, 0.015, 0.035));

  // Tumor: whole tumor 1.5–10% of the brain (log-uniform), sometimes split over two lesions.
  const tumorFraction = Math.exp(uniform(rand, Math.log(0.015), Math.log(0.1)));
  const shares = rand() < 0.2 ? [uniform(rand, 0.6, 0.8)] : [1];
  if (shares[0] < 1) shares.push(1 - shares[0]);
  const scale = Math.cbrt(Math.abs(place[0][0] * place[1][1] * place[2][2])) || fit;
  const code = new Uint8Array(n); // 0 none, 1 edema, 2 enhancing, 3 necrosis
  const painted: PaintedLesion[] = [];
  const lesions: SynthLesion[] = [];
  for (const share of shares) {
    const volume = tumorFraction * share * brainVoxels;
    const lesion = placeLesion(rand, volume, scale, dims, brain, t, wmFraction, painted);
    if (!lesion) continue;
    painted.push(lesion);
    let edema = 0;
    let enhancing = 0;
    let necrosis = 0;
    forEachLesionVoxel(lesion, dims, (i, j) => {
      const c = lesion.code[j];
      if (c > code[i]) code[i] = c;
    });
    for (let j = 0; j < lesion.code.length; j++) {
      const c = lesion.code[j];
      if (c === 1) edema++;
      else if (c === 2) enhancing++;
      else if (c === 3) necrosis++;
    }
    lesions.push({ centre: lesion.centre, edema, enhancing, necrosis });
  }
  const seg = new Uint8Array(n);
  const labelOf = [0, 2, enhancingLabel, 1];
  for (let i = 0; i < n; i++) if (code[i]) seg[i] = labelOf[code[i]];

  // Paint each modality: healthy tissue from the template, the tumor blended over it, then the
  // bias field and Rician noise.
  const images = {} as Record<Modality, Int16Array>;
  const value = new Float32Array(n);
  const biasFreq = 1 / (70 * Math.max(fit, 0.25));
  MODALITIES.forEach((m, k) => {
    const [csf, gm, wm, edemaC, enhC, necC] = contrast[k];
    const g = gains[k];
    for (let i = 0; i < n; i++) {
      if (!brain[i]) continue;
      const v = t[i];
      // Piecewise linear between the tissue means: partial volume at every border.
      value[i] = g *
        (v <= cCsf
          ? csf
          : v <= cGm
          ? csf + ((v - cCsf) / (cGm - cCsf)) * (gm - csf)
          : v <= cWm
          ? gm + ((v - cGm) / (cWm - cGm)) * (wm - gm)
          : wm);
    }
    for (const lesion of painted) {
      forEachLesionVoxel(lesion, dims, (i, j) => {
        if (!brain[i]) return;
        const tex = lesion.texture[j];
        let v = value[i];
        // Edema keeps a little of the anatomy under it.
        v += lesion.fe[j] * ((0.2 * v + 0.8 * g * edemaC) * (1 + 0.06 * tex) - v);
        v += lesion.fc[j] * (g * enhC * (1 + 0.12 * tex) - v);
        v += lesion.fn[j] * (g * necC * (1 + 0.1 * tex) - v);
        value[i] = v;
      });
    }
    const out = new Int16Array(n);
    const field = biasField[k];
    const [ox, oy, oz] = biasOffset[k];
    const amp = biasAmp[k];
    const sigma = noiseLevel[k] * g * Math.max(csf, gm, wm);
    for (let z = 0, i = 0; z < nz; z++) {
      for (let y = 0; y < ny; y++) {
        for (let x = 0; x < nx; x++, i++) {
          if (!brain[i]) continue;
          const b = Math.exp(amp * field(ox + x * biasFreq, oy + y * biasFreq, oz + z * biasFreq));
          // Rician: the magnitude of a complex signal with Gaussian noise in both channels, the
          // pair drawn by Marsaglia's polar method (no sine or cosine).
          let u: number;
          let v: number;
          let q: number;
          do {
            u = 2 * rand() - 1;
            v = 2 * rand() - 1;
            q = u * u + v * v;
          } while (q >= 1 || q === 0);
          const w = sigma * Math.sqrt((-2 * Math.log(q)) / q);
          const re = value[i] * b + u * w;
          const im = v * w;
          out[i] = Math.min(32767, Math.max(1, Math.round(Math.sqrt(re * re + im * im))));
        }
      }
    }
    images[m] = out;
  });

  const affine = [[-1, 0, 0, 0], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]];
  return { dims, affine, images, seg, tissue, brainVoxels, lesions };
}

function checkDims(dims: number[]): void {
  if (
    dims.length !== 3 ||
    !dims.every((d) => Number.isInteger(d) && d >= SYNTH_MIN_DIM && d <= SYNTH_MAX_DIM)
  ) {
    throw new RangeError(
      `Cannot synthesize a case: dims must be 3 integers in ${SYNTH_MIN_DIM}..${SYNTH_MAX_DIM}, ` +
        `got [${dims}]`,
    );
  }
}

/** Trilinear samples of the template's voxels `src` at `toTemplate · (v - centreOut) + centre`. */
function resample(
  template: SynthTemplate,
  src: Float32Array,
  dims: Vec3,
  toTemplate: Mat3,
  centreOut: Vec3,
): Float32Array {
  const [nx, ny, nz] = dims;
  const [tx, ty, tz] = template.dims;
  const out = new Float32Array(nx * ny * nz);
  const g = toTemplate;
  const c = template.centre;
  const sxy = tx * ty;
  for (let z = 0, i = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      const dy = y - centreOut[1];
      const dz = z - centreOut[2];
      // Template coordinates of voxel x = 0 of this row; each step in x adds column 0 of g.
      let px = c[0] + g[0][0] * -centreOut[0] + g[0][1] * dy + g[0][2] * dz;
      let py = c[1] + g[1][0] * -centreOut[0] + g[1][1] * dy + g[1][2] * dz;
      let pz = c[2] + g[2][0] * -centreOut[0] + g[2][1] * dy + g[2][2] * dz;
      for (let x = 0; x < nx; x++, i++, px += g[0][0], py += g[1][0], pz += g[2][0]) {
        const x0 = Math.floor(px);
        const y0 = Math.floor(py);
        const z0 = Math.floor(pz);
        if (x0 < 0 || y0 < 0 || z0 < 0 || x0 >= tx - 1 || y0 >= ty - 1 || z0 >= tz - 1) continue;
        const fx = px - x0;
        const fy = py - y0;
        const fz = pz - z0;
        const b = x0 + tx * y0 + sxy * z0;
        const c00 = src[b] + fx * (src[b + 1] - src[b]);
        const c10 = src[b + tx] + fx * (src[b + tx + 1] - src[b + tx]);
        const c01 = src[b + sxy] + fx * (src[b + sxy + 1] - src[b + sxy]);
        const c11 = src[b + sxy + tx] + fx * (src[b + sxy + tx + 1] - src[b + sxy + tx]);
        const c0 = c00 + fy * (c10 - c00);
        out[i] = c0 + fz * (c01 + fy * (c11 - c01) - c0);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Lesions

/** A lesion rasterised in its bounding box: labels and soft fractions for the intensities. */
interface PaintedLesion {
  centre: Vec3;
  /** Largest core radius in voxels, to keep a second lesion's core apart. */
  coreReach: number;
  lo: Vec3;
  size: Vec3;
  /** Per box voxel: 0 none, 1 edema, 2 enhancing, 3 necrosis. */
  code: Uint8Array;
  /** Soft fractions of edema (or more), tumor core and necrosis: partial volume at the borders. */
  fe: Float32Array;
  fc: Float32Array;
  fn: Float32Array;
  /** Heterogeneity of the tumor's intensities, about [-1, 1]. */
  texture: Float32Array;
}

function forEachLesionVoxel(
  lesion: PaintedLesion,
  dims: Vec3,
  fn: (i: number, j: number) => void,
): void {
  const [sx, sy, sz] = lesion.size;
  const [x0, y0, z0] = lesion.lo;
  for (let z = 0, j = 0; z < sz; z++) {
    for (let y = 0; y < sy; y++) {
      const row = x0 + dims[0] * ((y0 + y) + dims[1] * (z0 + z));
      for (let x = 0; x < sx; x++, j++) fn(row + x, j);
    }
  }
}

/** Directions spread evenly over the sphere (Fibonacci lattice). */
const DIRECTIONS: Vec3[] = Array.from({ length: 160 }, (_, k) => {
  const z = 1 - (2 * k + 1) / 160;
  const r = Math.sqrt(1 - z * z);
  const a = k * Math.PI * (3 - Math.sqrt(5));
  return [r * Math.cos(a), r * Math.sin(a), z];
});

/**
 * Chooses a lesion's shape and a place for it inside the brain, and rasterises it. The shape is an
 * ellipsoid whose radius is perturbed by smooth noise over directions: edema outermost (spreading
 * further in white matter), the tumor core inside it at least 2.5 voxels from its border, and
 * necrosis inside the core behind an enhancing rim at least 2 voxels thick. The core with a margin
 * must lie in the brain; edema is clipped to it.
 * @returns undefined when no place was found (a brain too small for any tumor)
 */
function placeLesion(
  rand: () => number,
  volume: number,
  scale: number,
  dims: Vec3,
  brain: Uint8Array,
  t: Float32Array,
  wmFraction: (v: number) => number,
  others: PaintedLesion[],
): PaintedLesion | undefined {
  const [nx, ny] = dims;
  // The radius of a sphere of `volume`, less what the noise and the grey-matter sparing add back.
  let edemaRadius = Math.cbrt((3 * volume) / (4 * Math.PI)) * 1.08;
  let coreRadius = edemaRadius * uniform(rand, 0.45, 0.72);
  const rim = Math.max(2, uniform(rand, 2, 5) * scale);
  const necrotic = rand() < 0.85;
  const stretch = [uniform(rand, -0.25, 0.25), uniform(rand, -0.25, 0.25), 0];
  stretch[2] = -stretch[0] - stretch[1]; // exp-scales multiply to 1: the volume is kept
  const axes = stretch.map(Math.exp) as Vec3;
  const orient = rotation(rand() * 2 * Math.PI, rand() * 2 * Math.PI, rand() * 2 * Math.PI);
  const shape = matMul(orient, diag(axes)); // unit-sphere coordinates → voxel offsets
  const unshape = matInv(shape);
  const edemaNoise = valueNoise(rand);
  const coreNoise = valueNoise(rand);
  const necroNoise = valueNoise(rand);
  const rough = valueNoise(rand);
  const texture = valueNoise(rand);
  const offsets = [0, 1, 2, 3].map(() => [0, 1, 2].map(() => rand() * PERIOD));
  const maxAxis = Math.max(...axes);
  // Two octaves over the unit sphere: a few broad lobes and smaller bumps on them.
  const dirNoise = (noise: Noise, o: number[], u: Vec3) =>
    0.75 * noise(o[0] + 1.5 * u[0], o[1] + 1.5 * u[1], o[2] + 1.5 * u[2]) +
    0.35 * noise(o[0] + 8 + 3.5 * u[0], o[1] + 8 + 3.5 * u[1], o[2] + 8 + 3.5 * u[2]);
  const coreAt = (u: Vec3) => coreRadius * (1 + 0.3 * dirNoise(coreNoise, offsets[0], u));
  const necroAt = (u: Vec3, core: number) =>
    (core - rim * (1 + 1.2 * Math.abs(dirNoise(necroNoise, offsets[1], u)))) *
    (necrotic ? 1 : 0);
  const edemaAt = (u: Vec3, core: number, wm: number) =>
    Math.max(
      edemaRadius * (1 + 0.4 * dirNoise(edemaNoise, offsets[2], u)) * (0.75 + 0.25 * wm),
      core + 2.5,
    );
  const brainAt = (p: number[]) => {
    const [x, y, z] = p.map(Math.round);
    return x >= 0 && y >= 0 && z >= 0 && x < dims[0] && y < dims[1] && z < dims[2] &&
      brain[x + nx * (y + ny * z)] === 1;
  };
  // Candidate centres: white matter, where most gliomas sit and farthest from the brain's border.
  const candidates: number[] = [];
  for (let i = 0; i < t.length; i++) if (brain[i] && wmFraction(t[i]) >= 0.5) candidates.push(i);
  if (candidates.length === 0) return undefined;

  for (let attempt = 0; attempt < 240; attempt++) {
    if (attempt > 0 && attempt % 20 === 0) {
      edemaRadius *= 0.85;
      coreRadius *= 0.85;
    }
    if (coreRadius < rim + 1) coreRadius = rim + 1;
    const ci = candidates[Math.floor(rand() * candidates.length)];
    const centre: Vec3 = [ci % nx, Math.floor(ci / nx) % ny, Math.floor(ci / (nx * ny))];
    const coreReach = (coreRadius * 1.33 + 1.5) * maxAxis;
    const apart = others.every((o) =>
      Math.hypot(...centre.map((c, k) => c - o.centre[k])) > o.coreReach + coreReach + 4
    );
    if (!apart) continue;
    // Cheap check first: the core with its margin along 160 rays.
    const inside = DIRECTIONS.every((u) => {
      const r = coreAt(u) + 2;
      for (let s = 1; s <= Math.ceil(r); s++) {
        const q = [u[0] * Math.min(s, r), u[1] * Math.min(s, r), u[2] * Math.min(s, r)];
        const p = [0, 1, 2].map((k) =>
          centre[k] + shape[k][0] * q[0] + shape[k][1] * q[1] + shape[k][2] * q[2]
        );
        if (!brainAt(p)) return false;
      }
      return true;
    });
    if (!inside) continue;
    const lesion = rasterise(centre, coreReach);
    if (lesion) return lesion;
  }
  return undefined;

  function rasterise(centre: Vec3, coreReach: number): PaintedLesion | undefined {
    const reach = Math.ceil((edemaRadius * 1.45 + 4) * maxAxis + 1);
    const lo = centre.map((c) => Math.max(0, c - reach)) as Vec3;
    const hi = centre.map((c, k) => Math.min(dims[k] - 1, c + reach));
    const size = lo.map((l, k) => hi[k] - l + 1) as Vec3;
    const m = size[0] * size[1] * size[2];
    const code = new Uint8Array(m);
    const fe = new Float32Array(m);
    const fc = new Float32Array(m);
    const fn = new Float32Array(m);
    const tex = new Float32Array(m);
    // Partial volume over about one voxel, centred a little outside the label's border, so that
    // a labelled voxel looks mostly like its label even in a thin rim or a small core.
    const soft = (d: number) => Math.min(1, Math.max(0, 0.6 + d / 1.2));
    const roughAmp = Math.max(0.5, 1.5 * scale);
    for (let z = 0, j = 0; z < size[2]; z++) {
      for (let y = 0; y < size[1]; y++) {
        for (let x = 0; x < size[0]; x++, j++) {
          const p = [lo[0] + x, lo[1] + y, lo[2] + z];
          const d = [p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]];
          const q = [0, 1, 2].map((k) =>
            unshape[k][0] * d[0] + unshape[k][1] * d[1] + unshape[k][2] * d[2]
          );
          const r0 = norm3(q[0], q[1], q[2]);
          if (r0 > edemaRadius * 1.45 + 4) continue;
          const u: Vec3 = r0 > 0 ? [q[0] / r0, q[1] / r0, q[2] / r0] : [1, 0, 0];
          const r = r0 +
            roughAmp *
              rough(offsets[3][0] + p[0] / 4, offsets[3][1] + p[1] / 4, offsets[3][2] + p[2] / 4);
          const i = p[0] + nx * (p[1] + ny * p[2]);
          const core = coreAt(u);
          if (r < core + 2 && !brain[i]) return undefined; // the core must keep to the brain
          if (!brain[i]) continue;
          const edema = edemaAt(u, core, wmFraction(t[i]));
          const necro = necroAt(u, core);
          code[j] = r < necro ? 3 : r < core ? 2 : r < edema ? 1 : 0;
          fe[j] = soft(edema - r);
          fc[j] = soft(core - r);
          fn[j] = necro > 0 ? soft(necro - r) : 0;
          if (fe[j] > 0) tex[j] = texture(p[0] / 5, p[1] / 5, p[2] / 5);
        }
      }
    }
    // A necrotic core of a few voxels is noise rather than anatomy: make it part of the rim.
    let necrosis = 0;
    for (let j = 0; j < m; j++) if (code[j] === 3) necrosis++;
    if (necrosis > 0 && necrosis < 8) {
      for (let j = 0; j < m; j++) {
        if (code[j] === 3) code[j] = 2;
        fn[j] = 0;
      }
    }
    return { centre, coreReach, lo, size, code, fe, fc, fn, texture: tex };
  }
}

// ---------------------------------------------------------------------------------------------
// Datasets

/** Options of {@linkcode writeSynthDataset}. */
export interface SynthDatasetOptions {
  /** How many cases. */
  cases: number;
  /** Seed of the dataset; case k is the same whatever the number of cases. */
  seed: number;
  /** File naming and label convention. @default "brats2021" */
  naming?: SynthNaming;
  /** Voxels along x, y, z. @default [240, 240, 155] */
  dims?: Readonly<[number, number, number]>;
  /**
   * Template brain: a NIfTI path or URI, or `null` for the procedural head.
   * @default ch2bet when installed, else the procedural head
   */
  template?: string | null;
  /** Cases in flight at once (one generating while others upload). @default 2 */
  concurrency?: number;
  /** Called after each case is written. */
  onCase?: (written: SynthCaseSummary) => void;
}

/** What was written for one case. */
export interface SynthCaseSummary {
  id: string;
  /** URI of each modality and of the segmentation. */
  files: Record<Modality | "seg", string>;
  /** Brain voxels and the voxels of each BraTS region. */
  voxels: { brain: number; WT: number; TC: number; ET: number };
  /** Whole tumor as a percentage of the brain. */
  tumorPercent: number;
  lesions: number;
}

/** What {@linkcode writeSynthDataset} wrote. */
export interface SynthDatasetSummary {
  out: string;
  naming: SynthNaming;
  /** The naming's enhancing-tumor label. */
  enhancingLabel: 3 | 4;
  dims: Vec3;
  seed: number;
  template: string;
  cases: SynthCaseSummary[];
}

/** The cases.ts naming scheme (file suffixes and labels) of each release's names. */
const SCHEME: Record<SynthNaming, Naming> = {
  brats2020: "brats2021",
  brats2021: "brats2021",
  brats2023: "brats2023",
};

/** Case id `k` (0-based) in a release's style. */
export function synthCaseId(naming: SynthNaming, k: number): string {
  if (naming === "brats2020") return `BraTS20_Training_${String(k + 1).padStart(3, "0")}`;
  if (naming === "brats2021") return `BraTS2021_${String(k).padStart(5, "0")}`;
  return `BraTS-GLI-${String(k).padStart(5, "0")}-000`;
}

/**
 * Writes `cases` synthetic cases under `outUri` (a local folder or `s3://bucket/prefix`), one
 * folder per case as BraTS releases ship them: four int16 modalities and a uint8 segmentation,
 * gzipped NIfTI-1, each object written atomically.
 * @throws {RangeError} for a count, seed, naming or dims out of range, before anything is written
 */
export async function writeSynthDataset(
  outUri: string,
  options: SynthDatasetOptions,
): Promise<SynthDatasetSummary> {
  const { cases, seed, naming = "brats2021", concurrency = 2 } = options;
  const dims = [...(options.dims ?? DEFAULT_SYNTH_DIMS)] as Vec3;
  if (!Number.isInteger(cases) || cases < 1) {
    throw new RangeError(
      `Cannot synthesize a dataset: cases must be an integer >= 1, got ${cases}`,
    );
  }
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new RangeError(
      `Cannot synthesize a dataset: seed must be an integer in 0..4294967295, got ${seed}`,
    );
  }
  if (!(SYNTH_NAMINGS as readonly string[]).includes(naming)) {
    throw new RangeError(
      `Cannot synthesize a dataset: naming must be one of ${SYNTH_NAMINGS.join(", ")}, got ${
        JSON.stringify(naming)
      }`,
    );
  }
  checkDims(dims);
  parseUri(outUri); // a malformed URI fails now, not after the first case is generated
  const template = await loadSynthTemplate(options.template);
  const scheme = SCHEME[naming];
  const enhancingLabel = ENHANCING_LABEL[scheme];
  const sep = scheme === "brats2021" ? "_" : "-";
  // Case k's seed is the k-th draw of the dataset's generator: adding cases keeps the first ones.
  const seeds = seededRandom(seed);
  const caseSeeds = Array.from({ length: cases }, () => Math.floor(seeds() * 2 ** 32));

  const written = await mapConcurrent(caseSeeds, concurrency, async (caseSeed, k) => {
    // Let a previous case's uploads start before this one occupies the thread.
    await new Promise((resolve) => setTimeout(resolve, 0));
    const id = synthCaseId(naming, k);
    const c = synthCase(template, { seed: caseSeed, dims, enhancingLabel });
    const file = (part: Modality | "seg") =>
      joinUri(outUri, id, `${id}${sep}${SUFFIXES[scheme][part]}.nii.gz`);
    const description = `synthetic BraTS-like case, seed ${seed} #${k}`;
    const parts: [Modality | "seg", Uint8Array][] = [
      ...MODALITIES.map((m): [Modality, Uint8Array] => [
        m,
        encodeNifti(c.images[m], "int16", createNiftiHeader(dims, c.affine, "int16"), {
          name: file(m),
          description,
          gzip: false,
        }),
      ]),
      [
        "seg",
        encodeNifti(c.seg, "uint8", createNiftiHeader(dims, c.affine, "uint8"), {
          name: file("seg"),
          description,
          gzip: false,
        }),
      ],
    ];
    // Compressed off the main thread (zlib's pool), so the next case is generated meanwhile.
    const encoded = await Promise.all(
      parts.map(async ([part, raw]): Promise<[string, Uint8Array]> => [
        file(part),
        new Uint8Array(await gzipAsync(raw)),
      ]),
    );
    await Promise.all(encoded.map(([uri, bytes]) => putObject(uri, bytes)));
    let WT = 0;
    let TC = 0;
    let ET = 0;
    for (const l of c.seg) {
      if (l === 0) continue;
      WT++;
      if (l !== 2) TC++;
      if (l === enhancingLabel) ET++;
    }
    const summary: SynthCaseSummary = {
      id,
      files: Object.fromEntries(
        [...MODALITIES, "seg" as const].map((p) => [p, file(p)]),
      ) as Record<Modality | "seg", string>,
      voxels: { brain: c.brainVoxels, WT, TC, ET },
      tumorPercent: Math.round((1e4 * WT) / c.brainVoxels) / 100,
      lesions: c.lesions.length,
    };
    options.onCase?.(summary);
    return summary;
  });
  return {
    out: outUri,
    naming,
    enhancingLabel,
    dims,
    seed,
    template: template.source,
    cases: written,
  };
}
