/**
 * Scoring a segmented case of an nnU-Net v2 or MSD dataset against its reference in the dataset's
 * own regions, as `evaluate` scores a folder against that dataset (pipeline/evaluation's
 * `evaluateDatasetImages`): BraTS-labelled outputs are scored by encode_case.ts.
 * @module
 */
import { type Case, isBraTS, labelScheme } from "../cases/mod.ts";
import { evaluateDatasetImages } from "../evaluation/mod.ts";
import { type Labels, type LabelScheme } from "../labels.ts";
import { decodeNifti, readNifti } from "../nifti/mod.ts";
import type { CaseMetricsRecord } from "./encode_case.ts";

/** Keys of a metrics record besides its regions: a region of one of these names is not scored. */
const RECORD_KEYS = ["case", "lesionWise", "prediction", "reference"];

/**
 * The regions a case's reference is scored in: its dataset's (names as `evaluate` reports them),
 * when the case has a reference, belongs to an nnU-Net or MSD dataset, and that dataset's labels
 * are those the model writes (`labels`); undefined otherwise (a BraTS output is scored as BraTS,
 * and an output in other labels than its reference's has nothing to be scored against).
 */
export function datasetRegions(c: Case, labels: Labels): LabelScheme | undefined {
  if (c.seg === undefined || typeof labels === "number") return undefined;
  if (!c.dataset || isBraTS(c.dataset)) return undefined;
  let own: LabelScheme;
  try {
    own = labelScheme(c.dataset);
  } catch {
    // A folder without a description (bare imagesTs) has no labels of its own.
    return undefined;
  }
  const values = (s: LabelScheme) => JSON.stringify([s.regions.map((r) => r.labels), s.order]);
  if (values(own) !== values(labels)) return undefined;
  if (own.regions.some((r) => RECORD_KEYS.includes(r.name))) return undefined;
  return own;
}

/**
 * Scores the labels about to be written (`labelBytes`, the encoded `<case>.nii.gz`) against the
 * case's reference in `scheme`'s regions.
 * @throws {RangeError|SyntaxError} a reference that cannot be read, holds a label outside the
 *   dataset's, or lies on another grid, naming it
 */
export async function scoreDatasetCase(
  c: Case,
  labelBytes: Uint8Array,
  output: string,
  scheme: LabelScheme,
): Promise<CaseMetricsRecord> {
  const reference = c.seg!;
  const { metrics } = evaluateDatasetImages(
    decodeNifti(labelBytes, output),
    output,
    await readNifti(reference),
    reference,
    scheme,
  );
  return { case: c.id, ...metrics, prediction: output, reference } as unknown as CaseMetricsRecord;
}
