/**
 * One job of the service: what `GET /jobs/<id>` shows of it, and the rule that one case id is one
 * case.
 * @module
 */
import { type Case, caseChannels } from "../cases/mod.ts";
import { getObject, joinUri, ObjectNotFoundError } from "../storage/mod.ts";
import { outputUri } from "./outputs.ts";

/** Finished jobs kept for `GET /jobs/<id>`. */
export const JOB_HISTORY = 1_000;
/**
 * A case that failed for a transient reason (S3 unreachable, throttling, 5xx) is run again after
 * 1 s, 2 s, 4 s, ... (at most 15 s each, jittered), as long as the next attempt starts within this
 * many milliseconds of the first failure; then it fails for good.
 */
export const RETRY_BUDGET_MS = 60_000;
/** The first retry's delay. */
export const RETRY_BASE_MS = 1_000;
/** The longest delay between two attempts. */
export const RETRY_MAX_DELAY_MS = 15_000;

/** A job's state. */
export type JobStatus = "queued" | "running" | "done" | "failed" | "skipped";

/** What `GET /jobs/<id>` shows. */
export interface JobView {
  id: string;
  status: JobStatus;
  /** The case id. */
  case: string;
  /** The folder the case was found in. */
  caseUri: string;
  /** The objects whose events led to the job. */
  trigger: string[];
  /** The segmentation and, for a case with a reference, its metrics (done, skipped); or the
   * error record (failed). */
  outputs: string[];
  error?: string;
  created: string;
  started?: string;
  finished?: string;
  /** Seconds the segmentation took. */
  seconds?: number;
  /** Runs started (more than 1 after transient failures). */
  attempts: number;
  /** While waiting to be run again: when, and the transient error. */
  retryAt?: string;
  lastError?: string;
}

/** A job with the case it segments. */
export interface Job extends JobView {
  c: Case;
  key: string;
  /** When the first transient failure happened (ms since the epoch). */
  firstFailure?: number;
}

/** A job as `GET /jobs/<id>` shows it. */
export function jobView(j: Job): JobView {
  const { c: _c, key: _k, ...rest } = j;
  return rest;
}

const folderOf = (uri: string) => uri.slice(0, uri.lastIndexOf("/") + 1);

/** The folder of a case's inputs: of its first channel (FLAIR for BraTS). */
const inputFolder = (c: Case) => folderOf(caseChannels(c)[0].uri);

/**
 * Outputs are keyed by case id, as `segment` writes them, so one id is one case: a job whose
 * case id is running from another folder, or whose output record names inputs in another
 * folder, is refused (batch `segment` refuses a dataset holding an id twice).
 * @returns the refusal, naming both folders; undefined when there is no conflict
 */
export async function sourceConflict(
  job: Job,
  active: ReadonlySet<Job>,
  out: string,
): Promise<string | undefined> {
  const mine = inputFolder(job.c);
  const refuse = (other: string, why: string) =>
    `case "${job.case}" of ${mine} is refused: ${why} from ${other}, and outputs are keyed by ` +
    `case id alone; remove ${joinUri(out, job.case + ".json")} (and its outputs) to ` +
    `segment this folder's case instead`;
  for (const other of active) {
    if (other !== job && other.case === job.case && inputFolder(other.c) !== mine) {
      return refuse(inputFolder(other.c), "the same case id is being segmented");
    }
  }
  let record: { images?: Record<string, unknown> } | undefined;
  try {
    record = JSON.parse(
      new TextDecoder().decode(await getObject(joinUri(out, `${job.case}.json`))),
    );
  } catch (e) {
    if (e instanceof ObjectNotFoundError || e instanceof SyntaxError) return undefined;
    throw e;
  }
  // The record's first input: FLAIR for BraTS, channel 0 for a dataset case.
  const images = record?.images;
  const first = images ? images.flair ?? Object.values(images)[0] : undefined;
  if (typeof first === "string" && folderOf(first) !== mine) {
    return refuse(folderOf(first), `${outputUri(out, job.case)} was segmented`);
  }
  return undefined;
}
