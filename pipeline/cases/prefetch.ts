/**
 * Batches prepared ahead of the training step, in worker threads, so the accelerator does not wait
 * on cropping and augmentation. The cases are placed in shared memory once and every worker reads
 * them without copying; cases already in shared memory (`loadPreprocessed` with `shared: true`)
 * are used where they are, so the caller and the workers hold one copy between them. Batch `k` is
 * drawn from a generator seeded by (seed, k) alone, so what a step gets does not depend on how many
 * workers there are, how far ahead they run, or whether the run was resumed: with 0 workers the same
 * batches are made on the main thread.
 *
 * Cases too many for memory come as {@linkcode StreamedCases}: each worker (or the calling thread)
 * then reads the drawn cases from their local cache entries, keeping its own few most recently
 * used, and makes the same batches as from cases in memory.
 * @module
 */
import { sharedCase, StreamedCases } from "./case_cache.ts";
import type { PreprocessedCase } from "./preprocess.ts";
import { streamRandom } from "./random.ts";
import { type Batch, type Cases, sampleBatch, type SamplingOptions } from "./sampling.ts";

/** Options of {@linkcode BatchPrefetcher}. */
export interface PrefetchOptions {
  batch: number;
  sampling: SamplingOptions;
  seed: number;
  /** Worker threads; 0 samples on the calling thread when a batch is asked for. Default 1. */
  workers?: number;
  /** Batches prepared ahead of the one asked for. Default 2. */
  depth?: number;
}

/** The generator stream training batches are drawn from (others: 0 initialisation). */
export const SAMPLING_STREAM = 1;

/** The batch of step `step`, made on the calling thread. */
export function batchForStep(
  cases: Cases,
  options: PrefetchOptions,
  step: number,
): Batch {
  return sampleBatch(
    cases,
    options.batch,
    options.sampling,
    streamRandom(options.seed, step, SAMPLING_STREAM),
  );
}

/** Hands out the batch of each step, prepared ahead. Call {@linkcode close} when done. */
export class BatchPrefetcher {
  readonly #cases: Cases;
  readonly #options: PrefetchOptions;
  readonly #workers: Worker[] = [];
  readonly #pending = new Map<
    number,
    { promise: Promise<Batch>; resolve: (b: Batch) => void; reject: (e: Error) => void }
  >();
  /** Entries handed out by next() whose batch has not arrived yet. */
  readonly #handedOut = new Map<
    number,
    { resolve: (b: Batch) => void; reject: (e: Error) => void }
  >();
  #failure?: Error;

  /**
   * @param cases in memory, or streamed from local disk (each worker then reads with its own
   * `StreamedCases` of the same entries and capacity)
   */
  constructor(cases: PreprocessedCase[] | StreamedCases, options: PrefetchOptions) {
    this.#options = options;
    const workers = options.workers ?? 1;
    this.#cases = cases instanceof StreamedCases || workers === 0 ? cases : cases.map(sharedCase);
    for (let i = 0; i < workers; i++) {
      const w = new Worker(new URL("./sampler_worker.ts", import.meta.url).href, {
        type: "module",
      });
      w.onmessage = (e: MessageEvent) => {
        const { step, batch, error } = e.data;
        const p = this.#pending.get(step) ?? this.#handedOut.get(step);
        this.#handedOut.delete(step);
        if (!p) return;
        if (error) p.reject(new Error(`sampler worker, step ${step}: ${error}`));
        else p.resolve(batch as Batch);
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.#fail(new Error(`sampler worker failed: ${e.message}`));
      };
      w.postMessage(
        cases instanceof StreamedCases
          ? {
            kind: "init",
            stream: { entries: cases.entries, capacity: cases.capacity },
            options: this.#options,
          }
          : { kind: "init", cases: this.#cases, options: this.#options },
      );
      this.#workers.push(w);
    }
  }

  #fail(error: Error) {
    this.#failure = error;
    for (const p of [...this.#pending.values(), ...this.#handedOut.values()]) p.reject(error);
  }

  #request(step: number) {
    if (this.#pending.has(step)) return;
    let resolve!: (b: Batch) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<Batch>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {}); // surfaced by next(); avoid unhandled rejections of prefetched steps
    this.#pending.set(step, { promise, resolve, reject });
    if (this.#failure) return reject(this.#failure);
    if (this.#workers.length === 0) {
      try {
        resolve(batchForStep(this.#cases, this.#options, step));
      } catch (e) {
        reject(e as Error);
      }
      return;
    }
    this.#workers[step % this.#workers.length].postMessage({ kind: "sample", step });
  }

  /** The batch of `step`; also asks for the next `depth` steps. */
  next(step: number): Promise<Batch> {
    this.#request(step);
    if (this.#workers.length > 0) {
      for (let k = 1; k <= (this.#options.depth ?? 2); k++) this.#request(step + k);
    }
    const p = this.#pending.get(step)!;
    this.#pending.delete(step);
    if (this.#workers.length > 0) this.#handedOut.set(step, p);
    return p.promise;
  }

  /** Stops the workers; pending batches are dropped. */
  close(): void {
    for (const w of this.#workers) w.terminate();
    this.#workers.length = 0;
    this.#pending.clear();
    this.#handedOut.clear();
  }
}
