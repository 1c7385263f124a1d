/**
 * Report entries for cases on storage: reads a case's FLAIR, its reference segmentation when it has
 * one and a predicted segmentation, and renders the slices {@linkcode writeReport} shows.
 * @module
 */
import { type Case, caseChannels } from "../cases/mod.ts";
import type { CaseMetrics } from "../evaluation/mod.ts";
import { labelVolume } from "../evaluation/mod.ts";
import { scaledData } from "../nifti/mod.ts";
import { readNifti } from "../nifti/mod.ts";
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
  // The first channel (FLAIR for BraTS), a volume of a 4-D file for MSD.
  const first = caseChannels(c)[0];
  const flair = await readNifti(first.uri);
  const dims = flair.header.dims.slice(0, 3) as [number, number, number];
  const n = dims[0] * dims[1] * dims[2];
  const v = first.volume ?? 0;
  const read = async (uri: string) => labelVolume(await readNifti(uri), uri);
  const slices = renderCaseSlices({
    flair: scaledData(flair).subarray(v * n, (v + 1) * n),
    dims,
    affine: flair.header.affine,
    spacing: flair.header.pixdim.slice(0, 3) as [number, number, number],
    ...(c.seg ? { truth: await read(c.seg) } : {}),
    ...(predictionUri ? { prediction: await read(predictionUri) } : {}),
  });
  return { id: c.id, slices, ...(metrics ? { metrics: reportMetrics(metrics) } : {}) };
}
