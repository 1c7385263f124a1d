/**
 * `train`: trains the reversible U-Net on BraTS cases held under a storage URI.
 *
 * Stages, as nnU-Net separates them: find the labelled cases and split off validation cases (seeded);
 * preprocess every case once (brain crop, z-score; cached by the inputs' identity); then epochs of
 * random crops (a third forced onto tumor, augmented, prepared ahead in a worker) through the
 * reversible training step with a polynomial learning-rate decay; sliding-window validation with
 * Dice per region every few epochs; and after each epoch a checkpoint, `metrics.jsonl` and
 * `curves.svg` in the output. Every random draw of step k comes from a generator seeded by (seed, k),
 * so a resumed run draws what the uninterrupted run would have.
 *
 * Output layout under `--out`:
 * - `checkpoints/epoch-EEEE-step-SSSSSSS/{model,optimizer}.safetensors, state.json`: the latest
 *   two checkpoints; `latest.json` names the newest and is written last, so a run killed while
 *   writing a checkpoint resumes from the previous one;
 * - `best/model.safetensors`: the weights with the best mean validation Dice so far;
 * - `metrics.jsonl` (one JSON object per epoch), `curves.svg` (loss and validation Dice).
 * @module
 */
import * as tf from "../model/tf.ts";
import {
  createUNet,
  cropMultiple,
  disposeUNet,
  type NetworkConfig,
  Optimizer,
  polyLearningRate,
  resolveConfig,
  trainStepAsync,
  type UNet,
} from "../model/mod.ts";
import { type BackendChoice, selectBackend } from "../model/backend.ts";
import { cropModel, maxCropEdge, predictPeak } from "../model/memory.ts";
import { loadPreprocessed } from "../pipeline/case_cache.ts";
import { type Case, findCases } from "../pipeline/cases.ts";
import { slidingWindowProbabilities } from "../pipeline/inference.ts";
import { meanScores, regionDice, type RegionScores } from "../pipeline/metrics.ts";
import { loadModel, loadOptimizer, saveModel } from "../pipeline/model_store.ts";
import { reportMetrics } from "../pipeline/case_report.ts";
import { caseMetrics } from "../pipeline/evaluation.ts";
import { renderCurves } from "../pipeline/plot.ts";
import { renderCaseSlices, writeReport } from "../pipeline/report.ts";
import { regionsToLabels } from "./segment.ts";
import { BatchPrefetcher } from "../pipeline/prefetch.ts";
import type { PreprocessedCase } from "../pipeline/preprocess.ts";
import { formatDuration, Progress } from "../pipeline/progress.ts";
import { streamRandom } from "../pipeline/random.ts";
import {
  deleteObject,
  exists,
  getObject,
  joinUri,
  listObjects,
  mapConcurrent,
  putObject,
} from "../pipeline/storage.ts";
import {
  backendFlag,
  type Command,
  intFlag,
  numberFlag,
  parseFlags,
  printJson,
  UsageError,
} from "./_cli.ts";

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

/** How a run is executed: does not change its result. */
export interface TrainRuntime {
  out: string;
  resume?: boolean;
  backend?: BackendChoice["name"] | "auto";
  /** Preprocessed-case cache URI; "" for none. */
  cache?: string;
  /** Sampler worker threads (0: main thread). */
  workers?: number;
  quiet?: boolean;
  /** Stop (with a checkpoint) once this many epochs are complete: for tests and time-boxed jobs. */
  stopAfterEpoch?: number;
  /** When aborted, the run checkpoints after the current step and returns. */
  signal?: AbortSignal;
  /** At the end, write `<out>/report/index.html` (validation cases, metrics, curves). */
  report?: boolean;
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
interface TrainState {
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
  /** The run's generators are counter-based: (seed, step) is their whole state. */
  rng: { kind: "mulberry32-counter"; seed: number; counter: number };
}

/** The result of {@linkcode train}. */
export interface TrainResult {
  out: string;
  backend: string;
  epochs: number;
  steps: number;
  seconds: number;
  lastLoss: number | null;
  best: { epoch: number; meanDice: number } | null;
  lastValDice: RegionScores | null;
  interrupted: boolean;
  checkpoint: string;
  /** The report's URI, with `report`. */
  report?: string;
}

const STATE_FILE = "state.json";

/** The default settings: they work on the embedded default (a few small synthetic cases). */
export function defaultSettings(data: string): TrainSettings {
  return {
    data,
    epochs: 10,
    stepsPerEpoch: 25,
    crop: 32,
    batch: 1,
    lr: 3e-3,
    optimizer: "adam",
    weightDecay: 0,
    valCases: 1,
    valEvery: 1,
    valWindow: 32,
    config: resolveConfig({}),
    seed: 0,
    augment: true,
    foregroundFraction: 1 / 3,
  };
}

async function readJson<T>(uri: string): Promise<T> {
  const text = new TextDecoder().decode(await getObject(uri));
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new SyntaxError(`${uri}: not valid JSON (${(e as Error).message})`);
  }
}

