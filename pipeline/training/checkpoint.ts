/**
 * A training run's checkpoints at any storage URI: what a run's state is, how it is written so that
 * a run killed at any moment can resume, and how it is read back.
 *
 * Layout under a run's output `<out>`:
 * - `checkpoints/epoch-EEEE-step-SSSSSSS/`: `model.safetensors` and `optimizer.safetensors`
 *   ({@linkcode saveModel}), and `state.json` ({@linkcode TrainState}: the settings, where the run
 *   is, its history and its case split);
 * - `latest.json`: `{checkpoint, epoch, step, files}` naming the newest checkpoint folder, with
 *   the whole-file SHA-256 and size of each of its files;
 * - `best/model.safetensors`: the best weights so far ({@linkcode writeBest}).
 *
 * Each file is written whole under a temporary name and renamed, or sent in a single PUT
 * ({@linkcode putObject}). A checkpoint is committed by `latest.json`, written after every file of
 * its folder, and readers follow `latest.json`, never the newest folder: a run killed while writing
 * a checkpoint resumes from the one before, which is kept (the two newest folders are).
 *
 * Nothing read back is trusted blindly: `state.json` records the SHA-256 of the weights and the
 * optimizer state, `latest.json` those of all three files, and a resumed run refuses a file that
 * disagrees, by name (checkpoints written before the digests have none and are read unchecked).
 *
 * This is the contract between a run and whatever continues or reads it (`train --resume`, `demo`
 * reading the split), so it lives in pipeline/training/ beside {@linkcode saveModel} and the
 * settings it stores (settings.ts, which also decides which settings a resumed run may change).
 * @module
 */
import type { NetworkConfig, Optimizer, UNet } from "../../model/mod.ts";
import { disposeUNet, resolveConfig } from "../../model/mod.ts";
import type { RegionScores } from "../evaluation/mod.ts";
import {
  checkDigest,
  type FileDigest,
  fileDigest,
  loadModel,
  loadOptimizer,
  MODEL_FILE,
  modelMetadataRecord,
  OPTIMIZER_FILE,
  saveModel,
} from "./model_store.ts";
import { deleteObject, getObject, joinUri, listObjects, putObject } from "../storage/mod.ts";
import type { TrainSettings } from "./settings.ts";

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
  /**
   * In a checkpoint's `state.json`: the whole-file SHA-256 and size of the checkpoint's
   * `model.safetensors` and `optimizer.safetensors` as written (absent in older checkpoints).
   */
  files?: Record<string, FileDigest>;
}

/** What `latest.json` holds. */
export interface LatestCheckpoint {
  /** The checkpoint folder, relative to the run's output. */
  checkpoint: string;
  epoch: number;
  step: number;
  /** Digests of the folder's files by name, `state.json` among them (absent in older runs). */
  files?: Record<string, FileDigest>;
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
  const files = await saveModel(dir, net, optimizer, {
    ...extra,
    ...modelMetadataRecord({ trainCrop: state.settings.crop }),
    epoch: String(state.epoch),
    step: String(state.globalStep),
  });
  const stateBytes = new TextEncoder().encode(JSON.stringify({ ...state, files }));
  await putObject(joinUri(dir, STATE_FILE), stateBytes);
  const latest: LatestCheckpoint = {
    checkpoint: name,
    epoch: state.epoch,
    step: state.globalStep,
    files: { ...files, [STATE_FILE]: fileDigest(stateBytes) },
  };
  await putObject(latestUri(out), new TextEncoder().encode(JSON.stringify(latest) + "\n"));
  const objects = await listObjects(joinUri(out, "checkpoints"));
  const folders = [...new Set(objects.map((o) => o.key.split("/")[0]))].sort();
  const keep = new Set(folders.slice(-2));
  for (const o of objects) {
    if (!keep.has(o.key.split("/")[0])) await deleteObject(o.uri);
  }
  return name;
}

async function readJson(uri: string, expected?: FileDigest): Promise<unknown> {
  const bytes = await getObject(uri);
  if (expected) checkDigest(bytes, uri, expected);
  const text = new TextDecoder().decode(bytes);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`${uri}: not valid JSON (${(e as Error).message})`);
  }
}

/** Checks the fields of JSON read from `uri`; each error names the file, the field and the value. */
class Fields {
  constructor(readonly uri: string) {}

  /** A wrong type is a TypeError, a value of the right type out of range a RangeError. */
  fail(field: string, want: string, found: unknown, range = typeof found === "number"): never {
    const shown = found === undefined
      ? "nothing"
      : `${JSON.stringify(found)}${typeof found === "string" ? " (a string)" : ""}`;
    const E = range ? RangeError : TypeError;
    throw new E(`${this.uri}: field "${field}" must be ${want}, found ${shown}`);
  }

