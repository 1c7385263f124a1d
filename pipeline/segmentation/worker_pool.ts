/**
 * Worker threads for the service, each holding the model, running one case at a time.
 *
 * Segmentation runs tfjs synchronously for seconds to minutes; in the service's own thread that
 * would stall every HTTP request (health checks, events) until it finished. A worker keeps the
 * service answering; one that crashes fails its case and is replaced.
 * @module
 */
import type { BackendName } from "../../model/mod.ts";
import type { Case } from "../cases/mod.ts";
import {
  CaseFailure,
  type CaseRunner,
  describeError,
  type RunOutcome,
  type WorkerReply,
  type WorkerRequest,
} from "./runner.ts";
import type { CaseOptions } from "./segmenter.ts";

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

function spawnWorker(
  model: string,
  backend: BackendName,
): Promise<{ slot: Slot; backend: string }> {
  const worker = new Worker(new URL("./serve_worker.ts", import.meta.url), { type: "module" });
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