const pad = (n: number, w: number) => String(n).padStart(w, "0");

/** The labelled cases, split into training and validation cases by a seeded shuffle. */
export function splitCases(
  cases: Case[],
  valCases: number,
  seed: number,
): { train: Case[]; val: Case[] } {
  const sorted = [...cases].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const rand = streamRandom(seed, 0, 2);
  for (let i = sorted.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [sorted[i], sorted[j]] = [sorted[j], sorted[i]];
  }
  return { val: sorted.slice(0, valCases), train: sorted.slice(valCases) };
}

/** Mean Dice per region of sliding-window predictions on the validation cases. */
export async function validate(
  net: UNet,
  cases: PreprocessedCase[],
  window: number,
): Promise<RegionScores> {
  const scores: RegionScores[] = [];
  for (const c of cases) {
    const probs = await slidingWindowProbabilities(net, c.image, c.box.size, {
      window,
      overlap: 0.5,
    });
    scores.push(regionDice(probs, c.regions!));
  }
  return meanScores(scores);
}

/** Trains; see the module documentation. */
export async function train(settings: TrainSettings, runtime: TrainRuntime): Promise<TrainResult> {
  const out = runtime.out;
  const progress = new Progress({ quiet: runtime.quiet });
  const log = (m: string) => progress.log(`train: ${m}`);
  const backend = await selectBackend(
    (runtime.backend ?? "cpu") as Parameters<typeof selectBackend>[0],
    log,
  );
  const latestUri = joinUri(out, "latest.json");

  let state: TrainState;
  let net: UNet;
  let optimizer: Optimizer;
  if (runtime.resume) {
    if (!(await exists(latestUri))) {
      throw new Error(`--resume: ${latestUri} does not exist; there is no run to resume there`);
    }
    const { checkpoint } = await readJson<{ checkpoint: string }>(latestUri);
    const dir = joinUri(out, checkpoint);
    state = await readJson<TrainState>(joinUri(dir, STATE_FILE));
    if (state.format !== "revunet-train-state") {
      throw new Error(`${joinUri(dir, STATE_FILE)}: not a training state`);
    }
    settings = state.settings;
    net = (await loadModel(dir)).net;
    const opt = await loadOptimizer(dir);
    if (!opt) throw new Error(`${dir}: checkpoint has no optimizer state`);
    optimizer = opt;
    log(`resuming ${out} at epoch ${state.epoch}, step ${state.globalStep} (${checkpoint})`);
  } else {
    checkSettings(settings);
    if (await exists(latestUri)) {
      throw new Error(
        `${out} already holds a training run (${latestUri}); pass --resume to continue it or choose another --out`,
      );
    }
    state = {
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
    net = createUNet(settings.config, { seed: settings.seed });
    optimizer = new Optimizer({ kind: settings.optimizer, weightDecay: settings.weightDecay });
  }

  const prefetcher: { current?: BatchPrefetcher } = {};
  try {
    // Cases: find, split, preprocess (cached).
    const { cases: found, problems } = await findCases(settings.data);
    for (const p of problems) log(`skipping case ${p.id}: ${p.error}`);
    const labelled = found.filter((c) => c.seg);
    if (labelled.length === 0) {
      throw new Error(`${settings.data}: no labelled cases (image files with a _seg) to train on`);
    }
    let split: { train: Case[]; val: Case[] };
    if (state.split.train.length > 0) {
      const byId = new Map(labelled.map((c) => [c.id, c]));
      const pick = (ids: string[]) =>
        ids.map((id) => {
          const c = byId.get(id);
          if (!c) throw new Error(`${settings.data}: case ${id} of the run being resumed is gone`);
          return c;
        });
      split = { train: pick(state.split.train), val: pick(state.split.val) };
    } else {
      if (settings.valCases >= labelled.length) {
        throw new UsageError(
          `--val-cases ${settings.valCases} leaves no training case: ${settings.data} has ${labelled.length} labelled cases`,
        );
      }
      split = splitCases(labelled, settings.valCases, settings.seed);
      state.split = { train: split.train.map((c) => c.id), val: split.val.map((c) => c.id) };
    }
    const cacheUri = runtime.cache === undefined
      ? joinUri(out, "cache")
      : runtime.cache === ""
      ? undefined
      : runtime.cache;
    const t0 = performance.now();
    let fromCache = 0;
    const load = (list: Case[]) =>
      mapConcurrent(list, 2, async (c) => {
        const r = await loadPreprocessed(c, cacheUri);
        if (r.cached) fromCache++;
        return r.case;
      });
    const trainCases = await load(split.train);
    const valCases = await load(split.val);
    log(
      `${trainCases.length} training and ${valCases.length} validation cases ready in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s (${fromCache} from the cache${cacheUri ? ` ${cacheUri}` : ""})`,
    );

    const s = settings;
    const totalSteps = s.epochs * s.stepsPerEpoch;
    prefetcher.current = new BatchPrefetcher(trainCases, {
      batch: s.batch,
      seed: s.seed,
      workers: runtime.workers ?? 1,
      sampling: {
        crop: s.crop,
        foregroundFraction: s.foregroundFraction,
        ...(s.augment ? {} : { augment: false }),
      },
    });
    const shape = [s.batch, s.crop, s.crop, s.crop];
    let lastLoss: number | null = null;
    let lastValDice: RegionScores | null = state.history.at(-1)?.val_dice ?? null;
    const runStart = performance.now();
    const stepsAtStart = state.globalStep;
    const stopAfter = Math.min(runtime.stopAfterEpoch ?? s.epochs, s.epochs);
    let interrupted = false;

    while (state.epoch < stopAfter && !interrupted) {
      const epochStart = performance.now() - state.epochSeconds * 1000;
      while (state.stepInEpoch < s.stepsPerEpoch) {
        const batch = await prefetcher.current.next(state.globalStep);
        const lr = polyLearningRate(s.lr, state.globalStep, totalSteps);
        const x = tf.tensor5d(
          batch.image,
          [...shape, 4] as [number, number, number, number, number],
        );
        const y = tf.tensor5d(
          batch.target,
          [...shape, 3] as [number, number, number, number, number],
        );
        let loss: number;
        try {
          loss = await trainStepAsync(net, optimizer, x, y, lr);
        } finally {
          tf.dispose([x, y]);
        }
        if (!isFinite(loss)) {
          throw new Error(
            `loss became ${loss} at step ${state.globalStep} (epoch ${
              state.epoch + 1
            }); try a lower --lr`,
          );
        }
        lastLoss = loss;
        state.epochLossSum += loss;
        state.stepInEpoch++;
        state.globalStep++;
        state.rng.counter = state.globalStep;
        const done = state.globalStep - stepsAtStart;
        const perStep = (performance.now() - runStart) / 1000 / done;
        progress.update(
          `epoch ${state.epoch + 1}/${s.epochs}`,
          state.stepInEpoch,
          s.stepsPerEpoch,
          `step ${state.stepInEpoch}/${s.stepsPerEpoch} loss ${loss.toFixed(4)} lr ${
            lr.toExponential(1)
          } ${perStep.toFixed(2)} s/step`,
          perStep * (totalSteps - state.globalStep),
        );
        if (runtime.signal?.aborted) {
          interrupted = true;
          break;
        }
      }
      state.epochSeconds = (performance.now() - epochStart) / 1000;
      if (interrupted) break;

      // End of an epoch: validation, metrics, curves, checkpoint.
      const metrics: EpochMetrics = {
        epoch: state.epoch + 1,
        step: state.globalStep,
        loss: state.epochLossSum / s.stepsPerEpoch,
        lr: polyLearningRate(s.lr, state.globalStep - 1, totalSteps),
        seconds: Number(state.epochSeconds.toFixed(2)),
      };
      const last = state.epoch + 1 === s.epochs;
      if (valCases.length > 0 && ((state.epoch + 1) % s.valEvery === 0 || last)) {
        const v0 = performance.now();
        const dice = await validate(net, valCases, s.valWindow);
        const mean = (dice.WT + dice.TC + dice.ET) / 3;
        metrics.val_dice = dice;
        metrics.val_mean_dice = mean;
        lastValDice = dice;
        log(
          `epoch ${metrics.epoch}: loss ${metrics.loss.toFixed(4)}, validation Dice WT ${
            dice.WT.toFixed(3)
          } TC ${dice.TC.toFixed(3)} ET ${dice.ET.toFixed(3)} (${
            ((performance.now() - v0) / 1000).toFixed(1)
          } s)`,
        );
        if (!state.best || mean > state.best.meanDice) {
          state.best = { epoch: metrics.epoch, meanDice: mean };
          await saveModel(joinUri(out, "best"), net, undefined, {
            train_crop: String(s.crop),
            epoch: String(metrics.epoch),
            val_dice: JSON.stringify(dice),
          });
        }
      } else {
        log(`epoch ${metrics.epoch}: loss ${metrics.loss.toFixed(4)}`);
      }
      state.history.push(metrics);
      state.epoch++;
      state.stepInEpoch = 0;
      state.epochLossSum = 0;
      state.epochSeconds = 0;
      await writeReports(out, state.history);
      await writeCheckpoint(out, net, optimizer, state);
      if (runtime.signal?.aborted) interrupted = true;
    }
    if (interrupted) {
      await writeCheckpoint(out, net, optimizer, state);
      log(
        `stopped at epoch ${
          state.epoch + 1
        }, step ${state.stepInEpoch}/${s.stepsPerEpoch}: checkpoint saved; continue with --resume`,
      );
    }
    const seconds = (performance.now() - runStart) / 1000;
    log(`done: ${state.globalStep - stepsAtStart} steps in ${formatDuration(seconds)}`);
    let report: string | undefined;
    if (runtime.report && !interrupted) {
      report = await trainingReport(out, net, split.val, valCases, s, state.history);
      log(`report: ${report}`);
    }
    return {
      ...(report ? { report } : {}),
      out,
      backend: backend.name,
      epochs: state.epoch,
      steps: state.globalStep,
      seconds,
      lastLoss,
      best: state.best,
      lastValDice,
      interrupted,
      checkpoint: checkpointName(state),
    };
  } finally {
    prefetcher.current?.close();
    optimizer.dispose();
    disposeUNet(net);
  }
}

/** Region bits (bit 0 WT, 1 TC, 2 ET) as BraTS labels: ET → enhancing, TC → 1, WT → 2. */
function bitsToLabels(regions: Uint8Array, enhancing: 3 | 4): Uint8Array {
  return regions.map((r) => (r & 4 ? enhancing : r & 2 ? 1 : r & 1 ? 2 : 0));
}

/**
 * The end-of-training report: each validation case's FLAIR (z-scored, on its brain box) with the
 * reference and the final network's prediction, their metrics, and the training curves.
 */
async function trainingReport(
  out: string,
  net: UNet,
  cases: Case[],
  preprocessed: PreprocessedCase[],
  s: TrainSettings,
  history: EpochMetrics[],
): Promise<string> {
  const entries = [];
  for (const [i, p] of preprocessed.entries()) {
    const c = cases[i];
    const probs = await slidingWindowProbabilities(net, p.image, p.box.size, {
      window: s.valWindow,
    });
    const prediction = regionsToLabels(probs, c.enhancingLabel);
    const truth = bitsToLabels(p.regions!, c.enhancingLabel);
    const flair = new Float32Array(p.image.length / 4).map((_, j) => p.image[4 * j]);
    const spacing = (c.spacing ?? [1, 1, 1]) as [number, number, number];
    const m = caseMetrics(prediction, truth, p.box.size, spacing, c.enhancingLabel);
    entries.push({
      id: c.id,
      slices: renderCaseSlices({ flair, dims: p.box.size, spacing, truth, prediction }),
      metrics: reportMetrics(m),
    });
  }
  const curves = new TextDecoder().decode(await getObject(joinUri(out, "curves.svg")));
  const last = history.at(-1);
  return await writeReport(out, {
    title: "Training run",
    cases: entries,
    curvesSvg: curves,
    notes: [
      `data ${s.data}; ${history.length} epochs of ${s.stepsPerEpoch} steps, crop ${s.crop}, batch ${s.batch}, lr ${s.lr} (${s.optimizer}), seed ${s.seed}`,
      `final loss ${
        last?.loss.toFixed(4) ?? "–"
      }; validation cases shown on their brain box with the final weights`,
    ],
  });
}

function checkSettings(s: TrainSettings): void {
  const m = cropMultiple(s.config);
  if (s.crop % m !== 0) {
    throw new UsageError(`--crop ${s.crop} must be a multiple of ${m} (${s.config.levels} levels)`);
  }
  if (s.valWindow % m !== 0) {
    throw new UsageError(`--val-window ${s.valWindow} must be a multiple of ${m}`);
  }
}

function checkpointName(state: TrainState): string {
  return `checkpoints/epoch-${pad(state.epoch, 4)}-step-${pad(state.globalStep, 7)}`;
}

/**
 * Writes a checkpoint folder, then `latest.json` naming it (the commit point), then removes all but
 * the two newest checkpoint folders.
 */
async function writeCheckpoint(out: string, net: UNet, optimizer: Optimizer, state: TrainState) {
  const name = checkpointName(state);
  const dir = joinUri(out, name);
  await saveModel(dir, net, optimizer, {
    train_crop: String(state.settings.crop),
    epoch: String(state.epoch),
    step: String(state.globalStep),
  });
  await putObject(joinUri(dir, STATE_FILE), new TextEncoder().encode(JSON.stringify(state)));
  await putObject(
    joinUri(out, "latest.json"),
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
}

/** `metrics.jsonl` and `curves.svg`, rewritten whole (object storage has no append). */
async function writeReports(out: string, history: EpochMetrics[]) {
  const lines = history.map((h) => JSON.stringify(h)).join("\n") + "\n";
  await putObject(joinUri(out, "metrics.jsonl"), new TextEncoder().encode(lines));
  const val = history.filter((h) => h.val_dice);
  const svg = renderCurves([
    {
      title: "Training loss",
      xLabel: "epoch",
      yLabel: "soft Dice + BCE",
      series: [{ name: "loss", color: "#1f77b4", points: history.map((h) => [h.epoch, h.loss]) }],
    },
    {
      title: "Validation Dice",
      xLabel: "epoch",
      yLabel: "Dice",
      yRange: [0, 1],
      series: (["WT", "TC", "ET"] as const).map((r, i) => ({
        name: r,
        color: ["#2ca02c", "#d62728", "#ff7f0e"][i],
        points: val.map((h) => [h.epoch, h.val_dice![r]] as [number, number]),
      })),
    },
  ]);
  await putObject(joinUri(out, "curves.svg"), new TextEncoder().encode(svg));
}

/**
 * The largest crop (a multiple of the network's crop multiple) whose training step fits `budget`
 * bytes: peak memory measured at two small crops and fitted linearly in voxels, as `plan` does.
 */
async function autoCrop(
  config: NetworkConfig,
  batch: number,
  budget: number,
  backend: BackendChoice["name"] | "auto",
): Promise<number> {
  await selectBackend(backend as Parameters<typeof selectBackend>[0]);
  const m = cropMultiple(config);
  const step = Math.max(8, m);
  const model = await cropModel(config, [2 * step, 3 * step], batch);
  const crop = maxCropEdge(model, budget, m, batch);
  if (crop < m) {
    throw new UsageError(
      `--budget ${(budget / 2 ** 30).toFixed(2)} GiB is too small: even a ${m}³ crop needs ${
        (predictPeak(model, m, batch) / 2 ** 30).toFixed(2)
      } GiB`,
    );
  }
  console.error(
    `train: --crop auto: ${crop} (predicted peak ${
      (predictPeak(model, crop, batch) / 2 ** 30).toFixed(2)
    } GiB of ${(budget / 2 ** 30).toFixed(2)} GiB; ${
      Math.round(model.fit.slope)
    } bytes/voxel measured at ${2 * step}³ and ${3 * step}³)`,
  );
  return crop;
}

function parseConfigFlag(value: string | undefined): NetworkConfig {
  if (value === undefined) return resolveConfig({});
  let text = value.trim();
  if (!text.startsWith("{")) {
    try {
      text = Deno.readTextFileSync(value);
    } catch (e) {
      throw new UsageError(
        `--config ${value}: neither inline JSON nor a readable file (${(e as Error).message})`,
      );
    }
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--config: not valid JSON (${(e as Error).message})`);
  }
  try {
    return resolveConfig(parsed as Partial<NetworkConfig>);
  } catch (e) {
    throw new UsageError(`--config: ${(e as Error).message}`);
  }
}

export const trainCommand: Command = {
  name: "train",
  summary: "Train the reversible U-Net on BraTS cases (checkpoints, resume, validation)",
  help: `Usage: deno task train --data URI --out URI [options]

Trains the reversible U-Net on the labelled BraTS cases under --data (a folder or s3:// prefix, any
naming convention), writing checkpoints, best weights, metrics.jsonl and curves.svg under --out.
SIGTERM or SIGINT (a preempted instance) saves a checkpoint and exits (status 143 or 130); run the
same command with --resume to continue exactly where it stopped.

Options:
  --data URI             cases to train on (required unless --resume)
  --out URI              output folder or s3:// prefix (required)
  --epochs N             epochs (default 10)
  --steps-per-epoch N    training steps per epoch (default 25)
  --crop N|auto          crop edge in voxels, a multiple of 8 (default 32); auto: the largest crop
                         whose training step fits --budget, from measured peak memory (as plan)
  --budget GiB           memory budget for --crop auto
  --batch N              crops per step (default 1)
  --lr X                 initial learning rate, decayed as (1 - step/total)^0.9 (default 3e-3)
  --optimizer adam|sgd   Adam, or SGD with Nesterov momentum 0.99 (default adam)
  --weight-decay X       L2 weight decay (default 0)
  --val-cases N          labelled cases held out for validation (default 1)
  --val-every N          validate every N epochs and after the last (default 1)
  --val-window N         sliding-window edge for validation (default: the crop)
  --config JSON|FILE     network configuration fields over the reference network
  --no-augment           no data augmentation
  --seed N               seed of the split, weights, crops and augmentation (default 0)
  --backend B            auto|tensorflow|webgpu|wasm|cpu (default cpu)
  --cache URI|none       preprocessed-case cache (default <out>/cache)
  --workers N            sampler threads preparing batches ahead (default 1; 0: none)
  --resume               continue the run under --out from its latest checkpoint (its settings)
  --report               at the end, write <out>/report/index.html: validation cases' slices with
                         reference and prediction, their metrics, and the training curves
  --quiet                no progress output
  --json                 print a JSON summary at the end

Example:
  deno task synth --out out/synth --cases 6 --size 96,96,72
  deno task train --data out/synth --out out/run1 --epochs 4 --steps-per-epoch 20 --crop 32`,
  async run(args) {
    const { values } = parseFlags("train", args, {
      data: { type: "string" },
      out: { type: "string" },
      epochs: { type: "string" },
      "steps-per-epoch": { type: "string" },
      crop: { type: "string" },
      budget: { type: "string" },
      batch: { type: "string" },
      lr: { type: "string" },
      optimizer: { type: "string" },
      "weight-decay": { type: "string" },
      "val-cases": { type: "string" },
      "val-every": { type: "string" },
      "val-window": { type: "string" },
      config: { type: "string" },
      "no-augment": { type: "boolean" },
      seed: { type: "string" },
      backend: { type: "string" },
      cache: { type: "string" },
      workers: { type: "string" },
      resume: { type: "boolean" },
      quiet: { type: "boolean" },
      report: { type: "boolean" },
      json: { type: "boolean" },
    });
    if (!values.out) throw new UsageError("--out is required (a folder or s3:// prefix)");
    if (!values.data && !values.resume) throw new UsageError("--data is required");
    const d = defaultSettings(values.data ?? "");
    const optimizer = values.optimizer ?? d.optimizer;
    if (optimizer !== "adam" && optimizer !== "sgd") {
      throw new UsageError(`--optimizer must be adam or sgd, got "${optimizer}"`);
    }
    const config = parseConfigFlag(values.config);
    const batch = intFlag("batch", values.batch, d.batch, 1, 256);
    const backend = backendFlag(values.backend);
    let crop: number;
    if (values.crop === "auto") {
      if (values.budget === undefined) throw new UsageError("--crop auto needs --budget GiB");
      const budget = numberFlag("budget", values.budget, 0, 0.001) * 2 ** 30;
      crop = await autoCrop(config, batch, budget, backend);
    } else {
      if (values.budget !== undefined) {
        throw new UsageError("--budget is only used with --crop auto");
      }
      crop = intFlag("crop", values.crop, d.crop, 8, 512);
    }
    const settings: TrainSettings = {
      data: values.data ?? "",
      epochs: intFlag("epochs", values.epochs, d.epochs, 1),
      stepsPerEpoch: intFlag("steps-per-epoch", values["steps-per-epoch"], d.stepsPerEpoch, 1),
      crop,
      batch,
      lr: numberFlag("lr", values.lr, d.lr, 0),
      optimizer,
      weightDecay: numberFlag("weight-decay", values["weight-decay"], d.weightDecay, 0),
      valCases: intFlag("val-cases", values["val-cases"], d.valCases, 0),
      valEvery: intFlag("val-every", values["val-every"], d.valEvery, 1),
      valWindow: intFlag("val-window", values["val-window"], crop, 8, 512),
      config,
      seed: intFlag("seed", values.seed, d.seed, 0),
      augment: !values["no-augment"],
      foregroundFraction: d.foregroundFraction,
    };
    const abort = new AbortController();
    let signalName: Deno.Signal | undefined;
    const listeners = (["SIGTERM", "SIGINT"] as const).map((sig) => {
      const handler = () => {
        if (signalName) return;
        signalName = sig;
        console.error(`train: ${sig} received; saving a checkpoint after this step`);
        abort.abort();
      };
      Deno.addSignalListener(sig, handler);
      return [sig, handler] as const;
    });
    try {
      const result = await train(settings, {
        out: values.out,
        resume: values.resume ?? false,
        backend,
        cache: values.cache === "none" ? "" : values.cache,
        workers: intFlag("workers", values.workers, 1, 0, 16),
        quiet: values.quiet ?? false,
        report: values.report ?? false,
        signal: abort.signal,
      });
      if (values.json) printJson(result);
      if (signalName) Deno.exit(signalName === "SIGTERM" ? 143 : 130);
    } finally {
      for (const [sig, handler] of listeners) Deno.removeSignalListener(sig, handler);
    }
  },
};