  object(v: unknown, field: string): Record<string, unknown> {
    if (typeof v !== "object" || v === null || Array.isArray(v)) this.fail(field, "an object", v);
    return v as Record<string, unknown>;
  }

  int(v: unknown, field: string, min: number): number {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
      this.fail(field, `an integer ≥ ${min}`, v);
    }
    return v;
  }

  number(v: unknown, field: string, min = -Infinity, max = Infinity): number {
    if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
      const range = min === -Infinity
        ? ""
        : max === Infinity
        ? ` ≥ ${min}`
        : ` in [${min}, ${max}]`;
      this.fail(field, `a finite number${range}`, v);
    }
    return v;
  }

  string(v: unknown, field: string): string {
    if (typeof v !== "string") this.fail(field, "a string", v, false);
    return v;
  }

  strings(v: unknown, field: string): string[] {
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) {
      this.fail(field, "a list of strings", v);
    }
    return v;
  }

  files(v: unknown, field: string): void {
    if (v === undefined) return;
    const files = this.object(v, field);
    for (const [name, d] of Object.entries(files)) {
      const digest = this.object(d, `${field}.${name}`);
      if (typeof digest.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(digest.sha256)) {
        this.fail(`${field}.${name}.sha256`, "64 hex digits", digest.sha256);
      }
      this.int(digest.bytes, `${field}.${name}.bytes`, 0);
    }
  }
}

/** The folder a checkpoint may be in, relative to the run's output: nowhere else. */
const CHECKPOINT_NAME = /^checkpoints\/epoch-\d{4,}-step-\d{7,}$/;

/**
 * Checks what `latest.json` holds: a checkpoint folder under the run's own `checkpoints/` (so a
 * resumed run never reads another run's state), its epoch and step, and its files' digests.
 */
function checkLatest(v: unknown, uri: string): LatestCheckpoint {
  const f: Fields = new Fields(uri);
  const latest = f.object(v, "(the whole file)");
  const checkpoint = f.string(latest.checkpoint, "checkpoint");
  if (!CHECKPOINT_NAME.test(checkpoint)) {
    f.fail(
      "checkpoint",
      "a checkpoint folder of this run (checkpoints/epoch-EEEE-step-SSSSSSS, under the folder of " +
        "latest.json)",
      checkpoint,
      true,
    );
  }
  f.int(latest.epoch, "epoch", 0);
  f.int(latest.step, "step", 0);
  f.files(latest.files, "files");
  return latest as unknown as LatestCheckpoint;
}

/** Checks the settings a `state.json` stores; returns the steps per epoch. */
function checkStoredSettings(f: Fields, v: unknown): { stepsPerEpoch: number } {
  const s = f.object(v, "settings");
  f.string(s.data, "settings.data");
  f.int(s.epochs, "settings.epochs", 1);
  const stepsPerEpoch = f.int(s.stepsPerEpoch, "settings.stepsPerEpoch", 1);
  f.int(s.crop, "settings.crop", 1);
  f.int(s.batch, "settings.batch", 1);
  f.number(s.lr, "settings.lr", 0);
  if (s.optimizer !== "adam" && s.optimizer !== "sgd") {
    f.fail("settings.optimizer", '"adam" or "sgd"', s.optimizer, typeof s.optimizer === "string");
  }
  f.number(s.weightDecay, "settings.weightDecay", 0);
  f.int(s.valCases, "settings.valCases", 0);
  f.int(s.valEvery, "settings.valEvery", 1);
  f.int(s.valWindow, "settings.valWindow", 1);
  try {
    resolveConfig(f.object(s.config, "settings.config") as Partial<NetworkConfig>);
  } catch (e) {
    throw new RangeError(`${f.uri}: field "settings.config": ${(e as Error).message}`, {
      cause: e,
    });
  }
  f.int(s.seed, "settings.seed", 0);
  if (typeof s.augment !== "boolean") f.fail("settings.augment", "true or false", s.augment);
  f.number(s.foregroundFraction, "settings.foregroundFraction", 0, 1);
  return { stepsPerEpoch };
}

/**
 * Checks a `state.json` field by field, so that a hand-edited or damaged state is refused naming
 * the field rather than resumed into nonsense (a negative step, an epoch as a string).
 */
