/**
 * One segmentation worker of `serve` (see worker_pool.ts): loads the model once, then segments the
 * cases it is sent.
 *
 * Messages in: `{ type: "load", model, backend }`, then `{ type: "segment", job, case, out,
 * options }`. Messages out: `{ type: "loaded", backend, model }` or `{ type: "error", error }`;
 * `{ type: "result", job, outcome }` or `{ type: "failed", job, error, transient }`.
 * @module
 */
import { isTransientS3Error } from "../storage/mod.ts";
import { describeError, runOutcome, type WorkerReply, type WorkerRequest } from "./runner.ts";
import { Segmenter } from "./segmenter.ts";

interface WorkerScope {
  onmessage: ((e: MessageEvent<WorkerRequest>) => void) | null;
  postMessage(message: WorkerReply): void;
}

const scope = globalThis as unknown as WorkerScope;
let segmenter: Segmenter | undefined;

scope.onmessage = async (e) => {
  const msg = e.data;
  if (msg.type === "load") {
    try {
      segmenter = await Segmenter.load(msg.model, { backend: msg.backend });
      scope.postMessage({ type: "loaded", backend: segmenter.backend, model: segmenter.modelUri });
    } catch (err) {
      scope.postMessage({ type: "error", error: describeError(err) });
    }
    return;
  }
  try {
    if (!segmenter) throw new Error("the worker has no model loaded");
    const outcome = runOutcome(await segmenter.segmentCase(msg.case, msg.out, msg.options));
    scope.postMessage({ type: "result", job: msg.job, outcome });
  } catch (err) {
    scope.postMessage({
      type: "failed",
      job: msg.job,
      error: describeError(err),
      transient: isTransientS3Error(err),
    });
  }
};
