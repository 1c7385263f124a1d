/**
 * BraTS 2023 lesion-wise scoring of one region (WT, TC or ET) of one case, as the challenge
 * defines it (its published metrics code and README, rachitsaluja/BraTS-2023-Metrics):
 *
 * 1. Reference lesions: the reference mask is dilated `dilation` times by the 18-neighbour
 *    structuring element and split into 26-connected components; the reference voxels inside one
 *    dilated component form one lesion (lesions closer than the dilation are merged).
 * 2. Predicted lesions: the 26-connected components of the prediction.
 * 3. Each reference lesion is matched by every predicted lesion that meets the lesion's own
 *    dilation; its Dice and robust HD95 (pipeline/evaluation/surfels.ts: the challenge's surface-distance
 *    definition) are taken against the union of those predicted lesions, whole. A lesion matched
 *    by none scores Dice 0 and HD95 374 mm.
 * 4. Predicted lesions that match no reference lesion are false positives: Dice 0, HD95 374 mm.
 * 5. Reference lesions of volume ≤ `minVolume` mm³ are left out (and the predictions matching
 *    them are not false positives).
 * 6. The score is the mean over the lesions kept and the false positives; with neither (both
 *    empty) Dice is 1 and HD95 0.
 *
 * The parameters of each challenge are data: {@linkcode LESION_WISE_CHALLENGES}.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { lesionWiseRegion } from "./lesion_wise.ts";
 * // A 12×1×1 line: one reference lesion found exactly, one predicted lesion far from it.
 * const truth = new Uint8Array(12);
 * const pred = new Uint8Array(12);
 * truth.fill(1, 0, 3);
 * pred.fill(1, 0, 3);
 * pred[10] = 1;
 * const r = lesionWiseRegion(pred, truth, [12, 1, 1], [1, 1, 1], { dilation: 1, minVolume: 0 });
 * assertEquals([r.dice, r.hd95, r.tp, r.fp, r.fn], [0.5, 187, 1, 1, 0]);
 * ```
 * @module
 */
import type { MaskArray } from "./distance.ts";
import { type Box, cropMask, type Dims, maskBox, unionBox } from "../volume/mod.ts";
import { robustHausdorff } from "./surfels.ts";

/** The per-challenge parameters of lesion-wise scoring. */
export interface LesionWiseParams {
  /**
   * Dilations (18-neighbour, voxels) that merge nearby reference lesions and match predictions;
   * 0: none (lesions are the 26-connected components).
   */
  dilation: number;
  /** Reference lesions of at most this volume (mm³) are not scored. */
  minVolume: number;
  /** The challenge these are the parameters of (a key of LESION_WISE_CHALLENGES), for reports. */
  challenge?: string;
}

/** A named challenge's parameters, as its organisers set them. */
export interface LesionWiseChallenge extends Omit<LesionWiseParams, "challenge"> {
  /** What the challenge is. */
  description: string;
}

/**
 * The BraTS 2023 challenges' lesion-wise parameters (the values of the challenge's metrics code).
 * The key is what `evaluate --challenge` takes.
 */
export const LESION_WISE_CHALLENGES: Readonly<Record<string, LesionWiseChallenge>> = {
  "BraTS-GLI": { dilation: 3, minVolume: 50, description: "BraTS 2023 adult glioma" },
  "BraTS-SSA": { dilation: 3, minVolume: 50, description: "BraTS 2023 Sub-Saharan Africa glioma" },
  "BraTS-MEN": { dilation: 1, minVolume: 50, description: "BraTS 2023 meningioma" },
  "BraTS-PED": { dilation: 3, minVolume: 50, description: "BraTS 2023 paediatric tumours" },
  "BraTS-MET": { dilation: 1, minVolume: 2, description: "BraTS 2023 brain metastases" },
};

/** Dice and HD95 (mm) of a missed reference lesion or a false-positive prediction: 0 and this. */
export const LESION_MISS_HD95 = 374;

/** The lesion-wise scores of one region of one case. */
export interface LesionWiseRegion {
  /** Mean Dice over scored reference lesions and false positives; 1 when there are neither. */
  dice: number;
  /** Mean HD95 (mm) over the same, 374 for each miss; 0 when there are neither. */
  hd95: number;
  /** Scored reference lesions matched by a prediction. */
  tp: number;
  /** Predicted lesions matching no reference lesion. */
  fp: number;
  /** Scored reference lesions matched by no prediction. */
  fn: number;
  /** Reference lesions left out for their volume (≤ minVolume mm³). */
  small: number;
}

/**
 * The 26-connected components of a mask: a label 1..count per voxel (0 outside), numbered in
 * voxel order of their first voxel.
 */