function checkState(v: unknown, uri: string): TrainState {
  const f: Fields = new Fields(uri);
  const state = f.object(v, "(the whole file)");
  if (state.format !== "revunet-train-state") {
    throw new Error(`${uri}: not a training state`);
  }
  if (state.version !== 1) f.fail("version", "1", state.version);
  const { stepsPerEpoch } = checkStoredSettings(f, state.settings);
  const epoch = f.int(state.epoch, "epoch", 0);
  const stepInEpoch = f.int(state.stepInEpoch, "stepInEpoch", 0);
  if (stepInEpoch > stepsPerEpoch) {
    f.fail("stepInEpoch", `at most settings.stepsPerEpoch (${stepsPerEpoch})`, stepInEpoch);
  }
  const globalStep = f.int(state.globalStep, "globalStep", 0);
  // stepsPerEpoch never changes within a run, so the three counters restate each other.
  if (globalStep !== epoch * stepsPerEpoch + stepInEpoch) {
    f.fail(
      "globalStep",
      `epoch × settings.stepsPerEpoch + stepInEpoch (${epoch} × ${stepsPerEpoch} + ${stepInEpoch} = ${
        epoch * stepsPerEpoch + stepInEpoch
      })`,
      globalStep,
    );
  }
  f.number(state.epochLossSum, "epochLossSum");
  f.number(state.epochSeconds, "epochSeconds", 0);
  if (!Array.isArray(state.history) || state.history.length !== epoch) {
    f.fail("history", `a list of one entry per completed epoch (${epoch})`, state.history);
  }
  state.history.forEach((h, i) => {
    const m = f.object(h, `history[${i}]`);
    f.int(m.epoch, `history[${i}].epoch`, 1);
    f.number(m.loss, `history[${i}].loss`);
  });
  if (state.best !== null) {
    const best = f.object(state.best, "best");
    f.int(best.epoch, "best.epoch", 1);
    f.number(best.meanDice, "best.meanDice", 0, 1);
  }
  const split = f.object(state.split, "split");
  f.strings(split.train, "split.train");
  f.strings(split.val, "split.val");
  f.files(state.files, "files");
  return state as unknown as TrainState;
}

/**
 * Reads the state of the checkpoint `latest.json` names (the caller checks that it exists).
 * @returns the checkpoint's name relative to `out`, its folder's URI, its state, and the digests
 *   its files were written with (for {@linkcode loadCheckpointWeights}; none in older runs)
 * @throws {SyntaxError} when `latest.json` or `state.json` is not JSON
 * @throws {Error} naming `state.json` when it is not the file `latest.json` records
 * @throws {TypeError|RangeError} naming the file and the field when `latest.json` or
 *   `state.json` does not hold what it should (a field of the wrong type or out of range, a
 *   checkpoint outside the run's own `checkpoints/`, a state that is not the one `latest.json`
 *   names)
 * @throws {Error} naming `state.json` when it is not a training state, or its `rng` does not
 * restate the run's seed and step
 */
export async function readCheckpointState(
  out: string,
): Promise<
  { checkpoint: string; dir: string; state: TrainState; files?: Record<string, FileDigest> }
> {
  const latest = checkLatest(await readJson(latestUri(out)), latestUri(out));
  const checkpoint = latest.checkpoint;
  const dir = joinUri(out, checkpoint);
  const uri = joinUri(dir, STATE_FILE);
  const state = checkState(await readJson(uri, latest.files?.[STATE_FILE]), uri);
  if (
    checkpointName(state) !== checkpoint || latest.epoch !== state.epoch ||
    latest.step !== state.globalStep
  ) {
    throw new RangeError(
      `${uri}: holds epoch ${state.epoch}, step ${state.globalStep}, but ${
        latestUri(out)
      } names ${checkpoint} at epoch ${latest.epoch}, step ${latest.step}`,
    );
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
  // The digests are those of the files as written, not part of the run's state.
  const { files: written, ...rest } = state;
  const files = latest.files ?? written;
  return { checkpoint, dir, state: rest, ...(files ? { files } : {}) };
}

/**
 * Loads a checkpoint's network and optimizer state; the caller disposes both.
 * @param files the digests the checkpoint records ({@linkcode readCheckpointState}): each file
 *   must match its own
 * @throws {Error} naming the folder when it has no optimizer state, or the file when it is not
 *   the one the checkpoint records (nothing is left allocated)
 */
export async function loadCheckpointWeights(
  dir: string,
  files?: Record<string, FileDigest>,
): Promise<{ net: UNet; optimizer: Optimizer }> {
  const net = (await loadModel(dir, files?.[MODEL_FILE])).net;
  const optimizer = await loadOptimizer(dir, files?.[OPTIMIZER_FILE]).catch((e) => {
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
    // The window validation scored these weights with: `segment`'s default, so it reproduces them.
    ...modelMetadataRecord({ trainCrop: at.crop, valWindow: at.valWindow }),
    epoch: String(at.epoch),
    ...(at.valDice
      ? { val_dice: JSON.stringify(at.valDice) }
      : { best_by: "latest (no validation cases)" }),
  });
}
