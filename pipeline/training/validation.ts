/**
 * Validation during training: sliding-window predictions on the validation cases, scored by Dice
 * per region as `evaluate` scores what `segment` writes.
 * @module
 */
import { type UNet, unetPredictor } from "../../model/mod.ts";
import { caseAt, type Cases } from "../cases/mod.ts";
import { meanScores, regionDice, type RegionScores } from "../evaluation/mod.ts";
import { slidingWindowProbabilities } from "../inference/mod.ts";
import { type Labels, labelsToRegions, probabilitiesToLabels } from "../labels.ts";

/** Options of {@linkcode validate}. */
export interface ValidateOptions {
  /** Checked before each case: once aborted, validation stops by throwing the signal's reason. */
  signal?: AbortSignal;
  /** Called after each case with its id and the number of cases done. */
  onCase?: (id: string, done: number) => void;
  /** The dataset's regions and labels. @default the BraTS regions WT, TC, ET */
  labels?: Labels;
}

/**
 * Mean Dice per region of sliding-window predictions on the validation cases (in memory, or read
 * one at a time when streamed), scored as `evaluate` scores what `segment` writes with these
 * weights, the same window and the same overlap (`"auto"`): the probabilities converted to labels (pipeline/labels.ts), their
 * regions compared with the reference's, whose voxels outside the brain's box count as missed.
 * @throws the signal's reason when `options.signal` is aborted before a case
 */
export async function validate(
  net: UNet,
  cases: Cases,
  window: number,
  options: ValidateOptions = {},
): Promise<RegionScores> {
  const scores: RegionScores[] = [];
  for (let i = 0; i < cases.length; i++) {
    options.signal?.throwIfAborted();
    const c = caseAt(cases, i);
    const probs = await slidingWindowProbabilities(unetPredictor(net), c.image, c.box.size, {
      window,
      overlap: "auto",
    });
    // The regions of a BraTS label volume do not depend on the enhancing label's value.
    const labels = options.labels ?? 4;
    const predicted = labelsToRegions(probabilitiesToLabels(probs, labels), labels);
    const names = typeof labels === "number" ? undefined : labels.regions.map((r) => r.name);
    scores.push(regionDice(predicted, c.regions!, c.regionsOutside, names));
    options.onCase?.(c.id, scores.length);
  }
  return meanScores(scores);
}
