/**
 * The service's jobs: one per case to segment, queued, run through a {@linkcode CaseRunner} at
 * most `concurrency` at a time, retried with backoff after transient failures, and kept for
 * `GET /jobs/<id>` (the last {@linkcode JOB_HISTORY}).
 * @module
 */
import type { Case } from "../cases/mod.ts";
import {
  deleteObject,
  getObject,
  joinUri,
  ObjectNotFoundError,
  putObject,
} from "../storage/mod.ts";
import { outputUri } from "./outputs.ts";
import { CaseFailure, type CaseRunner, describeError, isTransientFailure } from "./runner.ts";
import type { CaseOptions } from "./segmenter.ts";

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

/** What the jobs need to know. */
export interface JobBoardOptions {
  /** Output folder or `s3://` prefix. */
  out: string;
  /** The model's URI, recorded in error records. */
  model: string;
  /** Cases segmented at once. */
  concurrency: number;
  /** Options of each case's segmentation. */
  caseOptions: CaseOptions;
  /** Retries of transient failures (see {@linkcode RETRY_BUDGET_MS}). */
  retry: { budgetMs: number; baseDelayMs: number };
  log: (entry: Record<string, unknown>) => void;
}

const folderOf = (uri: string) => uri.slice(0, uri.lastIndexOf("/") + 1);

/** The jobs of one service: queued, running, retrying and finished. */
export class JobBoard {
  readonly jobs = new Map<string, Job>();
  readonly queue: Job[] = [];
  /** The queued (or retrying) job of each case key: events for the case meanwhile join it. */
  readonly queuedByCase = new Map<string, Job>();
  /** Jobs waiting for their next attempt, with their timers. */
  readonly retrying = new Map<Job, ReturnType<typeof setTimeout>>();
  readonly counts = { done: 0, skipped: 0, failed: 0 };
  running = 0;
  #aborting = false;
  #idleWaiters: (() => void)[] = [];
  /** Jobs running now, for {@linkcode JobBoard.#sourceConflict}. */
  #active = new Set<Job>();

  constructor(private readonly runner: CaseRunner, private readonly options: JobBoardOptions) {}

  /** Jobs queued or waiting to be retried. */
  get waiting(): number {
    return this.queue.length + this.retrying.size;
  }

  /** The queued job of case key `k`, or a new one queued for `c` (found in `folder`). */
  enqueue(k: string, caseId: string, folder: string, c: Case): Job {
    let job = this.queuedByCase.get(k);
    if (job) return job;
    job = {
      id: crypto.randomUUID(),
      status: "queued",
      case: caseId,
      caseUri: folder,
      trigger: [],
      outputs: [],
      created: new Date().toISOString(),
      c,
      key: k,
      attempts: 0,
    };
    this.jobs.set(job.id, job);
    this.queue.push(job);
    this.queuedByCase.set(k, job);
    return job;
  }

