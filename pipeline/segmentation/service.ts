/**
 * The event service behind `serve`: an HTTP server that segments a case (BraTS-named, or of an
 * nnU-Net v2 or MSD dataset, see events.ts) when an S3 event says its last input arrived.
 *
 * POST an S3 event notification (Amazon S3 through SNS, MinIO's webhook, EventBridge, or the plain
 * `Records` JSON; see events.ts) to `/` or `/events`. Each record is triaged without I/O,
 * de-duplicated by object version, and its case's folder listed (intake.ts): a complete case is
 * queued (202, a job id), an incomplete one is left for the event of its last modality (202,
 * "waiting"), one its folder holds in a form that cannot be segmented (two files for one modality)
 * is a failed job with its error record (200, "failed"). Jobs (jobs.ts) run on a {@linkcode CaseRunner}, worker threads each with the model
 * loaded once (worker_pool.ts), so the service keeps answering while a case is segmented.
 *
 * Delivery is at least once: a record already seen changes nothing unless its job failed, a
 * queued job absorbs further events for its case, and a case already done with the same model and
 * inputs is skipped. A failing case becomes a failed job and `<out>/<case>.error.json`.
 * @module
 */
import type { DatasetDescription } from "../cases/mod.ts";
import { MalformedEventError, parseS3Event, TooManyRecordsError } from "./s3_event.ts";
import { confirmSubscription, json, readBody, tokenCheck, unauthorized } from "./http.ts";
import { admitRecords, busy, type IntakeContext, type Reply, SeenRecords } from "./intake.ts";
import { jobView, RETRY_BASE_MS, RETRY_BUDGET_MS } from "./job.ts";
import { JobBoard } from "./jobs.ts";
import { type CaseRunner, describeError } from "./runner.ts";
import type { CaseOptions } from "./segmenter.ts";

/** Largest request body accepted (S3 sends about 1 KiB per record). */
export const DEFAULT_MAX_BODY = 1024 * 1024;

/** Options of {@linkcode startEventService}. */
export interface ServiceOptions {
  /** Output folder or `s3://` prefix; events for objects under it are ignored. */
  out: string;
  /** Accept only objects under this `s3://` prefix. @default any */
  input?: string;
  /** The model's URI, recorded in error records and /healthz. */
  model: string;
  /**
   * The model's dataset description (its file's metadata): the channels that complete an nnU-Net
   * or MSD case. @default a BraTS model's four modalities
   */
  dataset?: DatasetDescription;
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
  /** Options of each case's segmentation. @default {} */
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

function reply(r: Reply): Response {
  return json(r.status, r.body, r.headers);
}

/** The state one service shares between its requests. */
interface State extends IntakeContext {
  runner: CaseRunner;
  maxBody: number;
  started: number;
  authorized: (req: Request) => boolean;
  isDraining: boolean;
}

/** POST / or /events: an S3 event notification. */
async function handleEvent(req: Request, s: State): Promise<Response> {
  if (s.isDraining) return reply(busy("shutting down: not accepting events"));
  const body = await readBody(req, s.maxBody);
  if (body === undefined) {
    return json(413, { error: `request body larger than ${s.maxBody} bytes` });
  }
  let event;
  try {
    event = parseS3Event(body);
  } catch (e) {
    if (!(e instanceof MalformedEventError)) throw e;
    const status = e instanceof TooManyRecordsError ? 413 : 400;
    s.log({ event: "rejected", status, error: e.message });
    return json(status, { error: e.message });
  }
  if (event.kind === "test") {
    s.log({ event: "test_event", bucket: event.bucket });
    return json(200, { status: "test" });
  }
  if (event.kind === "subscription") {
    const confirmed = await confirmSubscription(event);
    s.log({ event: "sns_subscription", type: event.type, topic: event.topicArn, confirmed });
    return json(200, { status: "subscription", confirmed });
  }
  return reply(await admitRecords(event.records, s));
}

/** Routes one request: /healthz, events, jobs. */
async function handle(req: Request, s: State): Promise<Response> {
  const path = new URL(req.url).pathname.replace(/\/+$/, "") || "/";
  const board = s.board;
  if (path === "/healthz") {
    if (req.method !== "GET" && req.method !== "HEAD") return json(405, { error: "use GET" });
    return json(s.isDraining ? 503 : 200, {
      status: s.isDraining ? "draining" : "ok",
      queued: board.waiting,
      running: board.running,
      ...board.counts,
      backend: s.runner.backend,
      uptime: Math.round((Date.now() - s.started) / 1000),
    });
  }
  if (path === "/" || path === "/events") {
    if (req.method !== "POST") return json(405, { error: "POST an S3 event notification" });
    if (!s.authorized(req)) return (await req.body?.cancel(), unauthorized());
    return await handleEvent(req, s);
  }
  if (path === "/jobs" || path.startsWith("/jobs/")) {
    if (req.method !== "GET") return json(405, { error: "use GET" });
    if (!s.authorized(req)) return unauthorized();
    if (path === "/jobs") {
      return json(200, { jobs: [...board.jobs.values()].map(jobView).reverse() });
    }
    const job = board.jobs.get(decodeURIComponent(path.slice("/jobs/".length)));
    return job
      ? json(200, jobView(job))
      : json(404, { error: "no such job (or it was forgotten)" });
  }
  return json(404, { error: "not found: POST / (events), GET /healthz, GET /jobs/<id>" });
}

/** The state of a new service. */
function newState(options: ServiceOptions, runner: CaseRunner): State {
  const log = options.log ?? (() => {});
  const board = new JobBoard(runner, {
    out: options.out,
    model: options.model,
    concurrency: options.concurrency,
    caseOptions: options.caseOptions ?? {},
    retry: {
      budgetMs: options.retry?.budgetMs ?? RETRY_BUDGET_MS,
      baseDelayMs: options.retry?.baseDelayMs ?? RETRY_BASE_MS,
    },
    log,
  });
  const s: State = {
    board,
    seen: new SeenRecords(),
    filter: {
      out: options.out,
      input: options.input,
      ...(options.dataset ? { dataset: options.dataset } : {}),
    },
    queue: options.queue,
    concurrency: options.concurrency,
    draining: () => s.isDraining,
    log,
    runner,
    maxBody: options.maxBodyBytes ?? DEFAULT_MAX_BODY,
    started: Date.now(),
    authorized: tokenCheck(options.token),
    isDraining: false,
  };
  return s;
}

/**
 * Starts the service on `options.hostname:port`, segmenting through `runner`.
 * @returns once it listens
 */
export async function startEventService(
  options: ServiceOptions,
  runner: CaseRunner,
): Promise<EventService> {
  const s = newState(options, runner);
  const log = s.log;
  let listening!: (addr: Deno.NetAddr) => void;
  const addr = new Promise<Deno.NetAddr>((r) => listening = r);
  const server = Deno.serve({
    hostname: options.hostname,
    port: options.port,
    onListen: (a) => listening(a as Deno.NetAddr),
  }, async (req) => {
    try {
      return await handle(req, s);
    } catch (e) {
      const error = describeError(e);
      log({ event: "error", error });
      return json(500, { error });
    }
  });
  const { hostname, port } = await addr;
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  const url = `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`;
  log({ event: "listening", url, hostname, port, auth: options.token !== undefined });

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
      if (!s.isDraining) {
        s.isDraining = true;
        log({ event: "draining", queued: s.board.queue.length, running: s.board.running });
      }
      await s.board.idle();
      await close();
    },
    abort: async () => {
      s.isDraining = true;
      s.board.abort();
      log({ event: "aborting", running: s.board.running });
      runner.close();
      await close();
    },
  };
}
