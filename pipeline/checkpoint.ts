/**
 * A training run's checkpoints at any storage URI: what a run's state is, how it is written so that
 * a run killed at any moment can resume, and how it is read back.
 *
 * Layout under a run's output `<out>`:
 * - `checkpoints/epoch-EEEE-step-SSSSSSS/`: `model.safetensors` and `optimizer.safetensors`
 *   ({@linkcode saveModel}), and `state.json` ({@linkcode TrainState}: the settings, where the run
 *   is, its history and its case split);
 * - `latest.json`: `{checkpoint, epoch, step}` naming the newest checkpoint folder;
 * - `best/model.safetensors`: the best weights so far ({@linkcode writeBest}).
 *
 * Each file is written whole under a temporary name and renamed, or sent in a single PUT
 * ({@linkcode putObject}). A checkpoint is committed by `latest.json`, written after every file of
 * its folder, and readers follow `latest.json`, never the newest folder: a run killed while writing
 * a checkpoint resumes from the one before, which is kept (the two newest folders are).
 *
 * This is the contract between a run and whatever continues or reads it (`train --resume`, `demo`
 * reading the split), so it lives in pipeline/ beside {@linkcode saveModel}; the rules for which
 * settings a resumed run may change are the command line's, in tasks/_train_resume.ts.
 * @module
 */
import type { NetworkConfig, Optimizer, UNet } from "../model/mod.ts";
import { disposeUNet } from "../model/mod.ts";
import type { RegionScores } from "./metrics.ts";
import { loadModel, loadOptimizer, saveModel } from "./model_store.ts";
import { deleteObject, getObject, joinUri, listObjects, putObject } from "./storage.ts";

/** What a run is: everything that decides its result, stored in every checkpoint. */
export interface TrainSettings {
  data: string;
  epochs: number;
  stepsPerEpoch: number;
  crop: number;
  batch: number;
  lr: number;
  optimizer: "adam" | "sgd";
  weightDecay: number;
  /** Validation cases split off the labelled cases (seeded). */
  valCases: number;
  /** Validate every this many epochs (and after the last). */
  valEvery: number;
  /** Sliding-window edge for validation; default the crop. */
  valWindow: number;
  config: NetworkConfig;
  seed: number;
  augment: boolean;
  foregroundFraction: number;
}

/** One epoch's line in `metrics.jsonl`. */
export interface EpochMetrics {
  epoch: number;
  step: number;
  loss: number;
  lr: number;
  seconds: number;
  val_dice?: RegionScores;
  val_mean_dice?: number;
}

/** What a checkpoint's `state.json` holds besides the weights and optimizer state. */
export interface TrainState {
  format: "revunet-train-state";
  version: 1;
  settings: TrainSettings;
  /** Epochs completed. */
  epoch: number;
  /** Steps done in the current (incomplete) epoch. */
  stepInEpoch: number;
  /** Steps done in all: the counter of the per-step random streams. */
  globalStep: number;
  epochLossSum: number;
  epochSeconds: number;
  history: EpochMetrics[];
  best: { epoch: number; meanDice: number } | null;
  split: { train: string[]; val: string[] };
  /**
   * The run's generators are counter-based: (seed, step) is their whole state. This restates
   * `settings.seed` and `globalStep` for a reader of the file; {@linkcode readCheckpointState}
   * refuses a state where they disagree, since its run could not continue bit for bit.
   */
  rng: { kind: "mulberry32-counter"; seed: number; counter: number };
}

/** File name of the run state inside a checkpoint folder. */
export const STATE_FILE = "state.json";

/** The state of a run that has not started: no step taken, no cases split off yet. */
export function newTrainState(settings: TrainSettings): TrainState {
  return {
    format: "revunet-train-state",
    version: 1,
    settings,
    epoch: 0,
    stepInEpoch: 0,
    globalStep: 0,
    epochLossSum: 0,
    epochSeconds: 0,
    history: [],
    best: null,
    split: { train: [], val: [] },
    rng: { kind: "mulberry32-counter", seed: settings.seed, counter: 0 },
  };
}

/** The URI of `latest.json`, which names a run's newest checkpoint: it exists once one does. */
export function latestUri(out: string): string {
  return joinUri(out, "latest.json");
}

const pad = (n: number, w: number) => String(n).padStart(w, "0");

/** The checkpoint folder of `state`, relative to the run's output. */
export function checkpointName(state: TrainState): string {
  return `checkpoints/epoch-${pad(state.epoch, 4)}-step-${pad(state.globalStep, 7)}`;
}

