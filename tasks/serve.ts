/**
 * `serve`: an HTTP service that segments a BraTS case when an S3 event says its last input arrived.
 *
 * POST an S3 event notification (Amazon S3 through SNS, MinIO's webhook, EventBridge, or the plain
 * `Records` JSON; see pipeline/events.ts) to `/` or `/events`. Each record is triaged without I/O
 * (object-created events for BraTS case files outside `--out` only), de-duplicated by object
 * version, and its case's folder listed: a complete case is queued (202, a job id), an incomplete
 * one is left for the event of its last modality (202, "waiting"). Jobs run on worker threads, each
 * with the model loaded once, so the service keeps answering while a case is segmented.
 *
 * Delivery is at least once: a record already seen (same bucket, key, versionId, sequencer and
 * ETag; the last {@linkcode DEDUPE_ENTRIES} kept) changes nothing unless its job failed, a
 * queued job absorbs further
 * events for its case, and `segment` skips a case already done with the same model and inputs.
 * A failing case becomes a failed job and `<out>/<case>.error.json`; the service goes on.
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { BackendName } from "../model/backend.ts";
import type { Case } from "../pipeline/cases/mod.ts";
import {
  caseKeyOf,
  type CaseResolution,
  type CaseTarget,
  type IgnoredRecord,
  MalformedEventError,
  MAX_EVENT_RECORDS,
  parseS3Event,
  resolveCases,
  TooManyRecordsError,
  triageRecord,
} from "../pipeline/segmentation/mod.ts";
import {
  deleteObject,
  getObject,
  joinUri,
  ObjectNotFoundError,
  putObject,
} from "../pipeline/storage/mod.ts";
import { isTransientS3Error } from "../pipeline/storage/mod.ts";
import { resolveModel } from "../pipeline/training/mod.ts";
import { MAX_OVERLAP, OVERLAP_RANGE } from "../pipeline/inference/mod.ts";
import {
  backendFlag,
  type Command,
  intFlag,
  numberFlag,
  parseFlags,
  printJson,
  UsageError,
} from "./_cli.ts";
import { type CaseOptions, Segmenter } from "./segment.ts";

/** Records remembered for de-duplication (oldest forgotten first). */
export const DEDUPE_ENTRIES = 10_000;
/** Finished jobs kept for `GET /jobs/<id>`. */
export const JOB_HISTORY = 1_000;
/** Largest request body accepted (S3 sends about 1 KiB per record). */
export const DEFAULT_MAX_BODY = 1024 * 1024;
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
/** The environment variable holding the bearer token unless `--token-env` names another. */
export const DEFAULT_TOKEN_ENV = "REVUNET_TOKEN";

// ---------------------------------------------------------------------------------------------
// Workers

/** What the service sends a worker (tasks/_serve_worker.ts). */
export type WorkerRequest =
  | { type: "load"; model: string; backend: BackendName }
  | { type: "segment"; job: string; case: Case; out: string; options: CaseOptions };

/** The outcome of one case, as the service needs it. */
export interface RunOutcome {
  id: string;
  status: "done" | "skipped";
  output: string;
  /** `<out>/<case>.metrics.json`, for a case with a reference segmentation. */
  metrics?: string;
  seconds: number;
}

/** The part of a case's outcome that crosses to the service (no label counts). */
export function runOutcome(o: RunOutcome): RunOutcome {
  return {
    id: o.id,
    status: o.status,
    output: o.output,
    ...(o.metrics ? { metrics: o.metrics } : {}),
    seconds: o.seconds,
  };
}

/** What a worker answers. */
export type WorkerReply =
  | { type: "loaded"; backend: string; model: string }
  | { type: "error"; error: string }
  | { type: "result"; job: string; outcome: RunOutcome }
  | { type: "failed"; job: string; error: string; transient?: boolean };

/** A case that failed, with whether trying it again later could succeed. */
export class CaseFailure extends Error {
  override name = "CaseFailure";
  constructor(message: string, readonly transient: boolean) {
    super(message);
  }
}

/** Whether a runner's failure is worth retrying: S3 unreachable, throttling or failing (5xx). */
export function isTransientFailure(e: unknown): boolean {
  return e instanceof CaseFailure ? e.transient : isTransientS3Error(e);
}

/** An error's message with its causes, as main.ts prints them. */
export function describeError(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  let text = e.message;
  for (let cause = e.cause; cause instanceof Error; cause = cause.cause) {
    if (!text.includes(cause.message)) text += `; caused by: ${cause.message}`;
  }
  return text;
}

/** Segments cases for the service: worker threads ({@linkcode WorkerPool}), or a fake in tests. */
export interface CaseRunner {
  /** Segments one case into `out`; throws naming the file and problem. */
  segment(job: string, c: Case, out: string, options: CaseOptions): Promise<RunOutcome>;
  /** Stops every worker; cases in flight fail as abandoned. */
  close(): void;
  /** The backend the model runs on, for /healthz. */
  readonly backend: string;
}

