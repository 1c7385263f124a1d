/**
 * Report entries for cases on storage: reads a case's FLAIR, its reference segmentation when it has
 * one and a predicted segmentation, and renders the slices {@linkcode writeReport} shows.
 * @module
 */
import type { Case } from "./cases.ts";
import type { CaseMetrics } from "./evaluation.ts";
import { labelVolume } from "./evaluation.ts";
import { scaledData } from "./nifti.ts";
import { readNifti } from "./nifti_object.ts";
import { renderCaseSlices, type ReportCase } from "./report.ts";

/** Metrics in the report's shape (plain numbers per region). */
export function reportMetrics(m: CaseMetrics): ReportCase["metrics"] {
  const out: ReportCase["metrics"] = {};
  for (const r of ["WT", "TC", "ET"] as const) out[r] = { ...m[r] };
  return out;
}

/**
 * A report entry for a case: FLAIR with the reference (when the case has one) and the prediction at
 * `predictionUri` (when given) overlaid, and the metrics when given.
 */
export async function caseReport(
  c: Case,
  predictionUri?: string,
  metrics?: CaseMetrics,
): Promise<ReportCase> {
  const flair = await readNifti(c.images.flair);
  const dims = flair.header.dims.slice(0, 3) as [number, number, number];
  const read = async (uri: string) => labelVolume(await readNifti(uri), uri);
  const slices = renderCaseSlices({
    flair: scaledData(flair),
    dims,
    affine: flair.header.affine,
    spacing: flair.header.pixdim.slice(0, 3) as [number, number, number],
    ...(c.seg ? { truth: await read(c.seg) } : {}),
    ...(predictionUri ? { prediction: await read(predictionUri) } : {}),
  });
  return { id: c.id, slices, ...(metrics ? { metrics: reportMetrics(metrics) } : {}) };
}
