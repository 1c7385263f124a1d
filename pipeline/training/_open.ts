/**
 * The first stage of a training run (run.ts): a new run, or one resumed from its latest
 * checkpoint, on the backend it asks for.
 * @module
 */
import { type BackendChoice, Optimizer, selectBackend, type UNet } from "../../model/mod.ts";
import { exists, isWithin } from "../storage/mod.ts";
import {
  latestUri,
  loadCheckpointWeights,
  newTrainState,
  readCheckpointState,
  type TrainState,
} from "./checkpoint.ts";
import type { TrainEvent } from "./events.ts";
import type { TrainRuntime } from "./run.ts";
import { checkSettings, resumedSettings, SettingsError, type TrainSettings } from "./settings.ts";

/** What every stage of a run reports to and checks. */
export interface RunContext {
  out: string;
  runtime: TrainRuntime;
  emit: (e: TrainEvent) => void;
  log: (message: string) => void;
  aborted: () => boolean;
}

/** A run opened: its state (settings included) and optimizer, its network when resumed. */
export interface Opened {
  state: TrainState;
  net?: UNet;
  optimizer: Optimizer;
  /** The checkpoint that holds the current state, when one does. */
  saved?: string;
}

/** A run opened, with what it reports to and the backend it runs on. */
export interface OpenedRun {
  ctx: RunContext;
  backend: BackendChoice;
  opened: Opened;
}

/** Opens a new run or resumes one, on the backend it asks for. */
export async function openRun(
  requested: Partial<TrainSettings>,
  runtime: TrainRuntime,
): Promise<OpenedRun> {
  const emit = (e: TrainEvent) => runtime.onProgress?.(e);
  const ctx: RunContext = {
    out: runtime.out,
    runtime,
    emit,
    log: (message) => emit({ kind: "log", message }),
    aborted: () => runtime.signal?.aborted ?? false,
  };
  // Before the backend loads: a run must not write into the cases it reads.
  if (!runtime.resume && requested.data !== undefined) {
    await refuseOutInData(ctx.out, requested.data);
  }
  const backend = await selectBackend(runtime.backend ?? "cpu", ctx.log);
  const opened = runtime.resume
    ? await resumeRun(ctx, requested)
    : await newRun(ctx, requested as TrainSettings);
  return { ctx, backend, opened };
}

async function newRun(ctx: RunContext, settings: TrainSettings): Promise<Opened> {
  checkSettings(settings);
  const latest = latestUri(ctx.out);
  if (await exists(latest)) {
    throw new Error(
      `${ctx.out} already holds a training run (${latest}); pass --resume to continue it or choose another --out`,
    );
  }
  const optimizer = new Optimizer({ kind: settings.optimizer, weightDecay: settings.weightDecay });
  // A new run's network is made once the dataset says its input channels and output regions.
  return { state: newTrainState(settings), optimizer };
}

async function resumeRun(ctx: RunContext, requested: Partial<TrainSettings>): Promise<Opened> {
  const latest = latestUri(ctx.out);
  if (!(await exists(latest))) {
    throw new Error(`--resume: ${latest} does not exist; there is no run to resume there`);
  }
  const { checkpoint, dir, state, files } = await readCheckpointState(ctx.out);
  const resumed = resumedSettings(state.settings, requested, state);
  state.settings = resumed.settings;
  await refuseOutInData(ctx.out, state.settings.data);
  const { net, optimizer } = await loadCheckpointWeights(dir, files);
  ctx.log(`resuming ${ctx.out} at epoch ${state.epoch}, step ${state.globalStep} (${checkpoint})`);
  for (const change of resumed.changes) ctx.log(change);
  // A changed setting is stored by the next checkpoint, even one written before any step.
  return { state, net, optimizer, saved: resumed.changes.length > 0 ? undefined : checkpoint };
}

/**
 * Refuses an output equal to or inside the data folder: its checkpoints, cache and reports would
 * be written among the cases it reads (and found as cases by the next run).
 */
async function refuseOutInData(out: string, data: string): Promise<void> {
  if (data !== "" && await isWithin(out, data)) {
    throw new SettingsError(
      "--out",
      `--out ${out} is ${
        (await isWithin(data, out)) ? "the --data folder" : `inside the --data folder ${data}`
      }: a run writes its checkpoints, cache and reports there; choose an --out outside it`,
    );
  }
}