/**
 * Writes a checkpoint folder, then `latest.json` naming it (the commit point), then removes all but
 * the two newest checkpoint folders.
 * @returns the folder's name, relative to `out` ({@linkcode checkpointName})
 */
export async function writeCheckpoint(
  out: string,
  net: UNet,
  optimizer: Optimizer,
  state: TrainState,
  extra: Record<string, string> = {},
): Promise<string> {
  const name = checkpointName(state);
  const dir = joinUri(out, name);
  await saveModel(dir, net, optimizer, {
    ...extra,
    train_crop: String(state.settings.crop),
    epoch: String(state.epoch),
    step: String(state.globalStep),
  });
  await putObject(joinUri(dir, STATE_FILE), new TextEncoder().encode(JSON.stringify(state)));
  await putObject(
    latestUri(out),
    new TextEncoder().encode(
      JSON.stringify({ checkpoint: name, epoch: state.epoch, step: state.globalStep }) + "\n",
    ),
  );
  const objects = await listObjects(joinUri(out, "checkpoints"));
  const folders = [...new Set(objects.map((o) => o.key.split("/")[0]))].sort();
  const keep = new Set(folders.slice(-2));
  for (const o of objects) {
    if (!keep.has(o.key.split("/")[0])) await deleteObject(o.uri);
  }
  return name;
}

async function readJson<T>(uri: string): Promise<T> {
  const text = new TextDecoder().decode(await getObject(uri));
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new SyntaxError(`${uri}: not valid JSON (${(e as Error).message})`);
  }
}

/**
 * Reads the state of the checkpoint `latest.json` names (the caller checks that it exists).
 * @returns the checkpoint's name relative to `out`, its folder's URI, and its state
 * @throws {SyntaxError} when `latest.json` or `state.json` is not JSON
 * @throws {Error} naming `state.json` when it is not a training state, or its `rng` does not
 * restate the run's seed and step
 */
export async function readCheckpointState(
  out: string,
): Promise<{ checkpoint: string; dir: string; state: TrainState }> {
  const { checkpoint } = await readJson<{ checkpoint: string }>(latestUri(out));
  const dir = joinUri(out, checkpoint);
  const uri = joinUri(dir, STATE_FILE);
  const state = await readJson<TrainState>(uri);
  if (state.format !== "revunet-train-state") {
    throw new Error(`${uri}: not a training state`);
  }
  const rng = state.rng;
  if (
    rng?.kind !== "mulberry32-counter" || rng.seed !== state.settings?.seed ||
    rng.counter !== state.globalStep
  ) {
    throw new Error(
      `${uri}: rng ${JSON.stringify(rng)} does not restate the run's seed ${
        JSON.stringify(state.settings?.seed)
      } and step ${JSON.stringify(state.globalStep)}, so resuming would not draw what the run drew`,
    );
  }
  return { checkpoint, dir, state };
}

/**
 * Loads a checkpoint's network and optimizer state; the caller disposes both.
 * @throws {Error} naming the folder when it has no optimizer state (nothing is left allocated)
 */
export async function loadCheckpointWeights(
  dir: string,
): Promise<{ net: UNet; optimizer: Optimizer }> {
  const net = (await loadModel(dir)).net;
  const optimizer = await loadOptimizer(dir).catch((e) => {
    disposeUNet(net);
    throw e;
  });
  if (!optimizer) {
    disposeUNet(net);
    throw new Error(`${dir}: checkpoint has no optimizer state`);
  }
  return { net, optimizer };
}

/**
 * Writes `<out>/best/model.safetensors` (with `extra` metadata, e.g. the dataset's description):
 * the weights of the epoch with the best mean validation
 * Dice, `valDice` stored with them; without `valDice` (a run with no validation cases, so nothing
 * to choose by), the latest weights, so that `<out>/best` names the run's model either way.
 */
export async function writeBest(
  out: string,
  net: UNet,
  at: { crop: number; epoch: number; valDice?: RegionScores; valWindow?: number },
  extra: Record<string, string> = {},
): Promise<void> {
  await saveModel(joinUri(out, "best"), net, undefined, {
    ...extra,
    train_crop: String(at.crop),
    // The window validation scored these weights with: `segment`'s default, so it reproduces them.
    ...(at.valWindow ? { val_window: String(at.valWindow) } : {}),
    epoch: String(at.epoch),
    ...(at.valDice
      ? { val_dice: JSON.stringify(at.valDice) }
      : { best_by: "latest (no validation cases)" }),
  });
}
