/**
 * BraTS labels and the nested regions they stand for, converted one way everywhere: training
 * targets, `segment`'s output, validation during training and `evaluate` all use these functions,
 * so what validation scores is what `segment` writes.
 *
 * Regions as bits: WT (bit 0) is every tumour label (1, 2 and enhancing), TC (bit 1) is necrosis
 * (1) and enhancing, ET (bit 2) is enhancing: 4 in BraTS 2018–2021, 3 from 2023 on. A network's
 * region probabilities become labels as nnU-Net converts regions: each region thresholded at 0.5,
 * WT → 2, then TC → 1, then ET → enhancing, each overwriting the last; so a voxel whose TC is
 * above 0.5 is tumour even where its WT is not.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { labelsToRegions, probabilitiesToLabels } from "./labels.ts";
 * // WT, TC, ET per voxel: background, edema, TC without WT (→ necrosis), enhancing.
 * const probs = new Float32Array([0, 0, 0, 0.9, 0, 0, 0.2, 0.7, 0, 0.9, 0.9, 0.9]);
 * const labels = probabilitiesToLabels(probs, 4);
 * assertEquals([...labels], [0, 2, 1, 4]);
 * assertEquals([...labelsToRegions(labels, 4)], [0, 1, 3, 7]);
 * ```
 * Any other dataset's labels (an nnU-Net or MSD `dataset.json`) become a {@linkcode LabelScheme}:
 * its regions are the network's outputs, bit k for region k, and each region found is written as
 * its own label value, in `order`, each overwriting the last; the BraTS convention is the scheme
 * {@linkcode bratsScheme} makes, so every function here takes either.
 *
 * @module
 */

/**
 * What a network's outputs mean in a dataset's labels: each output channel is one region (a set
 * of label values), and a voxel found in region k is written as `order[k]`, regions taken in order
 * so that a later one overwrites an earlier one (nnU-Net's `regions_class_order`).
 */
export interface LabelScheme {
  /** Each region's name (for logs and metrics) and the label values it holds, in output order. */
  regions: { name: string; labels: number[] }[];
  /** The label value written for each region, in the same order. */
  order: number[];
}

/** The most regions a scheme may have: region bits live in a byte whose top bit marks invalid. */
export const MAX_REGIONS = 7;

/**
 * The BraTS scheme: WT (1, 2 and enhancing), TC (1 and enhancing), ET (enhancing), written as 2,
 * 1 and `enhancingLabel`.
 */
export function bratsScheme(enhancingLabel: 3 | 4): LabelScheme {
  return {
    regions: [
      { name: "WT", labels: [1, 2, enhancingLabel] },
      { name: "TC", labels: [1, enhancingLabel] },
      { name: "ET", labels: [enhancingLabel] },
    ],
    order: [2, 1, enhancingLabel],
  };
}

/** A scheme or a BraTS enhancing label (the scheme {@linkcode bratsScheme} makes of it). */
export type Labels = LabelScheme | 3 | 4;

function schemeOf(labels: Labels): LabelScheme {
  return typeof labels === "number" ? bratsScheme(labels) : labels;
}

/** Whether a scheme is the BraTS one (WT, TC, ET of 1, 2 and 3 or 4), and its enhancing label. */
export function bratsEnhancingLabel(labels: Labels): 3 | 4 | undefined {
  if (typeof labels === "number") return labels;
  for (const e of [4, 3] as const) {
    if (JSON.stringify(labels) === JSON.stringify(bratsScheme(e))) return e;
  }
  return undefined;
}

/** The number of regions (network outputs) of a scheme: 3 (WT, TC, ET) for BraTS. */
export function regionCount(labels: Labels): number {
  return typeof labels === "number" ? 3 : labels.regions.length;
}

/** The label values a scheme accepts in a reference, ascending: 0 and every region's labels. */
export function schemeLabels(labels: Labels): number[] {
  const s = schemeOf(labels);
  const all = new Set([0, ...s.regions.flatMap((r) => r.labels), ...s.order]);
  return [...all].sort((a, b) => a - b);
}

/** The bit of each region in a region-bits volume. */
export const REGION_BITS = { WT: 1, TC: 2, ET: 4 } as const;

/** What {@linkcode regionTable} holds for a label outside the convention. */
export const INVALID_LABEL = 0x80;

/** The probability above which a voxel is in a region. */
export const REGION_THRESHOLD = 0.5;

/**
 * The region bits of each label 0..255 in a convention: 0 → none, 1 → WT | TC, 2 → WT,
 * enhancing → WT | TC | ET, anything else {@linkcode INVALID_LABEL}.
 */
export function regionTable(enhancingLabel: Labels): Uint8Array {
  const table = new Uint8Array(256).fill(INVALID_LABEL);
  if (typeof enhancingLabel === "number") {
    table[0] = 0;
    table[1] = REGION_BITS.WT | REGION_BITS.TC;
    table[2] = REGION_BITS.WT;
    table[enhancingLabel] = REGION_BITS.WT | REGION_BITS.TC | REGION_BITS.ET;
    return table;
  }
  // Any scheme: a label's bits are the regions holding it; 0 and written labels are valid too.
  for (const l of schemeLabels(enhancingLabel)) table[l] = 0;
  enhancingLabel.regions.forEach((r, k) => {
    for (const l of r.labels) table[l] |= 1 << k;
  });
  return table;
}

/**
 * Whether each label 0..255 lies in one region, 1 or 0: the region of `bit` (a
 * {@linkcode REGION_BITS} value, or `1 << k` for region k of a scheme); labels outside the
 * convention are in none. A lookup table for masks of one region (`cropMask`'s table).
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { REGION_BITS, regionMaskTable } from "./labels.ts";
 * const tc = regionMaskTable(4, REGION_BITS.TC);
 * assertEquals([tc[0], tc[1], tc[2], tc[3], tc[4]], [0, 1, 0, 0, 1]);
 * ```
 */
