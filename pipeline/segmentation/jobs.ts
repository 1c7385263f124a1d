/**
 * The service's jobs: one per case to segment, queued, run through a {@linkcode CaseRunner} at
 * most `concurrency` at a time, retried with backoff after transient failures, and kept for
 * `GET /jobs/<id>` (the last {@linkcode JOB_HISTORY}).
 * @module
 */
import type { Case } from "../cases/mod.ts";
import { deleteObject, joinUri, putObject } from "../storage/mod.ts";
import { type Job, JOB_HISTORY, RETRY_MAX_DELAY_MS, sourceConflict } from "./job.ts";
import { CaseFailure, type CaseRunner, describeError, isTransientFailure } from "./runner.ts";
import type { CaseOptions } from "./segmenter.ts";

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
  /** Retries of transient failures (see `RETRY_BUDGET_MS` in job.ts). */
  retry: { budgetMs: number; baseDelayMs: number };
  log: (entry: Record<string, unknown>) => void;
}

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
  /** Jobs running now, for {@linkcode sourceConflict}. */
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

  /**
   * A case that cannot be segmented as its folder holds it (two files for one modality, a channel
   * beyond the model's): a job failed from the start, with its error record written first, as
   * `segment --event` records it.
   */
  async fail(
    caseId: string,
    folder: string,
    targets: readonly { naming: Case["naming"]; record: { uri: string } }[],
    error: string,
  ): Promise<Job> {
    const now = new Date().toISOString();
    const job: Job = {
      id: crypto.randomUUID(),
      status: "failed",
      case: caseId,
      caseUri: folder,
      trigger: targets.map((t) => t.record.uri),
      outputs: [],
      created: now,
      c: { id: caseId, naming: targets[0].naming, images: {} },
      key: "",
      attempts: 0,
    };
    const errorUri = joinUri(this.options.out, `${caseId}.error.json`);
    const record = {
      case: caseId,
      caseUri: folder,
      model: this.options.model,
      job: job.id,
      trigger: job.trigger,
      error,
      time: now,
    };
    try {
      await putObject(errorUri, JSON.stringify(record, null, 2) + "\n");
      job.outputs = [errorUri];
      job.error = error;
    } catch (w) {
      job.error = `${error}; the error record ${errorUri} could not be written: ${
        describeError(w)
      }`;
    }
    job.finished = new Date().toISOString();
    this.jobs.set(job.id, job);
    this.counts.failed++;
    this.#forgetOldJobs();
    this.options.log({
      event: "job",
      id: job.id,
      status: "failed",
      case: caseId,
      ...(job.outputs.length ? { outputs: job.outputs } : {}),
      error: job.error,
    });
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

  async #runJob(job: Job): Promise<void> {
    job.status = "running";
    job.started = new Date().toISOString();
    job.attempts++;
    const log = this.options.log;
    log({ event: "job", id: job.id, status: "running", case: job.case, attempt: job.attempts });
    const errorUri = joinUri(this.options.out, `${job.case}.error.json`);
    this.#active.add(job);
    try {
      const conflict = await sourceConflict(job, this.#active, this.options.out);
      if (conflict) throw new CaseFailure(conflict, false);
      const r = await this.runner.segment(
        job.id,
        job.c,
        this.options.out,
        this.options.caseOptions,
      );
      // A success supersedes an earlier failure's record; gone before the job shows as finished.
      await deleteObject(errorUri).catch(() => {});
      job.outputs = [
        r.output,
        ...(r.probabilities ? [r.probabilities] : []),
        ...(r.metrics ? [r.metrics] : []),
      ];
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
