/**
 * From a case's files to network-ready arrays: its channels (the four BraTS modalities, or a
 * dataset's own) z-scored over brain voxels, stacked channel-last, and the region targets (WT,
 * TC, ET for BraTS, from either label convention; a dataset's own regions otherwise; converted by
 * pipeline/labels.ts). Label volumes stored as float are read when their values are integers. A case with no brain voxel (every modality 0 everywhere) is
 * refused: there is nothing to normalise or segment, and a network run on it anyway finds tumour.
 * @module
 */
import { type Case, caseChannels, caseDataset } from "./cases.ts";
import { labelScheme } from "./datasets.ts";
import {
  type LabelScheme,
  labelsToRegions,
  regionChannels,
  regionCount,
  regionVoxels,
} from "../labels.ts";
import { scaledData } from "../nifti/mod.ts";
import { readNifti } from "../nifti/mod.ts";
import { boundingBox, type Box, cropBox, type Dims } from "../volume/mod.ts";

/** A case in memory: channel-last float32 arrays on the case's grid (x fastest, then y, z). */
export interface LoadedCase {
  id: string;
  /** Voxels along x, y, z. */
  dims: [number, number, number];
  /** [z, y, x, channels] z-scored channels (FLAIR, T1, T1ce, T2 for BraTS); 0 outside the brain. */
  image: Float32Array;
  /** [z, y, x, regions] region masks (0/1; WT, TC, ET for BraTS), when the case has a segmentation. */
  target?: Float32Array;
}

/** The regions of a case's labels: its dataset's (see pipeline/cases/datasets.ts), WT/TC/ET for BraTS. */
export function caseLabelScheme(c: Case): LabelScheme | 3 | 4 {
  return c.enhancingLabel ?? labelScheme(caseDataset(c), c.id);
}

/**
 * The channels of a case decoded on its own grid, checked to share it; a 4-D file holding every
 * channel (MSD) is read once and split along its 4th dimension.
 */
async function readModalities(
  c: Case,
): Promise<{ dims: Dims; data: Float64Array[] | Float32Array[] }> {
  const channels = caseChannels(c);
  const files = [...new Set(channels.map((ch) => ch.uri))];
  const decoded = new Map(
    await Promise.all(files.map(async (uri) => {
      const v = await readNifti(uri);
      return [uri, { header: v.header, data: scaledData(v) }] as const;
    })),
  );
  const first = decoded.get(channels[0].uri)!.header;
  const dims = first.dims.slice(0, 3) as Dims;
  const n = dims[0] * dims[1] * dims[2];
  const data = channels.map((ch) => {
    const v = decoded.get(ch.uri)!;
    if (v.header.dims.slice(0, 3).join() !== dims.join()) {
      throw new RangeError(
        `case "${c.id}": ${ch.name} (${ch.uri}) has dims [${v.header.dims.slice(0, 3)}], ${
          channels[0].name
        } has [${dims}]`,
      );
    }
    const k = ch.volume ?? 0;
    if ((k + 1) * n > v.data.length) {
      throw new RangeError(
        `case "${c.id}": ${ch.name} is volume ${k} of ${ch.uri}, which has dims [${v.header.dims}]`,
      );
    }
    return ch.volume === undefined ? v.data : v.data.subarray(k * n, (k + 1) * n);
  }) as Float64Array[] | Float32Array[];
  return { dims, data };
}

/** The region bits (pipeline/labels.ts) of a case's segmentation on its grid, when it has one. */
async function readRegions(c: Case, dims: Dims): Promise<Uint8Array | undefined> {
  if (!c.seg) return undefined;
  const seg = await readNifti(c.seg);
  if (seg.header.dims.slice(0, 3).join() !== dims.join()) {
    throw new RangeError(
      `case "${c.id}": segmentation ${c.seg} has dims [${
        seg.header.dims.slice(0, 3)
      }], the images have [${dims}]`,
    );
  }
  return labelsToRegions(scaledData(seg), caseLabelScheme(c), c.seg);
}

/**
 * Brain mask: voxels nonzero in any modality.
 * @throws {RangeError} naming the case and its files when there is none
 */
function brainMask(data: ArrayLike<number>[], n: number, c: Case): Uint8Array {
  const brain = new Uint8Array(n);
  for (const d of data) for (let i = 0; i < n; i++) if (d[i] !== 0) brain[i] = 1;
  if (brain.indexOf(1) < 0) {
    throw new RangeError(
      `case "${c.id}": no brain voxel: every modality is 0 in all ${n} voxels (${
        [...new Set(caseChannels(c).map((ch) => ch.uri))].join(", ")
      }); a skull-stripped scan has signal inside the brain`,
    );
  }
  return brain;
}

