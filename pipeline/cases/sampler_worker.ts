/**
 * Worker side of {@linkcode BatchPrefetcher}: receives the shared cases (or the local cache
 * entries of streamed cases) once, then makes the batch of each step it is asked for and sends it
 * back, transferring its buffers.
 * @module
 */
/// <reference lib="deno.worker" />
import { StreamedCases } from "./case_cache.ts";
import { batchForStep, type PrefetchOptions } from "./prefetch.ts";
import type { Cases } from "./sampling.ts";

let cases: Cases = [];
let options: PrefetchOptions | undefined;

self.onmessage = (e: MessageEvent) => {
  const msg = e.data;
  if (msg.kind === "init") {
    // Streamed: this worker's own reader, holding its own few most recently used cases.
    cases = msg.stream
      ? new StreamedCases(msg.stream.entries, { capacity: msg.stream.capacity })
      : msg.cases;
    options = msg.options;
    return;
  }
  if (msg.kind === "sample" && options) {
    try {
      const batch = batchForStep(cases, options, msg.step);
      self.postMessage({ step: msg.step, batch }, [
        batch.image.buffer as ArrayBuffer,
        batch.target.buffer as ArrayBuffer,
      ]);
    } catch (err) {
      self.postMessage({ step: msg.step, error: (err as Error).message });
    }
  }
};
