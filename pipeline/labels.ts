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
 * @module
 */

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
export function regionTable(enhancingLabel: 3 | 4): Uint8Array {
  const table = new Uint8Array(256).fill(INVALID_LABEL);
  table[0] = 0;
  table[1] = REGION_BITS.WT | REGION_BITS.TC;
  table[2] = REGION_BITS.WT;
  table[enhancingLabel] = REGION_BITS.WT | REGION_BITS.TC | REGION_BITS.ET;
  return table;
}

/**
 * The region bits of a label volume.
 * @param name what to call the volume in errors
 * @throws {RangeError} a label other than 0, 1, 2 or `enhancingLabel`, naming the volume and voxel
 */
export function labelsToRegions(
  labels: ArrayLike<number>,
  enhancingLabel: 3 | 4,
  name = "segmentation",
): Uint8Array {
  const table = regionTable(enhancingLabel);
  const out = new Uint8Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    const r = table[labels[i]] ?? INVALID_LABEL;
    if (r & INVALID_LABEL) {
      throw new RangeError(
        `${name}: voxel ${i} has label ${
          labels[i]
        }; expected 0, 1, 2 or ${enhancingLabel} (enhancing tumor)`,
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
export function regionsToLabels(regions: ArrayLike<number>, enhancingLabel: 3 | 4): Uint8Array {
  const out = new Uint8Array(regions.length);
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
 * The labels `segment` writes for region probabilities ([voxels, 3] WT, TC, ET, channel-last):
 * each region above {@linkcode REGION_THRESHOLD}, converted by {@linkcode regionsToLabels}. With
 * `etThreshold`, an enhancing region of fewer voxels becomes necrosis (nnU-Net's BraTS rule).
 * @throws {RangeError} when `probs` is not 3 values per voxel
 */
export function probabilitiesToLabels(
  probs: Float32Array,
  enhancingLabel: 3 | 4,
  etThreshold = 0,
): Uint8Array {
  if (probs.length % 3 !== 0) {
    throw new RangeError(`Region probabilities: ${probs.length} values are not 3 per voxel`);
  }
  const n = probs.length / 3;
  const bits = new Uint8Array(n);
  let et = 0;
  for (let i = 0; i < n; i++) {
    let r = 0;
    if (probs[3 * i] > REGION_THRESHOLD) r |= REGION_BITS.WT;
    if (probs[3 * i + 1] > REGION_THRESHOLD) r |= REGION_BITS.TC;
    if (probs[3 * i + 2] > REGION_THRESHOLD) (r |= REGION_BITS.ET, et++);
    bits[i] = r;
  }
  const labels = regionsToLabels(bits, enhancingLabel);
  if (et > 0 && et < etThreshold) {
    for (let i = 0; i < n; i++) if (labels[i] === enhancingLabel) labels[i] = 1;
  }
  return labels;
}

/** Expands region bits to [voxels, 3] WT, TC, ET floats (0/1): the network's targets. */
export function regionChannels(regions: ArrayLike<number>): Float32Array {
  const out = new Float32Array(regions.length * 3);
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i];
    out[3 * i] = r & 1;
    out[3 * i + 1] = (r >> 1) & 1;
    out[3 * i + 2] = (r >> 2) & 1;
  }
  return out;
}