/** Mean and standard deviation of each modality over the brain mask (std 1 when degenerate). */
function brainStats(data: ArrayLike<number>[], brain: Uint8Array): { mean: number; std: number }[] {
  return data.map((d) => {
    let sum = 0;
    let sum2 = 0;
    let count = 0;
    for (let i = 0; i < brain.length; i++) {
      if (brain[i]) {
        sum += d[i];
        sum2 += d[i] * d[i];
        count++;
      }
    }
    const mean = count ? sum / count : 0;
    const std = count ? Math.sqrt(Math.max(sum2 / count - mean * mean, 0)) || 1 : 1;
    return { mean, std };
  });
}

/** Reads a case's volumes, z-scores each modality over the brain (nonzero in any modality). */
export async function loadCase(c: Case): Promise<LoadedCase> {
  const { dims, data } = await readModalities(c);
  const n = dims[0] * dims[1] * dims[2];
  const brain = brainMask(data, n, c);
  const stats = brainStats(data, brain);
  const ch = data.length;
  const image = new Float32Array(n * ch);
  data.forEach((d, k) => {
    const { mean, std } = stats[k];
    for (let i = 0; i < n; i++) image[ch * i + k] = brain[i] ? (d[i] - mean) / std : 0;
  });
  const regions = await readRegions(c, dims);
  if (!regions) return { id: c.id, dims, image };
  return {
    id: c.id,
    dims,
    image,
    target: regionChannels(regions, regionCount(caseLabelScheme(c))),
  };
}

/** Input channels of a preprocessed case: its image's values per voxel of its box. */
export function imageChannels(p: { image: { length: number }; box: Box }): number {
  return p.image.length / (p.box.size[0] * p.box.size[1] * p.box.size[2]);
}

/** Region channels of a labelled preprocessed case (3, WT, TC, ET, for BraTS). */
export function targetChannels(p: { regionsOutside?: readonly number[] }): number {
  return p.regionsOutside?.length ?? 3;
}

/**
 * A case ready for training or inference: cropped to the brain's bounding box, each modality
 * z-scored over brain voxels, with what is needed to put results back on the original grid.
 */
export interface PreprocessedCase {
  id: string;
  /** The original grid (x, y, z). */
  dims: Dims;
  /** The brain's bounding box on the original grid; `image` and `regions` cover exactly it. */
  box: Box;
  /** Per-channel mean and standard deviation over the brain, in channel (MODALITIES) order. */
  stats: { mean: number; std: number }[];
  /** [z, y, x, channels] over the box, z-scored, 0 outside the brain. */
  image: Float32Array;
  /**
   * [z, y, x] over the box: region bits (WT | TC | ET, REGION_BITS of pipeline/labels.ts, for
   * BraTS; bit k for region k of a dataset's), when labelled.
   */
  regions?: Uint8Array;
  /**
   * Voxels of each region (WT, TC and ET) in the segmentation outside the box, when labelled:
   * what `regions` leaves out, which a prediction (0 outside the brain's box) misses, so that
   * validation scores the whole grid as `evaluate` scores `segment`'s output. Its length is the
   * number of regions.
   */
  regionsOutside?: number[];
}

/** Reads and preprocesses a case (see {@linkcode PreprocessedCase}). */
export async function preprocessCase(c: Case): Promise<PreprocessedCase> {
  const { dims, data } = await readModalities(c);
  const n = dims[0] * dims[1] * dims[2];
  const brain = brainMask(data, n, c);
  const stats = brainStats(data, brain);
  const box = boundingBox(brain, dims);
  const [bx, by, bz] = box.size;
  const ch = data.length;
  const image = new Float32Array(bx * by * bz * ch);
  let o = 0;
  for (let z = 0; z < bz; z++) {
    for (let y = 0; y < by; y++) {
      let i = ((box.start[2] + z) * dims[1] + box.start[1] + y) * dims[0] + box.start[0];
      for (let x = 0; x < bx; x++, i++, o++) {
        if (brain[i]) {
          for (let k = 0; k < ch; k++) {
            image[ch * o + k] = (data[k][i] - stats[k].mean) / stats[k].std;
          }
        }
      }
    }
  }
  const full = await readRegions(c, dims);
  if (!full) return { id: c.id, dims, box, stats, image };
  const regions = cropBox(full, dims, 1, box.start, box.size);
  const nr = regionCount(caseLabelScheme(c));
  const inside = regionVoxels(regions, nr);
  const outside = regionVoxels(full, nr).map((v, k) => v - inside[k]);
  return { id: c.id, dims, box, stats, image, regions, regionsOutside: outside };
}
