/**
 * What runs a case for the service: the {@linkcode CaseRunner} shape, the messages between the
 * service and its worker threads, and the runner on the service's own thread.
 * @module
 */
import type { BackendName } from "../../model/mod.ts";
import type { Case } from "../cases/mod.ts";
import { isTransientS3Error } from "../storage/mod.ts";
import { type CaseOptions, type CaseOutcome, Segmenter } from "./segmenter.ts";

/** What the service sends a worker (serve_worker.ts). */
export type WorkerRequest =
  | { type: "load"; model: string; backend: BackendName }
  | { type: "segment"; job: string; case: Case; out: string; options: CaseOptions };

/** The outcome of one case, as the service needs it: a {@linkcode CaseOutcome} less its label counts. */
export type RunOutcome = Omit<CaseOutcome, "labels">;

/** The part of a case's outcome that crosses to the service (no label counts). */
export function runOutcome(o: RunOutcome): RunOutcome {
  return {
    id: o.id,
    status: o.status,
    output: o.output,
    ...(o.metrics ? { metrics: o.metrics } : {}),
    ...(o.probabilities ? { probabilities: o.probabilities } : {}),
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

/** Segments cases for the service: worker threads (`WorkerPool`), or a fake in tests. */
export interface CaseRunner {
  /** Segments one case into `out`; throws naming the file and problem. */
  segment(job: string, c: Case, out: string, options: CaseOptions): Promise<RunOutcome>;
  /** Stops every worker; cases in flight fail as abandoned. */
  close(): void;
  /** The backend the model runs on, for /healthz. */
  readonly backend: string;
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
    return new InProcessRunner(await Segmenter.load(model, { backend }));
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