export function connectedComponents(
  mask: MaskArray,
  dims: readonly number[],
): { labels: Int32Array; count: number } {
  const [nx, ny, nz] = dims;
  const sxy = nx * ny;
  const labels = new Int32Array(mask.length);
  const stack = new Int32Array(mask.length);
  let count = 0;
  for (let seed = 0; seed < mask.length; seed++) {
    if (mask[seed] === 0 || labels[seed] !== 0) continue;
    labels[seed] = ++count;
    let top = 0;
    stack[top++] = seed;
    while (top > 0) {
      const i = stack[--top];
      const x = i % nx;
      const y = Math.floor(i / nx) % ny;
      const z = Math.floor(i / sxy);
      for (let dz = -1; dz <= 1; dz++) {
        const zz = z + dz;
        if (zz < 0 || zz >= nz) continue;
        for (let dy = -1; dy <= 1; dy++) {
          const yy = y + dy;
          if (yy < 0 || yy >= ny) continue;
          for (let dx = -1; dx <= 1; dx++) {
            const xx = x + dx;
            if (xx < 0 || xx >= nx) continue;
            const j = xx + nx * yy + sxy * zz;
            if (mask[j] !== 0 && labels[j] === 0) {
              labels[j] = count;
              stack[top++] = j;
            }
          }
        }
      }
    }
  }
  return { labels, count };
}

/**
 * The binary dilation of a mask `iterations` times by the 18-neighbour structuring element
 * (SciPy's `generate_binary_structure(3, 2)`), within the volume.
 *
 * Works on a copy padded by `iterations` voxels so that no step needs a bounds check: a voxel
 * reached through the padding is also reached by a path inside the volume (the 18-neighbour steps
 * from a to b can all move towards b, staying in the box between them), so the result inside is
 * SciPy's. Each step grows only from the voxels the previous step added.
 */
export function dilate(mask: MaskArray, dims: readonly number[], iterations: number): Uint8Array {
  const [nx, ny, nz] = dims;
  const m = iterations;
  const px = nx + 2 * m;
  const py = ny + 2 * m;
  const pxy = px * py;
  const padded = new Uint8Array(pxy * (nz + 2 * m));
  let frontier: number[] = [];
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      let o = m + px * (y + m) + pxy * (z + m);
      for (let x = 0; x < nx; x++, i++, o++) {
        if (mask[i] !== 0) {
          padded[o] = 1;
          frontier.push(o);
        }
      }
    }
  }
  const steps: number[] = [];
  for (let dz = -1; dz <= 1; dz++) {
    for (let dy = -1; dy <= 1; dy++) {
      for (let dx = -1; dx <= 1; dx++) {
        const n = Math.abs(dx) + Math.abs(dy) + Math.abs(dz);
        if (n >= 1 && n <= 2) steps.push(dx + px * dy + pxy * dz);
      }
    }
  }
  for (let it = 0; it < iterations; it++) {
    const next: number[] = [];
    for (const o of frontier) {
      for (let k = 0; k < steps.length; k++) {
        const q = o + steps[k];
        if (padded[q] === 0) {
          padded[q] = 1;
          next.push(q);
        }
      }
    }
    frontier = next;
  }
  const out = new Uint8Array(nx * ny * nz);
  i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      let o = m + px * (y + m) + pxy * (z + m);
      for (let x = 0; x < nx; x++, i++, o++) out[i] = padded[o];
    }
  }
  return out;
}

/** A box grown by `pad` voxels on every side, within a volume of `dims`. */
function grow(box: Box, pad: number, dims: readonly number[]): Box {
  const start = box.start.map((v) => Math.max(0, v - pad)) as Dims;
  const end = box.start.map((v, k) => Math.min(dims[k], v + box.size[k] + pad));
  return { start, size: [end[0] - start[0], end[1] - start[1], end[2] - start[2]] };
}

/** Per label 1..count: its voxel count and bounding box. */
function componentStats(
  labels: Int32Array,
  count: number,
  dims: readonly number[],
): { size: Int32Array; boxes: Box[] } {
  const [nx, ny, nz] = dims;
  const size = new Int32Array(count + 1);
  // lo[3l + k] and hi[3l + k]: the first and last voxel of label l along axis k.
  const lo = new Int32Array(3 * (count + 1)).fill(2 ** 30);
  const hi = new Int32Array(3 * (count + 1)).fill(-1);
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const l = labels[i];
        if (l === 0) continue;
        size[l]++;
        const b = 3 * l;
        if (x < lo[b]) lo[b] = x;
        if (y < lo[b + 1]) lo[b + 1] = y;
        if (z < lo[b + 2]) lo[b + 2] = z;
        if (x > hi[b]) hi[b] = x;
        if (y > hi[b + 1]) hi[b + 1] = y;
        if (z > hi[b + 2]) hi[b + 2] = z;
      }
    }
  }
  const boxes = Array.from({ length: count + 1 }, (_, l): Box => {
    const b = 3 * l;
    return {
      start: [lo[b], lo[b + 1], lo[b + 2]],
      size: [hi[b] - lo[b] + 1, hi[b + 1] - lo[b + 1] + 1, hi[b + 2] - lo[b + 2] + 1],
    };
  });
  return { size, boxes };
}