export function regionMaskTable(labels: Labels, bit: number): Uint8Array {
  return regionTable(labels).map((r) => (r & bit) !== 0 ? 1 : 0);
}

/**
 * One region of a label volume as a 0/1 mask: 1 where the label lies in the region of `bit`
 * (see {@linkcode regionMaskTable}), 0 elsewhere and for labels outside the convention.
 * @param out where to write it (reused across regions), a new array when absent
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { REGION_BITS, regionMask } from "./labels.ts";
 * assertEquals([...regionMask([0, 1, 2, 4], 4, REGION_BITS.WT)], [0, 1, 1, 1]);
 * ```
 */
export function regionMask(
  labels: ArrayLike<number>,
  scheme: Labels,
  bit: number,
  out: Uint8Array = new Uint8Array(labels.length),
): Uint8Array {
  const table = regionMaskTable(scheme, bit);
  // A plain loop: Uint8Array.from with a mapping function is some 10× slower on 9M voxels.
  for (let i = 0; i < labels.length; i++) out[i] = table[labels[i]] ?? 0;
  return out;
}

/** The voxels of each of `k` regions in a region-bits volume (bit j is region j). */
export function regionVoxels(regions: ArrayLike<number>, k: number): number[] {
  const counts = new Array<number>(k).fill(0);
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i];
    for (let j = 0; j < k; j++) counts[j] += (r >> j) & 1;
  }
  return counts;
}

/**
 * The region bits of a label volume.
 * @param name what to call the volume in errors
 * @throws {RangeError} a label other than 0, 1, 2 or `enhancingLabel`, naming the volume and voxel
 */
export function labelsToRegions(
  labels: ArrayLike<number>,
  enhancingLabel: Labels,
  name = "segmentation",
): Uint8Array {
  const table = regionTable(enhancingLabel);
  const out = new Uint8Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    // A float volume's label must be integral: 0.5 indexes nothing and is refused below.
    const r = table[labels[i]] ?? INVALID_LABEL;
    if (r & INVALID_LABEL) {
      const expected = typeof enhancingLabel === "number"
        ? `0, 1, 2 or ${enhancingLabel} (enhancing tumor)`
        : schemeLabels(enhancingLabel).join(", ");
      throw new RangeError(
        `${name}: voxel ${i} has label ${labels[i]}${
          Number.isInteger(labels[i]) ? "" : " (not an integer)"
        }; expected ${expected}`,
      );
    }
    out[i] = r;
  }
  return out;
}

/**
 * Labels of region bits, the inverse of {@linkcode labelsToRegions} on nested bits and for any
 * bits the overwriting rule: ET → enhancing, else TC → 1, else WT → 2, else 0.
 */
export function regionsToLabels(regions: ArrayLike<number>, enhancingLabel: Labels): Uint8Array {
  const out = new Uint8Array(regions.length);
  if (typeof enhancingLabel !== "number") {
    const order = enhancingLabel.order;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i];
      let l = 0;
      for (let k = 0; k < order.length; k++) if (r & (1 << k)) l = order[k];
      out[i] = l;
    }
    return out;
  }
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i];
    out[i] = r & REGION_BITS.ET
      ? enhancingLabel
      : r & REGION_BITS.TC
      ? 1
      : r & REGION_BITS.WT
      ? 2
      : 0;
  }
  return out;
}

/**
 * The labels `segment` writes for region probabilities ([voxels, regions] channel-last: WT, TC,
 * ET for BraTS): each region above {@linkcode REGION_THRESHOLD}, converted by
 * {@linkcode regionsToLabels}. With `etThreshold` (BraTS only), an enhancing region of fewer
 * voxels becomes necrosis (nnU-Net's BraTS rule).
 * @throws {RangeError} when `probs` is not one value per region per voxel
 */
export function probabilitiesToLabels(
  probs: Float32Array,
  enhancingLabel: Labels,
  etThreshold = 0,
): Uint8Array {
  const k = schemeOf(enhancingLabel).regions.length;
  if (probs.length % k !== 0) {
    throw new RangeError(`Region probabilities: ${probs.length} values are not ${k} per voxel`);
  }
  const n = probs.length / k;
  const bits = regionBits(probs, k);
  const labels = regionsToLabels(bits, enhancingLabel);
  if (typeof enhancingLabel !== "number") return labels;
  let et = 0;
  for (let i = 0; i < n; i++) if (bits[i] & REGION_BITS.ET) et++;
  if (et > 0 && et < etThreshold) {
    for (let i = 0; i < n; i++) if (labels[i] === enhancingLabel) labels[i] = 1;
  }
  return labels;
}

/** The region bits of [voxels, k] probabilities: bit j where region j is above the threshold. */
export function regionBits(probs: Float32Array, k: number): Uint8Array {
  const n = probs.length / k;
  const bits = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    let r = 0;
    for (let j = 0; j < k; j++) if (probs[k * i + j] > REGION_THRESHOLD) r |= 1 << j;
    bits[i] = r;
  }
  return bits;
}

/**
 * Expands region bits to [voxels, k] floats (0/1), k = 3 (WT, TC, ET) unless given: the
 * network's targets.
 */
export function regionChannels(regions: ArrayLike<number>, k = 3): Float32Array {
  const out = new Float32Array(regions.length * k);
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i];
    for (let j = 0; j < k; j++) out[k * i + j] = (r >> j) & 1;
  }
  return out;
}