  /** Starts queued jobs while fewer than `concurrency` run. */
  pump(): void {
    while (!this.#aborting && this.running < this.options.concurrency && this.queue.length > 0) {
      const job = this.queue.shift()!;
      this.queuedByCase.delete(job.key);
      this.running++;
      this.#runJob(job).finally(() => {
        this.running--;
        this.#forgetOldJobs();
        this.pump();
      });
    }
    if (this.running === 0 && this.waiting === 0) this.#idleWaiters.splice(0).forEach((w) => w());
  }

  /** Resolves once no job is queued, running or waiting to be retried. */
  async idle(): Promise<void> {
    if (this.running > 0 || this.waiting > 0) {
      await new Promise<void>((r) => this.#idleWaiters.push(r));
    }
  }

  /** Drops every queued and retrying job (failed, never started); running ones are left. */
  abort(): void {
    this.#aborting = true;
    for (const [job, timer] of this.retrying) {
      clearTimeout(timer);
      this.queue.push(job);
    }
    this.retrying.clear();
    for (const job of this.queue.splice(0)) {
      job.status = "failed";
      job.error = "dropped at shutdown before it started";
    }
  }

  #forgetOldJobs(): void {
    if (this.jobs.size <= JOB_HISTORY) return;
    for (const [id, j] of this.jobs) {
      if (this.jobs.size <= JOB_HISTORY) break;
      if (j.status !== "queued" && j.status !== "running") this.jobs.delete(id);
    }
  }

  /** Schedules a transiently failed job's next attempt; false once the budget is spent. */
  #scheduleRetry(job: Job, error: string): boolean {
    if (this.#aborting) return false;
    const now = Date.now();
    job.firstFailure ??= now;
    const delay =
      Math.min(RETRY_MAX_DELAY_MS, this.options.retry.baseDelayMs * 2 ** (job.attempts - 1)) *
      (0.5 + Math.random() / 2);
    if (now + delay - job.firstFailure > this.options.retry.budgetMs) return false;
    job.status = "queued";
    job.lastError = error;
    job.retryAt = new Date(now + delay).toISOString();
    // Events for the case meanwhile join this job.
    if (!this.queuedByCase.has(job.key)) this.queuedByCase.set(job.key, job);
    this.retrying.set(
      job,
      setTimeout(() => {
        this.retrying.delete(job);
        job.retryAt = undefined;
        this.queue.push(job);
        this.pump();
      }, delay),
    );
    const { id, case: c, attempts } = job;
    this.options.log({
      event: "job",
      id,
      status: "retrying",
      case: c,
      attempts,
      delay_ms: Math.round(delay),
      error,
    });
    return true;
  }

  /**
   * Outputs are keyed by case id, as `segment` writes them, so one id is one case: a job whose
   * case id is running from another folder, or whose output record names inputs in another
   * folder, is refused (batch `segment` refuses a dataset holding an id twice).
   */
  async #sourceConflict(job: Job): Promise<string | undefined> {
    const out = this.options.out;
    const mine = folderOf(job.c.images.flair);
    const refuse = (other: string, why: string) =>
      `case "${job.case}" of ${mine} is refused: ${why} from ${other}, and outputs are keyed by ` +
      `case id alone; remove ${joinUri(out, job.case + ".json")} (and its outputs) to ` +
      `segment this folder's case instead`;
    for (const other of this.#active) {
      if (other !== job && other.case === job.case && folderOf(other.c.images.flair) !== mine) {
        return refuse(folderOf(other.c.images.flair), "the same case id is being segmented");
      }
    }
    let record: { images?: { flair?: unknown } } | undefined;
    try {
      record = JSON.parse(
        new TextDecoder().decode(await getObject(joinUri(out, `${job.case}.json`))),
      );
    } catch (e) {
      if (e instanceof ObjectNotFoundError || e instanceof SyntaxError) return undefined;
      throw e;
    }
    const flair = record?.images?.flair;
    if (typeof flair === "string" && folderOf(flair) !== mine) {
      return refuse(folderOf(flair), `${outputUri(out, job.case)} was segmented`);
    }
    return undefined;
  }

  async #runJob(job: Job): Promise<void> {
    job.status = "running";
    job.started = new Date().toISOString();
    job.attempts++;
    const log = this.options.log;
    log({ event: "job", id: job.id, status: "running", case: job.case, attempt: job.attempts });
    const errorUri = joinUri(this.options.out, `${job.case}.error.json`);
    this.#active.add(job);
    try {
      const conflict = await this.#sourceConflict(job);
      if (conflict) throw new CaseFailure(conflict, false);
      const r = await this.runner.segment(
        job.id,
        job.c,
        this.options.out,
        this.options.caseOptions,
      );
      // A success supersedes an earlier failure's record; gone before the job shows as finished.
      await deleteObject(errorUri).catch(() => {});
      job.outputs = [r.output, ...(r.metrics ? [r.metrics] : [])];
      job.seconds = r.seconds;
      job.status = r.status;
    } catch (e) {
      if (await this.#failed(job, e, errorUri)) return void this.#active.delete(job);
    }
    this.#active.delete(job);
    job.finished = new Date().toISOString();
    this.counts[job.status as keyof typeof this.counts]++;
    log({
      event: "job",
      id: job.id,
      status: job.status,
      case: job.case,
      ...(job.seconds !== undefined ? { seconds: Math.round(job.seconds * 1000) / 1000 } : {}),
      ...(job.outputs.length ? { outputs: job.outputs } : {}),
      ...(job.error ? { error: job.error } : {}),
    });
  }

  /**
   * A job's failure: retried (true) while transient and within budget, else the job turns
   * "failed" once its error record is written, so that GET /jobs/<id> never shows a failure
   * without the record it names.
   */
  async #failed(job: Job, e: unknown, errorUri: string): Promise<boolean> {
    const aborting = this.#aborting;
    let error = aborting ? "abandoned at shutdown" : describeError(e);
    if (!aborting && isTransientFailure(e)) {
      if (this.#scheduleRetry(job, error)) return true;
      const spent = Math.round((Date.now() - (job.firstFailure ?? Date.now())) / 1000);
      error += ` (transient; gave up after ${job.attempts} attempts over ${spent} s)`;
    }
    let outputs: string[] = [];
    if (!aborting) {
      const record = {
        case: job.case,
        caseUri: job.caseUri,
        inputs: job.c.images,
        model: this.options.model,
        job: job.id,
        trigger: job.trigger,
        error,
        time: new Date().toISOString(),
      };
      try {
        await putObject(errorUri, JSON.stringify(record, null, 2) + "\n");
        outputs = [errorUri];
      } catch (w) {
        error += `; the error record ${errorUri} could not be written: ${describeError(w)}`;
      }
    }
    job.error = error;
    job.outputs = outputs;
    job.status = "failed";
    return false;
  }
}