/**
 * The lesion-wise Dice and HD95 of one region: binary prediction and reference masks on one grid
 * (nonzero is inside), the reference's voxel size, and the challenge's parameters. The work is
 * done in the box holding both masks grown by the dilation.
 * @throws {RangeError} masks that do not fit `dims`, or parameters out of range
 */
export function lesionWiseRegion(
  pred: MaskArray,
  truth: MaskArray,
  dims: readonly number[],
  spacing: readonly number[],
  params: LesionWiseParams,
): LesionWiseRegion {
  if (!Number.isInteger(params.dilation) || params.dilation < 0) {
    throw new RangeError(
      `Cannot score lesions: the dilation must be a whole number of voxels ≥ 0, got ${params.dilation}`,
    );
  }
  if (!(params.minVolume >= 0)) {
    throw new RangeError(
      `Cannot score lesions: the minimum volume must be ≥ 0 mm³, got ${params.minVolume}`,
    );
  }
  const boxP = maskBox(pred, dims);
  const boxT = maskBox(truth, dims);
  if (!boxP && !boxT) return { dice: 1, hd95: 0, tp: 0, fp: 0, fn: 0, small: 0 };
  const d = params.dilation;
  const box = grow(boxP && boxT ? unionBox(boxP, boxT) : (boxP ?? boxT)!, d, dims);
  const grid = box.size;
  const p = cropMask(pred, dims, box);
  const t = cropMask(truth, dims, box);

  // Reference lesions: reference voxels grouped by the component of the dilated reference.
  const merged = connectedComponents(dilate(t, grid, d), grid);
  const lesionOf = new Int32Array(t.length);
  for (let i = 0; i < t.length; i++) if (t[i] !== 0) lesionOf[i] = merged.labels[i];
  const lesions = componentStats(lesionOf, merged.count, grid);
  const predicted = connectedComponents(p, grid);
  const components = componentStats(predicted.labels, predicted.count, grid);

  const voxelVolume = (n: number) => n * spacing[0] * spacing[1] * spacing[2];
  const matchedAny = new Uint8Array(predicted.count + 1);
  // The labels a crop keeps (cropMask's table): set before each crop, cleared after.
  const pick = new Uint8Array(Math.max(merged.count, predicted.count) + 1);
  let diceSum = 0;
  let hdSum = 0;
  let tp = 0;
  let fn = 0;
  let small = 0;
  for (let l = 1; l <= merged.count; l++) {
    // The predicted lesions meeting this lesion's own dilation.
    const around = grow(lesions.boxes[l], d, grid);
    const [ax, ay, az] = around.start;
    const aroundDims = around.size;
    pick[l] = 1;
    const lesion = cropMask(lesionOf, grid, around, pick);
    pick[l] = 0;
    const zone = dilate(lesion, aroundDims, d);
    const matched = new Set<number>();
    let o = 0;
    for (let z = az; z < az + aroundDims[2]; z++) {
      for (let y = ay; y < ay + aroundDims[1]; y++) {
        let i = ax + grid[0] * (y + grid[1] * z);
        for (let x = 0; x < aroundDims[0]; x++, i++, o++) {
          if (zone[o] !== 0 && predicted.labels[i] !== 0) matched.add(predicted.labels[i]);
        }
      }
    }
    for (const c of matched) matchedAny[c] = 1;
    const scored = voxelVolume(lesions.size[l]) > params.minVolume;
    if (!scored) {
      small++;
      continue;
    }
    if (matched.size === 0) {
      fn++;
      hdSum += LESION_MISS_HD95;
      continue;
    }
    tp++;
    let both = lesions.boxes[l];
    let predVoxels = 0;
    for (const c of matched) {
      both = unionBox(both, components.boxes[c]);
      predVoxels += components.size[c];
    }
    pick[l] = 1;
    const a = cropMask(lesionOf, grid, both, pick);
    pick[l] = 0;
    for (const c of matched) pick[c] = 1;
    const b = cropMask(predicted.labels, grid, both, pick);
    for (const c of matched) pick[c] = 0;
    let overlap = 0;
    for (let i = 0; i < a.length; i++) overlap += a[i] & b[i];
    diceSum += (2 * overlap) / (lesions.size[l] + predVoxels);
    hdSum += robustHausdorff(a, b, both.size, spacing);
  }
  let fp = 0;
  for (let c = 1; c <= predicted.count; c++) if (!matchedAny[c]) fp++;
  const n = tp + fn + fp;
  if (n === 0) return { dice: 1, hd95: 0, tp, fp, fn, small };
  return { dice: diceSum / n, hd95: (hdSum + fp * LESION_MISS_HD95) / n, tp, fp, fn, small };
}
