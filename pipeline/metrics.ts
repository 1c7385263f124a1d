/**
 * Overlap metrics of the BraTS regions.
 * @module
 */

/** The three nested BraTS regions, in channel order. */
export const REGIONS = ["WT", "TC", "ET"] as const;
export type Region = typeof REGIONS[number];

/** A value per region. */
export type RegionScores = Record<Region, number>;

/**
 * Dice of each region between predicted probabilities ([voxels, 3], thresholded at `threshold`)
 * and region bits (bit 0 WT, 1 TC, 2 ET). Legacy BraTS scoring of empty regions: both empty → 1.
 */
export function regionDice(
  probs: Float32Array,
  regions: Uint8Array,
  threshold = 0.5,
): RegionScores {
  if (probs.length !== regions.length * 3) {
    throw new RangeError(
      `Prediction has ${probs.length / 3} voxels, the reference ${regions.length}`,
    );
  }
  const inter = [0, 0, 0];
  const pred = [0, 0, 0];
  const truth = [0, 0, 0];
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i];
    for (let k = 0; k < 3; k++) {
      const p = probs[3 * i + k] > threshold ? 1 : 0;
      const t = (r >> k) & 1;
      pred[k] += p;
      truth[k] += t;
      inter[k] += p & t;
    }
  }
  const d = (k: number) => (pred[k] + truth[k] === 0 ? 1 : (2 * inter[k]) / (pred[k] + truth[k]));
  return { WT: d(0), TC: d(1), ET: d(2) };
}

/** Mean of each region over several cases. */
export function meanScores(scores: RegionScores[]): RegionScores {
  const m = (r: Region) =>
    scores.length ? scores.reduce((s, x) => s + x[r], 0) / scores.length : NaN;
  return { WT: m("WT"), TC: m("TC"), ET: m("ET") };
}
