/**
 * Overlap metrics of the BraTS regions.
 * @module
 */

/** The three nested BraTS regions, in channel order. */
export const REGIONS = ["WT", "TC", "ET"] as const;
export type Region = typeof REGIONS[number];

/** A value per region: WT, TC, ET for BraTS, a dataset's own region names otherwise. */
export type RegionScores = Record<string, number>;

/**
 * Dice from voxel counts, 2·TP / (predicted + reference), with the legacy BraTS rule for empty
 * masks (both empty → 1): the one formula of validation and `evaluate`.
 */
export function diceOfCounts(tp: number, predicted: number, actual: number): number {
  return predicted === 0 && actual === 0 ? 1 : (2 * tp) / (predicted + actual);
}

/**
 * Dice of each region between predicted and reference region bits (bit 0 WT, 1 TC, 2 ET; see
 * pipeline/labels.ts) on one box. `truthOutside` counts reference voxels of each region outside
 * the box, where nothing is predicted: so a case cropped to its brain scores as its whole grid.
 */
export function regionDice(
  pred: Uint8Array,
  truth: Uint8Array,
  truthOutside: readonly number[] = [0, 0, 0],
  names: readonly string[] = REGIONS,
): RegionScores {
  if (pred.length !== truth.length) {
    throw new RangeError(`Prediction has ${pred.length} voxels, the reference ${truth.length}`);
  }
  const nr = names.length;
  const inter = new Array<number>(nr).fill(0);
  const predicted = new Array<number>(nr).fill(0);
  const actual = names.map((_, k) => truthOutside[k] ?? 0);
  for (let i = 0; i < truth.length; i++) {
    const p = pred[i];
    const t = truth[i];
    if ((p | t) === 0) continue;
    for (let k = 0; k < nr; k++) {
      const a = (p >> k) & 1;
      const b = (t >> k) & 1;
      predicted[k] += a;
      actual[k] += b;
      inter[k] += a & b;
    }
  }
  const d = (k: number) => diceOfCounts(inter[k], predicted[k], actual[k]);
  return Object.fromEntries(names.map((r, k) => [r, d(k)]));
}

/** Mean of each region over several cases (WT, TC, ET when there is none). */
export function meanScores(scores: RegionScores[]): RegionScores {
  const names = scores.length ? Object.keys(scores[0]) : REGIONS;
  const m = (r: string) =>
    scores.length ? scores.reduce((s, x) => s + x[r], 0) / scores.length : NaN;
  return Object.fromEntries(names.map((r) => [r, m(r)]));
}