interface Slot {
  worker: Worker;
  pending?: { job: string; resolve(o: RunOutcome): void; reject(e: Error): void };
}

/** Worker threads, each holding the model, running one case at a time. */
export class WorkerPool implements CaseRunner {
  #all = new Set<Slot>();
  #idle: Slot[] = [];
  #waiting: { resolve(slot: Slot): void; reject(e: Error): void }[] = [];
  #closed = false;
  #log: (entry: Record<string, unknown>) => void;

  private constructor(
    readonly model: string,
    readonly backend: string,
    private readonly backendName: BackendName,
    log: (entry: Record<string, unknown>) => void,
  ) {
    this.#log = log;
  }

  /**
   * Starts `size` workers and loads the model in each.
   * @throws naming the model when it cannot be loaded
   */
  static async start(
    model: string,
    backend: BackendName,
    size: number,
    log: (entry: Record<string, unknown>) => void = () => {},
  ): Promise<WorkerPool> {
    const started = await Promise.allSettled(
      Array.from({ length: size }, () => spawnWorker(model, backend)),
    );
    const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    const ok = started.flatMap((r) => r.status === "fulfilled" ? [r.value] : []);
    if (failed) {
      for (const { slot } of ok) slot.worker.terminate();
      throw failed.reason;
    }
    const pool = new WorkerPool(model, ok[0].backend, backend, log);
    for (const { slot } of ok) pool.#adopt(slot);
    return pool;
  }

  #adopt(slot: Slot): void {
    this.#all.add(slot);
    slot.worker.onmessage = (e: MessageEvent<WorkerReply>) => {
      const p = slot.pending;
      if (!p || (e.data.type !== "result" && e.data.type !== "failed") || e.data.job !== p.job) {
        return;
      }
      slot.pending = undefined;
      if (e.data.type === "result") p.resolve(e.data.outcome);
      else p.reject(new CaseFailure(e.data.error, e.data.transient ?? false));
      this.#release(slot);
    };
    slot.worker.onerror = (e) => {
      // An uncaught error (or a crash) in the worker: fail its case, replace the worker.
      e.preventDefault();
      slot.worker.terminate();
      this.#all.delete(slot);
      slot.pending?.reject(new Error(`the segmentation worker crashed: ${e.message}`));
      slot.pending = undefined;
      if (this.#closed) return;
      this.#log({ event: "worker_crashed", error: e.message });
      spawnWorker(this.model, this.backendName).then(
        ({ slot: fresh }) => this.#closed ? fresh.worker.terminate() : this.#adopt(fresh),
        (err) => this.#log({ event: "worker_restart_failed", error: describeError(err) }),
      );
    };
    this.#release(slot);
  }

