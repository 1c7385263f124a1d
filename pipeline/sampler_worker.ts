/**
 * Worker side of {@linkcode BatchPrefetcher}: receives the shared cases once, then makes the batch
 * of each step it is asked for and sends it back, transferring its buffers.
 * @module
 */
/// <reference lib="deno.worker" />
import type { PreprocessedCase } from "./preprocess.ts";
import { batchForStep, type PrefetchOptions } from "./prefetch.ts";

let cases: PreprocessedCase[] = [];
let options: PrefetchOptions | undefined;

self.onmessage = (e: MessageEvent) => {
  const msg = e.data;
  if (msg.kind === "init") {
    cases = msg.cases;
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
