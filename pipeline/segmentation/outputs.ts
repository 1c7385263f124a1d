/**
 * The files `segment` writes for a case and the record that decides whether a later run may skip
 * it: `<out>/<case>.nii.gz`, the optional `<case>_probabilities.nii.gz` and `<case>.metrics.json`,
 * then `<out>/<case>.json` recording the model, inputs, options and the outputs it covers; and
 * `<out>/<case>.error.json` for a case that failed.
 * @module
 */
import type { Case } from "../cases/mod.ts";
import type { Overlap } from "../inference/mod.ts";
import {
  deleteObject,
  exists,
  getObject,
  joinUri,
  putObject,
  removeStaleWrites,
} from "../storage/mod.ts";

/** The options a record keys a case's output by (key order is part of the key). */
export interface RecordOptions {
  /** As asked: a fraction, or `"auto"` (the record's `overlap_used` says what it resolved to). */
  overlap: Overlap;
  tta: boolean;
  window: number;
  et_threshold: number;
  largest_component?: true;
}

/** The record written beside each output, deciding whether a later run may skip the case. */
export interface OutputRecord {
  model_sha256: string;
  inputs: string;
  /** The input files, so that `serve` can tell a case id arriving from another folder. */
  images?: Case["images"];
  options: RecordOptions;
  /** The window overlap the case was segmented with (`options.overlap` with `"auto"` resolved). */
  overlap_used?: number;
  output: string;
  /** Every file written with this record (labels, probabilities, metrics). */
  outputs: string[];
  written: string;
}

/** Where one case's files go, and which of them this run writes. */
export interface OutputPlan {
  output: string;
  record: string;
  probabilities?: string;
  metrics?: string;
  /** The files this run writes, labels first. */
  wanted: string[];
  /** Every file a run may have written for the case, the record last. */
  every: string[];
}

/** The output URI of a case. */
export function outputUri(out: string, id: string): string {
  return joinUri(out, `${id}.nii.gz`);
}

/** The files of case `id` under `out`, with probabilities and metrics when asked. */
export function planOutputs(
  out: string,
  id: string,
  asked: { probabilities: boolean; metrics: boolean },
): OutputPlan {
  const output = outputUri(out, id);
  const record = joinUri(out, `${id}.json`);
  const probabilitiesAt = joinUri(out, `${id}_probabilities.nii.gz`);
  const metricsAt = joinUri(out, `${id}.metrics.json`);
  const probabilities = asked.probabilities ? probabilitiesAt : undefined;
  const metrics = asked.metrics ? metricsAt : undefined;
  return {
    output,
    record,
    ...(probabilities ? { probabilities } : {}),
    ...(metrics ? { metrics } : {}),
    wanted: [output, ...(probabilities ? [probabilities] : []), ...(metrics ? [metrics] : [])],
    every: [output, probabilitiesAt, metricsAt, record],
  };
}

/**
 * Whether the record at `plan.record` names this model, these inputs and options, covers every
 * file wanted now, and those files exist (an unreadable record: no).
 */
export async function upToDate(
  plan: OutputPlan,
  key: { model_sha256: string; inputs: string; options: RecordOptions },
): Promise<boolean> {
  let r: OutputRecord | undefined;
  try {
    r = JSON.parse(new TextDecoder().decode(await getObject(plan.record))) as OutputRecord;
  } catch {
    // an unreadable record: redo the case
  }
  const covered = Array.isArray(r?.outputs) && plan.wanted.every((u) => r!.outputs.includes(u));
  return Boolean(
    r && covered && r.model_sha256 === key.model_sha256 && r.inputs === key.inputs &&
      JSON.stringify(r.options) === JSON.stringify(key.options) &&
      (await Promise.all(plan.wanted.map(exists))).every(Boolean),
  );
}

/** One case's encoded outputs, in {@linkcode writeOutputs}' order. */
export interface CaseFiles {
  labels: Uint8Array;
  probabilities?: Uint8Array;
  metrics?: unknown;
  /** The record, stamped `written` once the files it lists are there. */
  record: Omit<OutputRecord, "written">;
}

/**
 * Writes a case's files, each in one PUT: labels first, then what depends on them, the record
 * last. Whatever a kill interrupts, a record is only ever beside the outputs it lists, and no file
 * is there without the labels; files of an earlier run that this one does not rewrite would
 * describe other labels, so they go.
 * @param hadRecord whether a record is there now (removed first)
 */
export async function writeOutputs(
  plan: OutputPlan,
  files: CaseFiles,
  hadRecord: boolean,
): Promise<void> {
  if (hadRecord) await deleteObject(plan.record);
  await removeStaleWrites(plan.every);
  for (const uri of plan.every.slice(1, 3)) if (!plan.wanted.includes(uri)) await deleteObject(uri);
  await putObject(plan.output, files.labels);
  if (plan.probabilities) await putObject(plan.probabilities, files.probabilities!);
  if (plan.metrics) await putObject(plan.metrics, JSON.stringify(files.metrics, null, 2) + "\n");
  const record: OutputRecord = { ...files.record, written: new Date().toISOString() };
  const text = JSON.stringify(record, null, 2) + "\n";
  await putObject(plan.record, new TextEncoder().encode(text));
}

/** Writes `<out>/<id>.error.json`; a failure to write it is added to the error it returns. */
export async function recordError(out: string, id: string, error: string): Promise<string> {
  const uri = joinUri(out, `${id}.error.json`);
  try {
    await putObject(
      uri,
      JSON.stringify({ case: id, error, time: new Date().toISOString() }, null, 2) + "\n",
    );
    return error;
  } catch (e) {
    return `${error}; the error record ${uri} could not be written: ${(e as Error).message}`;
  }
}
