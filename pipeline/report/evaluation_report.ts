/**
 * The HTML report of an evaluation: slices for the cases whose images are under the references
 * (a BraTS dataset), and the metrics of every evaluated case.
 * @module
 */
import { findCases } from "../cases/mod.ts";
import { type Evaluation, findPredictions } from "../evaluation/mod.ts";
import { mapConcurrent } from "../storage/mod.ts";
import { caseReport, reportMetrics } from "./case_report.ts";
import { writeReport } from "./report.ts";

/**
 * Writes `<out>/report/index.html` for `evaluation` of the predictions under `pred` against the
 * references under `truth`: FLAIR slices with both overlaid where `truth` holds the case's images,
 * the metrics tables for every case.
 * @returns the report's URI
 */
export async function writeEvaluationReport(
  pred: string,
  truth: string,
  out: string,
  evaluation: Evaluation,
): Promise<string> {
  const predictions = new Map((await findPredictions(pred)).map((p) => [p.id, p.uri]));
  const images = new Map((await findCases(truth)).cases.map((c) => [c.id, c]));
  const cases = await mapConcurrent(evaluation.cases, 2, async (r) => {
    const c = images.get(r.case);
    const p = predictions.get(r.case);
    return c && p ? await caseReport(c, p, r) : { id: r.case, metrics: reportMetrics(r) };
  });
  return await writeReport(out, {
    title: "Evaluation",
    cases,
    notes: [`predictions: ${pred}`, `references: ${truth}`],
  });
}
