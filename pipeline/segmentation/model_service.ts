/**
 * The service `serve` starts: a trained model resolved once and loaded into its runners (worker
 * threads, or the service's own thread), and the event service on top of them.
 * @module
 */
import type { BackendName } from "../../model/mod.ts";
import { readModelDataset, resolveModel } from "../training/mod.ts";
import { type CaseRunner, InProcessRunner } from "./runner.ts";
import { type EventService, type ServiceOptions, startEventService } from "./service.ts";
import { WorkerPool } from "./worker_pool.ts";

/** Options of {@linkcode startModelService}: the service's, with where and how the model runs. */
export interface ModelServiceOptions extends ServiceOptions {
  /**
   * The trained model: a run folder, `best/`, a checkpoint folder or the `.safetensors` file
   * (resolved once, before any runner loads it; the service records the resolved file).
   */
  model: string;
  /** The backend each runner loads the model on. */
  backend: BackendName;
  /**
   * Segment on the service's thread instead of `concurrency` worker threads (for a backend that
   * cannot load in a worker; one case at a time). @default false
   */
  inProcess?: boolean;
}

/**
 * Resolves the model, logs `{event: "loading", ...}`, loads the runners and starts the event
 * service on them; the runners are closed when the service fails to start.
 * @throws {Error} naming the model location when it holds no model, or the service's own error
 */
export async function startModelService(o: ModelServiceOptions): Promise<EventService> {
  const { backend, inProcess = false, ...service } = o;
  const model = await resolveModel(o.model);
  const log = o.log ?? (() => {});
  log({
    event: "loading",
    model: model.uri,
    ...(model.note ? { note: model.note } : {}),
    backend,
    workers: inProcess ? 0 : o.concurrency,
  });
  // What completes a dataset case is what the model takes: its description, read once here.
  const dataset = await readModelDataset(model.uri);
  const runner: CaseRunner = inProcess
    ? await InProcessRunner.load(model.uri, backend)
    : await WorkerPool.start(model.uri, backend, o.concurrency, log);
  try {
    return await startEventService(
      { ...service, model: model.uri, ...(dataset ? { dataset } : {}), log },
      runner,
    );
  } catch (e) {
    runner.close();
    throw e;
  }
}