  #release(slot: Slot): void {
    const next = this.#waiting.shift();
    if (next) next.resolve(slot);
    else this.#idle.push(slot);
  }

  async segment(job: string, c: Case, out: string, options: CaseOptions): Promise<RunOutcome> {
    if (this.#closed) throw new Error("the service is shutting down");
    const slot = this.#idle.pop() ??
      await new Promise<Slot>((resolve, reject) => this.#waiting.push({ resolve, reject }));
    return await new Promise<RunOutcome>((resolve, reject) => {
      slot.pending = { job, resolve, reject };
      const msg: WorkerRequest = { type: "segment", job, case: c, out, options };
      slot.worker.postMessage(msg);
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // Terminating a busy worker abandons its case: outputs are written whole or not at all.
    const abandoned = new Error("abandoned: the service is shutting down");
    for (const slot of this.#all) {
      slot.worker.terminate();
      slot.pending?.reject(abandoned);
      slot.pending = undefined;
    }
    for (const w of this.#waiting) w.reject(abandoned);
    this.#all.clear();
    this.#idle = [];
    this.#waiting = [];
  }
}

/**
 * Segments on the service's own thread, for a backend that cannot load in a worker. The service
 * does not answer (health checks included) while a case is being segmented.
 */
export class InProcessRunner implements CaseRunner {
  #busy = 0;
  #closed = false;

  private constructor(private readonly segmenter: Segmenter) {}

  /** Loads the model on this thread. */
  static async load(model: string, backend: BackendName): Promise<InProcessRunner> {
    return new InProcessRunner(await Segmenter.load(model, { backend, quiet: true }));
  }

  get backend(): string {
    return this.segmenter.backend;
  }

  async segment(_job: string, c: Case, out: string, options: CaseOptions): Promise<RunOutcome> {
    if (this.#closed) throw new Error("the service is shutting down");
    this.#busy++;
    try {
      return runOutcome(await this.segmenter.segmentCase(c, out, options));
    } finally {
      if (--this.#busy === 0 && this.#closed) this.segmenter.dispose();
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#busy === 0) this.segmenter.dispose();
  }
}

function spawnWorker(
  model: string,
  backend: BackendName,
): Promise<{ slot: Slot; backend: string }> {
  const worker = new Worker(new URL("./_serve_worker.ts", import.meta.url), { type: "module" });
  return new Promise((resolve, reject) => {
    worker.onmessage = (e: MessageEvent<WorkerReply>) => {
      if (e.data.type === "loaded") resolve({ slot: { worker }, backend: e.data.backend });
      else if (e.data.type === "error") {
        worker.terminate();
        reject(new Error(`Cannot load the model "${model}": ${e.data.error}`));
      }
    };
    worker.onerror = (e) => {
      e.preventDefault();
      worker.terminate();
      reject(new Error(`Cannot load the model "${model}": the worker failed: ${e.message}`));
    };
    const msg: WorkerRequest = { type: "load", model, backend };
    worker.postMessage(msg);
  });
}

// ---------------------------------------------------------------------------------------------
// The service

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

interface Job extends JobView {
  c: Case;
  key: string;
  /** When the first transient failure happened (ms since the epoch). */
  firstFailure?: number;
}

/** Options of {@linkcode startEventService}. */
export interface ServiceOptions {
  /** Output folder or `s3://` prefix; events for objects under it are ignored. */
  out: string;
  /** Accept only objects under this `s3://` prefix. @default any */
  input?: string;
  /** The model's URI, recorded in error records and /healthz. */
  model: string;
  hostname: string;
  /** 0 for any free port. */
  port: number;
  /** Cases segmented at once (each needs a worker). */
  concurrency: number;
  /** Jobs waiting beyond those running before events get 503. */
  queue: number;
  /** The bearer token, or undefined for no authentication. */
  token: string | undefined;
  /** Largest request body in bytes. @default 1 MiB */
  maxBodyBytes?: number;
  /** Options of each case's segmentation. */
  caseOptions?: CaseOptions;
  /**
   * Retries of transient failures: attempts start within `budgetMs` of the first failure, the
   * first after `baseDelayMs`. @default {@linkcode RETRY_BUDGET_MS}, {@linkcode RETRY_BASE_MS}
   */
  retry?: { budgetMs?: number; baseDelayMs?: number };
  /** Receives one structured entry per thing that happened. */
  log?: (entry: Record<string, unknown>) => void;
}

/** A running service. */
export interface EventService {
  /** e.g. "http://127.0.0.1:8080" */
  readonly url: string;
  readonly port: number;
  /**
   * Stops accepting events (503), lets queued and running jobs finish, then closes the server.
   * Resolves when it is closed.
   */
  drain(): Promise<void>;
  /** Stops at once: queued jobs are dropped, running ones abandoned (no partial outputs). */
  abort(): Promise<void>;
  /** Resolves once the server is closed. */
  readonly closed: Promise<void>;
}

/** What a record led to; a record whose jobs all failed is run again when it is redelivered. */
type SeenEntry = { status: "pending" } | { status: "done"; jobs: Job[]; result: string };

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function sha256(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** The credential a request presents: `Bearer <token>`, or the password of `Basic` (SNS). */
function presentedToken(req: Request): string | undefined {
  const header = req.headers.get("authorization");
  const m = header ? /^\s*(\S+)\s+(\S+)\s*$/.exec(header) : null;
  if (!m) return undefined;
  const scheme = m[1].toLowerCase();
  if (scheme === "bearer") return m[2];
  if (scheme !== "basic") return undefined;
  try {
    const decoded = new TextDecoder().decode(Uint8Array.from(atob(m[2]), (c) => c.charCodeAt(0)));
    const colon = decoded.indexOf(":");
    return colon < 0 ? undefined : decoded.slice(colon + 1);
  } catch {
    return undefined;
  }
}

/** Reads a body up to `max` bytes; undefined when it is larger. */
async function readBody(req: Request, max: number): Promise<Uint8Array | undefined> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > max) {
    await req.body?.cancel();
    return undefined;
  }
  if (!req.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > max) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
  const body = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) (body.set(c, at), at += c.length);
  return body;
}

/** SNS confirmation URLs are only ever followed to SNS itself. */
const SNS_HOST = /^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$/;

/**
 * Starts the service on `options.hostname:port`, segmenting through `runner`.
 * @returns once it listens
 */
export async function startEventService(
  options: ServiceOptions,
  runner: CaseRunner,
): Promise<EventService> {
  const log = options.log ?? (() => {});
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY;
  const tokenDigest = options.token === undefined ? undefined : sha256(options.token);
  const filter = { out: options.out, input: options.input };
  const caseOptions = options.caseOptions ?? {};
  const started = Date.now();

  const jobs = new Map<string, Job>();
  const queue: Job[] = [];
  const queuedByCase = new Map<string, Job>();
  const seen = new Map<string, SeenEntry>();
  const counts = { done: 0, skipped: 0, failed: 0 };
  let running = 0;
  let draining = false;
  let aborting = false;
  const idleWaiters: (() => void)[] = [];
  /** Jobs waiting for their next attempt, with their timers. */
  const retrying = new Map<Job, ReturnType<typeof setTimeout>>();
  const budgetMs = options.retry?.budgetMs ?? RETRY_BUDGET_MS;
  const baseDelayMs = options.retry?.baseDelayMs ?? RETRY_BASE_MS;

  const remember = (key: string, entry: SeenEntry) => {
    seen.delete(key);
    seen.set(key, entry);
    while (seen.size > DEDUPE_ENTRIES) seen.delete(seen.keys().next().value!);
  };
  const view = (j: Job): JobView => {
    const { c: _c, key: _k, ...rest } = j;
    return rest;
  };
  const forgetOldJobs = () => {
    if (jobs.size <= JOB_HISTORY) return;
    for (const [id, j] of jobs) {
      if (jobs.size <= JOB_HISTORY) break;
      if (j.status !== "queued" && j.status !== "running") jobs.delete(id);
    }
  };

  const pump = () => {
    while (!aborting && running < options.concurrency && queue.length > 0) {
      const job = queue.shift()!;
      queuedByCase.delete(job.key);
      running++;
      runJob(job).finally(() => {
        running--;
        forgetOldJobs();
        pump();
      });
    }
    if (running === 0 && queue.length === 0 && retrying.size === 0) {
      idleWaiters.splice(0).forEach((w) => w());
    }
  };

  /** Schedules a transiently failed job's next attempt; false once the budget is spent. */
  const scheduleRetry = (job: Job, error: string): boolean => {
    if (aborting) return false;
    const now = Date.now();
    job.firstFailure ??= now;
    const delay = Math.min(RETRY_MAX_DELAY_MS, baseDelayMs * 2 ** (job.attempts - 1)) *
      (0.5 + Math.random() / 2);
    if (now + delay - job.firstFailure > budgetMs) return false;
    job.status = "queued";
    job.lastError = error;
    job.retryAt = new Date(now + delay).toISOString();
    // Events for the case meanwhile join this job.
    if (!queuedByCase.has(job.key)) queuedByCase.set(job.key, job);
    retrying.set(
      job,
      setTimeout(() => {
        retrying.delete(job);
        job.retryAt = undefined;
        queue.push(job);
        pump();
      }, delay),
    );
    log({
      event: "job",
      id: job.id,
      status: "retrying",
      case: job.case,
      attempts: job.attempts,
      delay_ms: Math.round(delay),
      error,
    });
    return true;
  };

  /**
   * Outputs are keyed by case id, as `segment` writes them, so one id is one case: a job whose
   * case id is running from another folder, or whose output record names inputs in another
   * folder, is refused (batch `segment` refuses a dataset holding an id twice).
   */
  const active = new Set<Job>();
  const folderOf = (uri: string) => uri.slice(0, uri.lastIndexOf("/") + 1);
  const sourceConflict = async (job: Job): Promise<string | undefined> => {
    const mine = folderOf(job.c.images.flair);
    const refuse = (other: string, why: string) =>
      `case "${job.case}" of ${mine} is refused: ${why} from ${other}, and outputs are keyed by ` +
      `case id alone; remove ${joinUri(options.out, job.case + ".json")} (and its outputs) to ` +
      `segment this folder's case instead`;
    for (const other of active) {
      if (other !== job && other.case === job.case && folderOf(other.c.images.flair) !== mine) {
        return refuse(folderOf(other.c.images.flair), "the same case id is being segmented");
      }
    }
    let record: { images?: { flair?: unknown } } | undefined;
    try {
      record = JSON.parse(
        new TextDecoder().decode(await getObject(joinUri(options.out, `${job.case}.json`))),
      );
    } catch (e) {
      if (e instanceof ObjectNotFoundError || e instanceof SyntaxError) return undefined;
      throw e;
    }
    const flair = record?.images?.flair;
    if (typeof flair === "string" && folderOf(flair) !== mine) {
      return refuse(folderOf(flair), `${Segmenter.outputUri(options.out, job.case)} was segmented`);
    }
    return undefined;
  };

  const runJob = async (job: Job) => {
    job.status = "running";
    job.started = new Date().toISOString();
    job.attempts++;
    log({ event: "job", id: job.id, status: "running", case: job.case, attempt: job.attempts });
    const errorUri = joinUri(options.out, `${job.case}.error.json`);
    active.add(job);
    try {
      const conflict = await sourceConflict(job);
      if (conflict) throw new CaseFailure(conflict, false);
      const r = await runner.segment(job.id, job.c, options.out, caseOptions);
      // A success supersedes an earlier failure's record; gone before the job shows as finished.
      await deleteObject(errorUri).catch(() => {});
      job.outputs = [r.output, ...(r.metrics ? [r.metrics] : [])];
      job.seconds = r.seconds;
      job.status = r.status;
    } catch (e) {
      // The job turns "failed" only once its error record is written: GET /jobs/<id> never shows
      // a failure without the record it names.
      let error = aborting ? "abandoned at shutdown" : describeError(e);
      if (!aborting && isTransientFailure(e)) {
        if (scheduleRetry(job, error)) return void active.delete(job);
        const spent = Math.round((Date.now() - (job.firstFailure ?? Date.now())) / 1000);
        error += ` (transient; gave up after ${job.attempts} attempts over ${spent} s)`;
      }
      let outputs: string[] = [];
      if (!aborting) {
        const record = {
          case: job.case,
          caseUri: job.caseUri,
          inputs: job.c.images,
          model: options.model,
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
    }
    active.delete(job);
    job.finished = new Date().toISOString();
    counts[job.status as keyof typeof counts]++;
    log({
      event: "job",
      id: job.id,
      status: job.status,
      case: job.case,
      ...(job.seconds !== undefined ? { seconds: Math.round(job.seconds * 1000) / 1000 } : {}),
      ...(job.outputs.length ? { outputs: job.outputs } : {}),
      ...(job.error ? { error: job.error } : {}),
    });
  };

  const authorized = (req: Request): boolean => {
    if (!tokenDigest) return true;
    const presented = presentedToken(req);
    // Digests have one length, so the comparison's time says nothing about the token.
    return presented !== undefined && timingSafeEqual(sha256(presented), tokenDigest);
  };
  const unauthorized = () =>
    json(401, { error: "missing or wrong bearer token" }, { "www-authenticate": "Bearer" });
  const busy = (why: string) => json(503, { error: why }, { "retry-after": "5" });

  const handleEvent = async (req: Request): Promise<Response> => {
    if (draining) return busy("shutting down: not accepting events");
    const body = await readBody(req, maxBody);
    if (body === undefined) {
      return json(413, { error: `request body larger than ${maxBody} bytes` });
    }
    let event;
    try {
      event = parseS3Event(body);
    } catch (e) {
      if (!(e instanceof MalformedEventError)) throw e;
      const status = e instanceof TooManyRecordsError ? 413 : 400;
      log({ event: "rejected", status, error: e.message });
      return json(status, { error: e.message });
    }
    if (event.kind === "test") {
      log({ event: "test_event", bucket: event.bucket });
      return json(200, { status: "test" });
    }
    if (event.kind === "subscription") {
      return json(200, { status: "subscription", confirmed: await confirm(event) });
    }

    const ignored: IgnoredRecord[] = [];
    const duplicates: { key: string; jobs: string[] }[] = [];
    const groups = new Map<string, CaseTarget[]>();
    const claimed: string[] = [];
    for (const record of event.records) {
      const t = triageRecord(record, filter);
      if (!("id" in t)) {
        ignored.push(t);
        continue;
      }
      const prior = seen.get(record.dedupeKey);
      // At-least-once delivery: a redelivered record whose jobs all failed is run again.
      const failedBefore = prior?.status === "done" && prior.jobs.length > 0 &&
        prior.jobs.every((j) => j.status === "failed");
      if (prior && !failedBefore) {
        duplicates.push({
          key: record.uri,
          jobs: prior.status === "done" ? prior.jobs.map((j) => j.id) : [],
        });
        continue;
      }
      // Claimed before listing, so a redelivery arriving meanwhile is a duplicate too.
      remember(record.dedupeKey, { status: "pending" });
      claimed.push(record.dedupeKey);
      const k = caseKeyOf(t);
      groups.set(k, [...(groups.get(k) ?? []), t]);
    }
    const unclaim = () => claimed.forEach((k) => seen.delete(k));

    let resolved: [string, CaseTarget[], CaseResolution][];
    try {
      // Each folder listed once, however many of its cases the event names.
      const entries = [...groups];
      const rs = await resolveCases(entries.map(([, ts]) => ts[0]));
      resolved = entries.map(([k, ts], i) => [k, ts, rs[i]]);
    } catch (e) {
      unclaim();
      const error = describeError(e);
      log({ event: "rejected", status: 502, error });
      return json(502, { error: `cannot list the case's folder: ${error}` });
    }
    if (draining) {
      unclaim();
      return busy("shutting down: not accepting events");
    }
    const newJobs = resolved.filter(([k, , r]) => r.status === "ready" && !queuedByCase.has(k));
    const free = options.concurrency - running + options.queue - queue.length - retrying.size;
    if (newJobs.length > free) {
      unclaim();
      log({ event: "rejected", status: 503, error: "queue full" });
      return busy(`queue full (${queue.length} queued, ${running} running)`);
    }

    const accepted: { id: string; case: string; status: JobStatus }[] = [];
    const waiting: { key: string; case: string; reason: string }[] = [];
    for (const [k, targets, r] of resolved) {
      const uris = targets.map((t) => t.record.uri);
      const { id: caseId, folder } = targets[0];
      let jobRefs: Job[] = [];
      if (r.status === "ready") {
        let job = queuedByCase.get(k);
        if (!job) {
          job = {
            id: crypto.randomUUID(),
            status: "queued",
            case: caseId,
            caseUri: folder,
            trigger: [],
            outputs: [],
            created: new Date().toISOString(),
            c: r.case,
            key: k,
            attempts: 0,
          };
          jobs.set(job.id, job);
          queue.push(job);
          queuedByCase.set(k, job);
        }
        job.trigger.push(...uris);
        accepted.push({ id: job.id, case: caseId, status: job.status });
        jobRefs = [job];
      } else if (r.status === "waiting") {
        for (const key of uris) waiting.push({ key, case: caseId, reason: r.reason });
      } else {
        for (const key of uris) ignored.push({ key, reason: r.reason });
      }
      for (const t of targets) {
        remember(t.record.dedupeKey, { status: "done", jobs: jobRefs, result: r.status });
      }
    }
    pump();
    const status = accepted.length > 0
      ? "queued"
      : waiting.length > 0
      ? "waiting"
      : duplicates.length > 0
      ? "duplicate"
      : "ignored";
    log({
      event: "event",
      status,
      jobs: accepted.map((j) => j.id),
      cases: [...new Set([...accepted, ...waiting].map((j) => j.case))],
      records: event.records.length,
      ...(ignored.length ? { ignored } : {}),
      ...(duplicates.length ? { duplicates: duplicates.length } : {}),
    });
    return json(status === "queued" || status === "waiting" ? 202 : 200, {
      status,
      ...(accepted.length ? { id: accepted[0].id } : {}),
      jobs: accepted,
      waiting,
      ignored,
      duplicates,
    });
  };

  const confirm = async (
    event: { type: string; topicArn?: string; subscribeUrl?: string },
  ): Promise<boolean> => {
    let url: URL | undefined;
    try {
      url = event.subscribeUrl ? new URL(event.subscribeUrl) : undefined;
    } catch {
      url = undefined;
    }
    // The URL carries a confirmation token: follow it only to SNS, and never log it.
    const ok = url?.protocol === "https:" && SNS_HOST.test(url.hostname) &&
      event.type === "SubscriptionConfirmation";
    let confirmed = false;
    if (ok) {
      try {
        const res = await fetch(url!, { signal: AbortSignal.timeout(10_000) });
        await res.body?.cancel();
        confirmed = res.ok;
      } catch {
        confirmed = false;
      }
    }
    log({ event: "sns_subscription", type: event.type, topic: event.topicArn, confirmed });
    return confirmed;
  };

  const handle = async (req: Request): Promise<Response> => {
    const path = new URL(req.url).pathname.replace(/\/+$/, "") || "/";
    if (path === "/healthz") {
      if (req.method !== "GET" && req.method !== "HEAD") return json(405, { error: "use GET" });
      return json(draining ? 503 : 200, {
        status: draining ? "draining" : "ok",
        queued: queue.length + retrying.size,
        running,
        ...counts,
        backend: runner.backend,
        uptime: Math.round((Date.now() - started) / 1000),
      });
    }
    if (path === "/" || path === "/events") {
      if (req.method !== "POST") return json(405, { error: "POST an S3 event notification" });
      if (!authorized(req)) return (await req.body?.cancel(), unauthorized());
      return await handleEvent(req);
    }
    if (path === "/jobs" || path.startsWith("/jobs/")) {
      if (req.method !== "GET") return json(405, { error: "use GET" });
      if (!authorized(req)) return unauthorized();
      if (path === "/jobs") return json(200, { jobs: [...jobs.values()].map(view).reverse() });
      const job = jobs.get(decodeURIComponent(path.slice("/jobs/".length)));
      return job ? json(200, view(job)) : json(404, { error: "no such job (or it was forgotten)" });
    }
    return json(404, { error: "not found: POST / (events), GET /healthz, GET /jobs/<id>" });
  };

  let listening!: (addr: Deno.NetAddr) => void;
  const addr = new Promise<Deno.NetAddr>((r) => listening = r);
  const server = Deno.serve({
    hostname: options.hostname,
    port: options.port,
    onListen: (a) => listening(a as Deno.NetAddr),
  }, async (req) => {
    try {
      return await handle(req);
    } catch (e) {
      const error = describeError(e);
      log({ event: "error", error });
      return json(500, { error });
    }
  });
  const { hostname, port } = await addr;
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  const url = `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`;
  log({ event: "listening", url, hostname, port, auth: tokenDigest !== undefined });

  let closing: Promise<void> | undefined;
  const close = () =>
    closing ??= (async () => {
      await server.shutdown();
      runner.close();
      log({ event: "stopped" });
    })();
  return {
    url,
    port,
    closed: server.finished.then(() => closing),
    drain: async () => {
      if (!draining) {
        draining = true;
        log({ event: "draining", queued: queue.length, running });
      }
      if (running > 0 || queue.length > 0 || retrying.size > 0) {
        await new Promise<void>((r) => idleWaiters.push(r));
      }
      await close();
    },
    abort: async () => {
      draining = true;
      aborting = true;
      for (const [job, timer] of retrying) {
        clearTimeout(timer);
        queue.push(job);
      }
      retrying.clear();
      for (const job of queue.splice(0)) {
        job.status = "failed";
        job.error = "dropped at shutdown before it started";
      }
      log({ event: "aborting", running });
      runner.close();
      await close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The command

export const serveCommand: Command = {
  name: "serve",
  summary: "Segment cases as S3 event notifications announce their inputs (an HTTP service)",
  help: `Usage: deno task serve --model <uri> --out <uri> [options]

An HTTP service for S3 event notifications. POST an event (Amazon S3 via an SNS HTTPS subscription,
a MinIO webhook, EventBridge, or the plain {"Records": [...]} JSON) to / or /events: for each new
BraTS case file, the case's folder is listed, and once all four modalities are there the case is
segmented into <out>/<case>.nii.gz (as \`segment\` does, on worker threads with the model loaded
once); a case whose folder holds its reference segmentation (the seg file) is also scored against
it into <out>/<case>.metrics.json (Dice, HD95, sensitivity, specificity of ET, TC and WT; a seg
file arriving later starts the case again, and its metrics appear then). Answers 202
{"status":"queued","id":"<job>"} or 202 {"status":"waiting"} (a modality is still missing; its own
event will start the case), 200 for ignored or duplicate records, 400 for a malformed event, 401
without the token, 413 for a body over --max-body or an event of more than
${MAX_EVENT_RECORDS} records (S3 sends one per event; each folder is listed once per event), 503
when the queue is full or the service is shutting down.

Events for objects under --out, for files that are not case inputs, and for object versions already
done, queued or running are ignored, so outputs can never trigger the service (a version whose job
failed is run again when redelivered). A case failing for a transient reason (S3 unreachable,
throttling, 5xx) is retried with backoff while the next attempt starts within 60 s of the first
failure. A case id segmented from another input folder is refused (outputs are keyed by case id).
A failing case is recorded in <out>/<case>.error.json and GET /jobs/<id>; the service goes on.
SIGTERM or SIGINT stops accepting events, finishes the queued and running cases, and exits 0; a
second signal abandons them (outputs are written whole or not at all) and exits 0.

Endpoints:
  POST /  or /events      an S3 event notification (JSON)
  GET  /healthz           {"status":"ok",...} (503 while shutting down; no token needed)
  GET  /jobs/<id>         status queued|running|done|failed|skipped, case, outputs (segmentation,
                          metrics), error
  GET  /jobs              recent jobs, newest first

Options:
  --model <uri>         trained model: run folder, best/, checkpoint folder or file (required)
  --out <uri>           output folder or s3:// prefix (required)
  --input <uri>         accept only objects under this s3:// prefix (default: any)
  --port <n>            port to listen on (default 8080; 0 picks a free one)
  --host <host>         address to listen on (default 0.0.0.0)
  --concurrency <n>     cases segmented at once, one worker (and model copy) each (default 1)
  --queue <n>           jobs waiting beyond the running ones before events get 503 (default 64)
  --token-env <name>    environment variable holding the bearer token (default ${DEFAULT_TOKEN_ENV});
                        clients send "Authorization: Bearer <token>" (or basic auth with the token
                        as password, as SNS does for https://user:<token>@host/ endpoints)
  --no-auth             accept requests without a token (required when the variable is unset)
  --max-body <bytes>    largest request body (default ${DEFAULT_MAX_BODY})
  --overlap <x>         window overlap in ${OVERLAP_RANGE} (default 0.5)
  --tta                 average the 8 mirrorings
  --batch <n>           windows per forward pass (default 1)
  --backend <backend>   auto|tensorflow|webgpu|wasm|cpu (default cpu)
  --in-process          segment on the service's thread instead of a worker (for a backend that
                        cannot load in a worker; the service stops answering while it segments)
  --quiet               no log lines (JSON, one per line, on stdout otherwise)

Examples:
  REVUNET_TOKEN=$(openssl rand -hex 32) deno task serve --model s3://models/run1/best \\
    --out s3://brats/segmentations/ --input s3://brats/incoming/ --backend tensorflow
  curl -H "Authorization: Bearer $REVUNET_TOKEN" -d @event.json http://127.0.0.1:8080/
See deploy/README.md for wiring S3 (SNS) or MinIO (mc event add) to the service.`,
  async run(args) {
    const { values } = parseFlags("serve", args, {
      model: { type: "string" },
      out: { type: "string" },
      input: { type: "string" },
      port: { type: "string" },
      host: { type: "string" },
      concurrency: { type: "string" },
      queue: { type: "string" },
      "token-env": { type: "string" },
      "no-auth": { type: "boolean" },
      "max-body": { type: "string" },
      overlap: { type: "string" },
      tta: { type: "boolean" },
      batch: { type: "string" },
      backend: { type: "string" },
      "in-process": { type: "boolean" },
      quiet: { type: "boolean" },
    });
    for (const f of ["model", "out"] as const) {
      if (!values[f]) throw new UsageError(`--${f} is required`);
    }
    if (values["no-auth"] && values["token-env"] !== undefined) {
      throw new UsageError("--no-auth and --token-env contradict each other: give one");
    }
    if (values.input !== undefined && !values.input.toLowerCase().startsWith("s3://")) {
      throw new UsageError(`--input must be an s3:// prefix, got "${values.input}"`);
    }
    const tokenEnv = values["token-env"] ?? DEFAULT_TOKEN_ENV;
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(tokenEnv)) {
      throw new UsageError(`--token-env must be an environment variable name, got "${tokenEnv}"`);
    }
    let token: string | undefined;
    if (!values["no-auth"]) {
      token = Deno.env.get(tokenEnv);
      if (token === undefined || token === "") {
        throw new UsageError(
          `the bearer token variable ${tokenEnv} is not set: set it (e.g. to \`openssl rand -hex ` +
            `32\`), name another with --token-env, or pass --no-auth to accept anyone`,
        );
      }
    }
    const concurrency = intFlag("concurrency", values.concurrency, 1, 1, 64);
    const settings = {
      out: values.out!,
      ...(values.input !== undefined ? { input: values.input } : {}),
      model: values.model!,
      hostname: values.host ?? "0.0.0.0",
      port: intFlag("port", values.port, 8080, 0, 65535),
      concurrency,
      queue: intFlag("queue", values.queue, 64, 0, 100_000),
      token,
      maxBodyBytes: intFlag("max-body", values["max-body"], DEFAULT_MAX_BODY, 1024, 1 << 30),
      caseOptions: {
        overlap: numberFlag("overlap", values.overlap, 0.5, 0, MAX_OVERLAP),
        tta: values.tta ?? false,
        batch: intFlag("batch", values.batch, 1, 1, 64),
      },
    };
    const backend = backendFlag(values.backend);
    if (values["in-process"] && concurrency > 1) {
      throw new UsageError("--in-process segments one case at a time: drop --concurrency");
    }
    // A run folder, best/, a checkpoint folder or the file: resolved once, after the flags are
    // checked and before any worker loads it.
    const model = await resolveModel(settings.model);
    settings.model = model.uri;
    const log = values.quiet
      ? () => {}
      : (entry: Record<string, unknown>) => printJson({ time: new Date().toISOString(), ...entry });

    log({
      event: "loading",
      model: settings.model,
      ...(model.note ? { note: model.note } : {}),
      backend,
      workers: values["in-process"] ? 0 : concurrency,
    });
    const pool: CaseRunner = values["in-process"]
      ? await InProcessRunner.load(settings.model, backend)
      : await WorkerPool.start(settings.model, backend, concurrency, log);
    let service: EventService;
    try {
      service = await startEventService({ ...settings, log }, pool);
    } catch (e) {
      pool.close();
      throw e;
    }
    let signals = 0;
    const onSignal = (name: string) => () => {
      signals++;
      log({ event: "signal", signal: name });
      if (signals === 1) service.drain();
      else service.abort();
    };
    const listeners = (["SIGTERM", "SIGINT"] as const).map((sig) => {
      const handler = onSignal(sig);
      Deno.addSignalListener(sig, handler);
      return [sig, handler] as const;
    });
    try {
      await service.closed;
    } finally {
      for (const [sig, handler] of listeners) Deno.removeSignalListener(sig, handler);
    }
  },
};
