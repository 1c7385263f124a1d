/**
 * `train`: trains the reversible U-Net on BraTS cases held under a storage URI.
 *
 * Stages, as nnU-Net separates them: find the labelled cases and split off validation cases
 * (seeded); preprocess every case once (brain crop, z-score; cached by the inputs' identity), held
 * in memory or, when they do not fit `caseMemory`, kept as local cache files that the samplers read
 * as they draw them; then epochs of random crops (a third forced onto tumor, augmented, prepared
 * ahead in a worker) through the reversible training step with a polynomial learning-rate decay;
 * sliding-window validation with Dice per region every few epochs; and after each epoch a
 * checkpoint, `metrics.jsonl` and `curves.svg` in the output. Every random draw of step k comes
 * from a generator seeded by (seed, k), so a resumed run draws what the uninterrupted run would
 * have. An aborted signal (SIGTERM or SIGINT on the command line) stops the run before its next
 * step, writes a checkpoint of where it is, even mid-epoch, and `--resume` continues from there bit
 * for bit on the cpu backend.
 *
 * Output layout under `--out`:
 * - `checkpoints/epoch-EEEE-step-SSSSSSS/{model,optimizer}.safetensors, state.json`: the latest
 *   two checkpoints; `latest.json` names the newest and is written last, so a run killed while
 *   writing a checkpoint resumes from the previous one;
 * - `best/model.safetensors`: the weights with the best mean validation Dice so far, or the latest
 *   weights when the run has no validation cases;
 * - `metrics.jsonl` (one JSON object per epoch), `curves.svg` (loss and validation Dice).
 *
 * The checkpoints are written and read by pipeline/checkpoint.ts; which settings `--resume` may
 * change is decided by tasks/_train_resume.ts.
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
import { cropModel, fitCrops, maxCropEdge, predictPeak } from "../model/memory.ts";
import {
  defaultCaseMemory,
  loadCases,
  STREAMED_CASES_PER_SAMPLER,
} from "../pipeline/training/mod.ts";
import { type Case, caseDataset, findCases } from "../pipeline/cases/mod.ts";
import { isBraTS, labelScheme } from "../pipeline/cases/mod.ts";
import { slidingWindowProbabilities } from "../pipeline/inference/mod.ts";
import {
  bratsEnhancingLabel,
  type Labels,
  labelsToRegions,
  probabilitiesToLabels,
  regionsToLabels,
} from "../pipeline/labels.ts";
import { meanScores, regionDice, type RegionScores } from "../pipeline/evaluation/mod.ts";
import {
  checkpointName,
  type EpochMetrics,
  latestUri,
  loadCheckpointWeights,
  newTrainState,
  readCheckpointState,
  type TrainSettings,
  type TrainState,
  writeBest,
  writeCheckpoint,
} from "../pipeline/training/mod.ts";
import { reportMetrics } from "../pipeline/report/mod.ts";
import { caseMetrics } from "../pipeline/evaluation/mod.ts";
import { renderCurves } from "../pipeline/report/mod.ts";
import { renderCaseSlices, writeReport } from "../pipeline/report/mod.ts";
import { BatchPrefetcher } from "../pipeline/cases/mod.ts";
import { caseAt, type Cases } from "../pipeline/cases/mod.ts";
import { formatDuration, Progress } from "../pipeline/report/mod.ts";
import { streamRandom } from "../pipeline/cases/mod.ts";
import {
  exists,
  getObject,
  joinUri,
  putObject,
  removeStaleWritesUnder,
} from "../pipeline/storage/mod.ts";
import { acquireRunLock, isWithin, type RunLock } from "../pipeline/storage/mod.ts";
import {
  backendFlag,
  type Command,
  intFlag,
  numberFlag,
  parseFlags,
  printJson,
  UsageError,
} from "./_cli.ts";
import { resumedSettings } from "./_train_resume.ts";
import { unetPredictor } from "../model/mod.ts";

export type { EpochMetrics, TrainSettings } from "../pipeline/training/mod.ts";
export { resumedSettings } from "./_train_resume.ts";

/** How a run is executed: does not change its result. */
export interface TrainRuntime {
  out: string;
  resume?: boolean;
  backend?: BackendChoice["name"] | "auto";
  /** Preprocessed-case cache URI; "" for none. */
  cache?: string;
  /** Sampler worker threads (0: main thread). */
  workers?: number;
  /**
   * Bytes the run's preprocessed cases (training and validation) may take in memory. When they
   * need more, they are kept on local disk in the case cache (a temporary folder when the cache
   * is on S3 or off) and read when drawn, a few at a time per sampler; 0 always streams. The
   * batches, and so the run's result, are the same either way.
   * @default {@linkcode defaultCaseMemory}()
   */
  caseMemory?: number;
  quiet?: boolean;
  /** Stop (with a checkpoint) once this many epochs are complete: for tests and time-boxed jobs. */
  stopAfterEpoch?: number;
  /**
   * When aborted, the run starts no further step: it stops between cases while loading them, before
   * the next step, or between validation cases (abandoning the validation, which the resumed run
   * redoes), writes a checkpoint of its current weights and state, and returns with `interrupted`.
   */
  signal?: AbortSignal;
  /** Told of each case loaded, step taken and validation case scored, as they happen. */
  onProgress?: (event: TrainEvent) => void;
  /** At the end, write `<out>/report/index.html` (validation cases, metrics, curves). */
  report?: boolean;
}

/** What {@linkcode TrainRuntime.onProgress} is told. `step` counts the steps of the whole run. */
export type TrainEvent =
  | { kind: "case-loaded"; id: string; done: number; total: number }
  | { kind: "step"; epoch: number; step: number; loss: number }
  | { kind: "validated-case"; epoch: number; id: string; done: number; total: number };

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
  /**
   * Where the cases were read from while training, when they did not fit `caseMemory`: a local
   * folder of cache entries; `temporary` when the run made it (and has removed it).
   */
  streamed?: { dir: string; temporary: boolean };
}

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

/** Options of {@linkcode validate}. */
export interface ValidateOptions {
  /** Checked before each case: once aborted, validation stops by throwing the signal's reason. */
  signal?: AbortSignal;
  /** Called after each case with its id and the number of cases done. */
  onCase?: (id: string, done: number) => void;
  /** The dataset's regions and labels. @default the BraTS regions WT, TC, ET */
  labels?: Labels;
}

/**
 * Mean Dice per region of sliding-window predictions on the validation cases (in memory, or read
 * one at a time when streamed), scored as `evaluate` scores what `segment` writes with these
 * weights and the same window: the probabilities converted to labels (pipeline/labels.ts), their
 * regions compared with the reference's, whose voxels outside the brain's box count as missed.
 * @throws the signal's reason when `options.signal` is aborted before a case
 */
export async function validate(
  net: UNet,
  cases: Cases,
  window: number,
  options: ValidateOptions = {},
): Promise<RegionScores> {
  const scores: RegionScores[] = [];
  for (let i = 0; i < cases.length; i++) {
    options.signal?.throwIfAborted();
    const c = caseAt(cases, i);
    const probs = await slidingWindowProbabilities(unetPredictor(net), c.image, c.box.size, {
      window,
      overlap: 0.5,
    });
    // The regions of a BraTS label volume do not depend on the enhancing label's value.
    const labels = options.labels ?? 4;
    const predicted = labelsToRegions(probabilitiesToLabels(probs, labels), labels);
    const names = typeof labels === "number" ? undefined : labels.regions.map((r) => r.name);
    scores.push(regionDice(predicted, c.regions!, c.regionsOutside, names));
    options.onCase?.(c.id, scores.length);
  }
  return meanScores(scores);
}

const GIB = 2 ** 30;

/**
 * Trains; see the module documentation.
 *
 * A new run takes every setting from `settings`. With `runtime.resume` the run under `runtime.out`
 * continues from its latest checkpoint with the settings stored there; `settings` then holds only
 * what the caller asks for, and {@linkcode resumedSettings} decides what may change (`epochs`,
 * `valEvery`, `valWindow`, `data`) and rejects the rest when it differs.
 */
export function train(settings: TrainSettings, runtime: TrainRuntime): Promise<TrainResult>;
export function train(
  settings: Partial<TrainSettings>,
  runtime: TrainRuntime & { resume: true },
): Promise<TrainResult>;
export async function train(
  requested: Partial<TrainSettings>,
  runtime: TrainRuntime,
): Promise<TrainResult> {
  const out = runtime.out;
  const progress = new Progress({ quiet: runtime.quiet });
  const log = (m: string) => progress.log(`train: ${m}`);
  const emit = (e: TrainEvent) => runtime.onProgress?.(e);
  const aborted = () => runtime.signal?.aborted ?? false;
  // Before the backend loads: a run must not write into the cases it reads.
  if (!runtime.resume && requested.data !== undefined) await refuseOutInData(out, requested.data);
  const backend = await selectBackend(
    (runtime.backend ?? "cpu") as Parameters<typeof selectBackend>[0],
    log,
  );
  const latest = latestUri(out);

  let settings: TrainSettings;
  let state: TrainState;
  // A new run's network is made once the dataset says its input channels and output regions.
  let net: UNet | undefined;
  let optimizer: Optimizer;
  /** The checkpoint that holds the current state, when one does. */
  let saved: string | undefined;
  if (runtime.resume) {
    if (!(await exists(latest))) {
      throw new Error(`--resume: ${latest} does not exist; there is no run to resume there`);
    }
    const { checkpoint, dir, state: stored, files } = await readCheckpointState(out);
    state = stored;
    const resumed = resumedSettings(state.settings, requested, state);
    settings = state.settings = resumed.settings;
    await refuseOutInData(out, settings.data);
    ({ net, optimizer } = await loadCheckpointWeights(dir, files));
    // A changed setting is stored by the next checkpoint, even one written before any step.
    saved = resumed.changes.length > 0 ? undefined : checkpoint;
    log(`resuming ${out} at epoch ${state.epoch}, step ${state.globalStep} (${checkpoint})`);
    for (const change of resumed.changes) log(change);
  } else {
    settings = requested as TrainSettings;
    checkSettings(settings);
    if (await exists(latest)) {
      throw new Error(
        `${out} already holds a training run (${latest}); pass --resume to continue it or choose another --out`,
      );
    }
    state = newTrainState(settings);
    optimizer = new Optimizer({ kind: settings.optimizer, weightDecay: settings.weightDecay });
  }

  const prefetcher: { current?: BatchPrefetcher } = {};
  /** The folder streamed cases were written to, when the run made one: removed at the end. */
  let tempDir: string | undefined;
  let streamed: TrainResult["streamed"];
  let lock: RunLock | undefined;
  try {
    // Cases: find, split, preprocess (cached).
    // A missing folder, or one without case files, is an error saying which and what is expected.
    const { cases: found, problems } = await findCases(settings.data, { required: true });
    // A case that cannot be read is an error, not skipped: the split, and so the run, would
    // silently depend on which files happened to be readable. A resumed run only needs its own.
    const ownIds = new Set([...state.split.train, ...state.split.val]);
    const fatal = ownIds.size > 0 ? problems.filter((p) => ownIds.has(p.id)) : problems;
    for (const p of problems) {
      if (!fatal.includes(p)) log(`skipping case ${p.id} (not part of this run): ${p.error}`);
    }
    if (fatal.length > 0) {
      throw new Error(
        `${settings.data}: ${fatal.length} case${
          fatal.length === 1 ? "" : "s"
        } cannot be used; fix or remove ${fatal.length === 1 ? "it" : "them"} and run again:\n  ${
          fatal.map((p) => p.error).join("\n  ")
        }`,
      );
    }
    const labelled = found.filter((c) => c.seg);
    if (labelled.length === 0) {
      throw new Error(`${settings.data}: no labelled cases (image files with a _seg) to train on`);
    }
    // The network follows the data: its channels in, its regions out, kept in the model file.
    const dataset = caseDataset(labelled[0]);
    const scheme: Labels = isBraTS(dataset) ? 4 : labelScheme(dataset, settings.data);
    const regionNames = typeof scheme === "number"
      ? ["WT", "TC", "ET"]
      : scheme.regions.map((r) => r.name);
    const io = { inChannels: dataset.channels.length, outChannels: regionNames.length };
    if (!net) {
      const c = settings.config;
      if (c.inChannels !== io.inChannels || c.outChannels !== io.outChannels) {
        log(
          `${settings.data}: ${io.inChannels} channel${io.inChannels === 1 ? "" : "s"} (${
            dataset.channels.join(", ")
          }) in, ${io.outChannels} region${io.outChannels === 1 ? "" : "s"} (${
            regionNames.join(", ")
          }) out`,
        );
      }
      settings.config = state.settings.config = { ...c, ...io };
      net = createUNet(settings.config, { seed: settings.seed });
    } else if (
      net.config.inChannels !== io.inChannels || net.config.outChannels !== io.outChannels
    ) {
      throw new Error(
        `${settings.data}: its cases have ${io.inChannels} channels and ${io.outChannels} ` +
          `regions, the run being resumed ${net.config.inChannels} and ${net.config.outChannels}`,
      );
    }
    const modelDataset = { dataset: JSON.stringify(dataset) };
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
    // Taken before the run's first write (its cases' cache entries), after everything that can
    // refuse the run without writing: a refused run leaves no lock behind, nor a folder for it.
    lock = await acquireRunLock(out, "train", log);
    // Holding the lock, the run's folder is its own: temporary files there are of writes killed
    // mid-way (SIGKILL during a checkpoint), never to be finished.
    const stray = await removeStaleWritesUnder(out);
    if (stray.length > 0) {
      log(`removed what killed writes left under ${out}: ${stray.join(", ")}`);
    }
    if (!runtime.resume && await exists(latest)) {
      throw new Error(
        `${out} already holds a training run (${latest}), written since this run started; pass --resume to continue it or choose another --out`,
      );
    }
    const cacheUri = runtime.cache === undefined
      ? joinUri(out, "cache")
      : runtime.cache === ""
      ? undefined
      : runtime.cache;
    const t0 = performance.now();
    const workers = runtime.workers ?? 1;
    const loaded = await loadCases(split.train, split.val, {
      cacheUri,
      budget: runtime.caseMemory ?? defaultCaseMemory(),
      // Training cases go straight into shared memory when sampler workers read them: the
      // prefetcher then uses them where they are instead of holding a second copy.
      shared: workers > 0,
      aborted,
      onCase: (id, done, total) => emit({ kind: "case-loaded", id, done, total }),
      onTemporaryDir: (dir) => (tempDir = dir),
      log,
    });
    const { train: trainCases, val: valCases } = loaded;
    if (loaded.streamedFrom) {
      streamed = { dir: loaded.streamedFrom, temporary: loaded.streamedFrom === tempDir };
    }
    let interrupted = aborted();
    if (!interrupted) {
      log(
        `${trainCases.length} training and ${valCases.length} validation cases ready in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s (${loaded.fromCache} from the cache${cacheUri ? ` ${cacheUri}` : ""})`,
      );
    }

    const s = settings;
    const totalSteps = s.epochs * s.stepsPerEpoch;
    const shape = [s.batch, s.crop, s.crop, s.crop];
    let lastLoss: number | null = null;
    let lastValDice: RegionScores | null = state.history.at(-1)?.val_dice ?? null;
    const runStart = performance.now();
    const stepsAtStart = state.globalStep;
    const stopAfter = Math.min(runtime.stopAfterEpoch ?? s.epochs, s.epochs);
    if (!interrupted && state.epoch < stopAfter) {
      prefetcher.current = new BatchPrefetcher(trainCases, {
        batch: s.batch,
        seed: s.seed,
        workers,
        sampling: {
          crop: s.crop,
          foregroundFraction: s.foregroundFraction,
          ...(s.augment ? {} : { augment: false }),
        },
      });
    }

    while (!interrupted && state.epoch < stopAfter) {
      const epochStart = performance.now() - state.epochSeconds * 1000;
      while (state.stepInEpoch < s.stepsPerEpoch) {
        // A signal stops the run before the next step starts, also one that came while waiting
        // for the batch.
        if (aborted()) break;
        const batch = await prefetcher.current!.next(state.globalStep);
        if (aborted()) break;
        const lr = polyLearningRate(s.lr, state.globalStep, totalSteps);
        const x = tf.tensor5d(
          batch.image,
          [...shape, net.config.inChannels] as [number, number, number, number, number],
        );
        const y = tf.tensor5d(
          batch.target,
          [...shape, net.config.outChannels] as [number, number, number, number, number],
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
        state.rng.counter = state.globalStep; // checked against globalStep when resumed
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
        emit({ kind: "step", epoch: state.epoch + 1, step: state.globalStep, loss });
      }
      state.epochSeconds = (performance.now() - epochStart) / 1000;
      if (aborted()) {
        interrupted = true;
        break;
      }

      // End of an epoch: validation, best weights, metrics, curves, checkpoint.
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
        let dice: RegionScores;
        try {
          dice = await validate(net, valCases, s.valWindow, {
            labels: scheme,
            signal: runtime.signal,
            onCase: (id, done) =>
              emit({
                kind: "validated-case",
                epoch: metrics.epoch,
                id,
                done,
                total: valCases.length,
              }),
          });
        } catch (e) {
          // A signal abandons the validation: the checkpoint below holds the epoch's steps, and
          // the resumed run validates and records the epoch before its next step.
          if (runtime.signal?.aborted && e === runtime.signal.reason) {
            interrupted = true;
            break;
          }
          throw e;
        }
        const mean = regionNames.reduce((a, r) => a + dice[r], 0) / regionNames.length;
        metrics.val_dice = dice;
        metrics.val_mean_dice = mean;
        lastValDice = dice;
        log(
          `epoch ${metrics.epoch}: loss ${metrics.loss.toFixed(4)}, validation Dice ${
            regionNames.map((r) => `${r} ${dice[r].toFixed(3)}`).join(" ")
          } (${((performance.now() - v0) / 1000).toFixed(1)} s)`,
        );
        if (!state.best || mean > state.best.meanDice) {
          state.best = { epoch: metrics.epoch, meanDice: mean };
          await writeBest(out, net, {
            crop: s.crop,
            epoch: metrics.epoch,
            valDice: dice,
            valWindow: s.valWindow,
          }, modelDataset);
        }
      } else {
        if (valCases.length === 0) {
          // Nothing to choose the best weights by: best/ holds the latest, so that <out>/best
          // names the run's model either way.
          await writeBest(out, net, { crop: s.crop, epoch: metrics.epoch }, modelDataset);
        }
        log(`epoch ${metrics.epoch}: loss ${metrics.loss.toFixed(4)}`);
      }
      state.history.push(metrics);
      state.epoch++;
      state.stepInEpoch = 0;
      state.epochLossSum = 0;
      state.epochSeconds = 0;
      await writeReports(out, state.history, regionNames);
      saved = await writeCheckpoint(out, net, optimizer, state, modelDataset);
      if (aborted()) interrupted = true;
    }
    if (interrupted) {
      if (checkpointName(state) !== saved) {
        saved = await writeCheckpoint(out, net, optimizer, state, modelDataset);
      }
      log(
        `stopped at epoch ${state.epoch + 1}, step ${state.stepInEpoch}/${s.stepsPerEpoch} ` +
          `(global step ${state.globalStep}): checkpoint ${saved}; continue with --resume`,
      );
    }
    const seconds = (performance.now() - runStart) / 1000;
    log(`done: ${state.globalStep - stepsAtStart} steps in ${formatDuration(seconds)}`);
    let report: string | undefined;
    if (runtime.report && !interrupted) {
      report = await trainingReport(out, net, split.val, valCases, s, state.history, scheme);
      log(`report: ${report}`);
    }
    return {
      ...(report ? { report } : {}),
      ...(streamed ? { streamed } : {}),
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
    if (net) disposeUNet(net);
    if (tempDir) {
      await Deno.remove(tempDir, { recursive: true }).catch((e) => {
        if (!(e instanceof Deno.errors.NotFound)) {
          log(`could not remove the temporary case folder ${tempDir}: ${(e as Error).message}`);
        }
      });
    }
    await lock?.release();
  }
}

/**
 * Refuses an output equal to or inside the data folder: its checkpoints, cache and reports would
 * be written among the cases it reads (and found as cases by the next run).
 */
async function refuseOutInData(out: string, data: string): Promise<void> {
  if (data !== "" && await isWithin(out, data)) {
    throw new UsageError(
      `--out ${out} is ${
        (await isWithin(data, out)) ? "the --data folder" : `inside the --data folder ${data}`
      }: a run writes its checkpoints, cache and reports there; choose an --out outside it`,
    );
  }
}

/**
 * The end-of-training report: each validation case's FLAIR (z-scored, on its brain box) with the
 * reference and the final network's prediction, their metrics, and the training curves.
 */
async function trainingReport(
  out: string,
  net: UNet,
  cases: Case[],
  preprocessed: Cases,
  s: TrainSettings,
  history: EpochMetrics[],
  labels: Labels,
): Promise<string> {
  const entries = [];
  for (let i = 0; i < preprocessed.length; i++) {
    const p = caseAt(preprocessed, i);
    const c = cases[i];
    const probs = await slidingWindowProbabilities(unetPredictor(net), p.image, p.box.size, {
      window: s.valWindow,
    });
    // BraTS cases in their own convention; other datasets' labels are scored by `evaluate` only
    // as BraTS regions, so their report shows slices without metrics.
    const own = c.enhancingLabel ?? labels;
    const prediction = probabilitiesToLabels(probs, own);
    const truth = regionsToLabels(p.regions!, own);
    const ch = net.config.inChannels;
    const flair = new Float32Array(p.image.length / ch).map((_, j) => p.image[ch * j]);
    const spacing = (c.spacing ?? [1, 1, 1]) as [number, number, number];
    const e = bratsEnhancingLabel(own);
    const m = e ? caseMetrics(prediction, truth, p.box.size, spacing, e) : undefined;
    entries.push({
      id: c.id,
      slices: renderCaseSlices({ flair, dims: p.box.size, spacing, truth, prediction }),
      ...(m ? { metrics: reportMetrics(m) } : {}),
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

/** `metrics.jsonl` and `curves.svg`, rewritten whole (object storage has no append). */
async function writeReports(
  out: string,
  history: EpochMetrics[],
  regions: readonly string[] = ["WT", "TC", "ET"],
) {
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
      series: regions.map((r, i) => ({
        name: r,
        color: ["#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"][i % 7],
        points: val.map((h) => [h.epoch, h.val_dice![r]] as [number, number]),
      })),
    },
  ]);
  await putObject(joinUri(out, "curves.svg"), new TextEncoder().encode(svg));
}

/**
 * The largest crop (a multiple of the network's crop multiple) whose training step fits `budget`
 * bytes: peak memory measured at two crops and fitted linearly in voxels, as `plan` does.
 */
async function autoCrop(
  config: NetworkConfig,
  batch: number,
  budget: number,
  backend: BackendChoice["name"] | "auto",
): Promise<number> {
  await selectBackend(backend as Parameters<typeof selectBackend>[0]);
  const m = cropMultiple(config);
  const crops = fitCrops(config);
  const model = await cropModel(config, crops, batch);
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
    } bytes/voxel measured at ${crops[0]}³ and ${crops[1]}³)`,
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
  help: `Usage: deno task train --data <uri> --out <uri> [options]
       deno task train --out <uri> --resume [--epochs <n>] [options]

Trains the reversible U-Net on the labelled BraTS cases under --data (a folder or s3:// prefix, any
naming convention), writing checkpoints, best weights, metrics.jsonl and curves.svg under --out.
A case that cannot be read (a damaged file, a missing modality) is an error naming it.

SIGTERM or SIGINT (a preempted instance) stops the run before its next step starts, also while cases
are loading or validation is running (validation is then abandoned and redone on resume), saves a
checkpoint of the current weights, even mid-epoch, and exits with status 143 or 130. Run the command
again with --resume to continue exactly where it stopped.

Options:
  --data <uri>            cases to train on (required unless --resume)
  --out <uri>             output folder or s3:// prefix (required)
  --epochs <n>            epochs (default 10); with --resume, the run's new length (see --resume)
  --steps-per-epoch <n>   training steps per epoch (default 25)
  --crop <n>|auto         crop edge in voxels, a multiple of 8 (default 32); auto: the largest crop
                          whose training step fits --budget, from measured peak memory (as plan)
  --budget <gib>          memory budget for --crop auto
  --batch <n>             crops per step (default 1)
  --lr <x>                initial learning rate, decayed as (1 - step/total)^0.9 (default 3e-3)
  --optimizer adam|sgd    Adam, or SGD with Nesterov momentum 0.99 (default adam)
  --weight-decay <x>      decoupled (AdamW) for adam, L2 for sgd (default 0)
  --val-cases <n>         labelled cases held out for validation (default 1); with 0, <out>/best
                          holds the latest weights (rewritten after every epoch)
  --val-every <n>         validate every N epochs and after the last (default 1)
  --val-window <n>        sliding-window edge for validation (default: the crop)
  --config <json>|<file>  network configuration fields over the reference network
  --no-augment            no data augmentation
  --seed <n>              seed of the split, weights, crops and augmentation (default 0)
  --backend <backend>     auto|tensorflow|webgpu|wasm|cpu (default cpu)
  --cache <uri>|none      preprocessed-case cache (default <out>/cache)
  --case-memory <gib>     memory the preprocessed cases may take (default: half the machine's
                          memory, or 8 GiB when it cannot be read). Cases needing more stay on
                          local disk, and each sampler reads the ones it draws (keeping the last
                          ${STREAMED_CASES_PER_SAMPLER}): from --cache when it is a local folder, else from a temporary
                          folder removed at the end of the run. Same batches and weights either
                          way; 0 always streams
  --workers <n>           sampler threads preparing batches ahead (default 1; 0: none)
  --resume                continue the run under --out from its latest checkpoint, with the settings
                          it started with. --epochs <n> makes it longer or shorter (not shorter than
                          the epoch in progress); the learning rate then decays over the new total
                          from the current step on. --val-every, --val-window and --data (the same
                          cases, found by id, moved elsewhere) may change too; any other setting
                          flag must repeat the run's value or is an error naming it (--crop auto
                          keeps the run's crop). --backend, --workers, --cache, --case-memory,
                          --report, --quiet and --json apply as given (another backend continues
                          the run, but not bit for bit)
  --report                at the end, write <out>/report/index.html: validation cases' slices with
                          reference and prediction, their metrics, and the training curves
  --quiet                 no progress output
  --json                  print a JSON summary at the end

Examples:
  deno task synth --out out/synth --cases 6 --size 96,96,72
  deno task train --data out/synth --out out/run1 --epochs 4 --steps-per-epoch 20 --crop 32
  deno task train --out out/run1 --resume              # after SIGTERM: continue exactly
  deno task train --out out/run1 --resume --epochs 8   # train the finished run 4 epochs longer`,
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
      "case-memory": { type: "string" },
      workers: { type: "string" },
      resume: { type: "boolean" },
      quiet: { type: "boolean" },
      report: { type: "boolean" },
      json: { type: "boolean" },
    });
    if (!values.out) throw new UsageError("--out is required (a folder or s3:// prefix)");
    const resume = values.resume ?? false;
    if (!values.data && !resume) throw new UsageError("--data is required");
    const d = defaultSettings(values.data ?? "");
    // The settings the command line names. A new run fills the rest with defaults; a resumed run
    // compares these with its stored settings (resumedSettings), so defaults must not be added.
    const given: Partial<TrainSettings> = {};
    const set = <K extends keyof TrainSettings>(key: K, value: TrainSettings[K] | undefined) => {
      if (value !== undefined) given[key] = value;
    };
    const optional = <T>(flag: string | undefined, parse: (v: string) => T) =>
      flag === undefined ? undefined : parse(flag);
    set("data", values.data);
    set("epochs", optional(values.epochs, (v) => intFlag("epochs", v, d.epochs, 1)));
    set(
      "stepsPerEpoch",
      optional(values["steps-per-epoch"], (v) => intFlag("steps-per-epoch", v, 0, 1)),
    );
    set("batch", optional(values.batch, (v) => intFlag("batch", v, d.batch, 1, 256)));
    set("lr", optional(values.lr, (v) => numberFlag("lr", v, d.lr, 0)));
    set(
      "optimizer",
      optional(values.optimizer, (v) => {
        if (v !== "adam" && v !== "sgd") {
          throw new UsageError(`--optimizer must be adam or sgd, got "${v}"`);
        }
        return v;
      }),
    );
    set(
      "weightDecay",
      optional(values["weight-decay"], (v) => numberFlag("weight-decay", v, 0, 0)),
    );
    set("valCases", optional(values["val-cases"], (v) => intFlag("val-cases", v, 0, 0)));
    set("valEvery", optional(values["val-every"], (v) => intFlag("val-every", v, 1, 1)));
    set("valWindow", optional(values["val-window"], (v) => intFlag("val-window", v, 8, 8, 512)));
    set("config", optional(values.config, parseConfigFlag));
    set("seed", optional(values.seed, (v) => intFlag("seed", v, 0, 0)));
    if (values["no-augment"]) given.augment = false;
    const backend = backendFlag(values.backend);
    const workers = intFlag("workers", values.workers, 1, 0, 16);
    const caseMemory = values["case-memory"] === undefined
      ? undefined
      : numberFlag("case-memory", values["case-memory"], 0, 0) * GIB;
    if (values.crop === "auto") {
      if (values.budget === undefined) throw new UsageError("--crop auto needs --budget <gib>");
      const budget = numberFlag("budget", values.budget, 0, 0.001) * 2 ** 30;
      if (resume) {
        if (!values.quiet) {
          console.error("train: --crop auto with --resume: the run keeps the crop it started with");
        }
      } else {
        given.crop = await autoCrop(
          given.config ?? d.config,
          given.batch ?? d.batch,
          budget,
          backend,
        );
      }
    } else {
      if (values.budget !== undefined) {
        throw new UsageError("--budget is only used with --crop auto");
      }
      set("crop", optional(values.crop, (v) => intFlag("crop", v, d.crop, 8, 512)));
    }
    const fresh = resume
      ? undefined
      : { ...d, ...given, valWindow: given.valWindow ?? given.crop ?? d.crop };
    // A crop the network cannot take is a usage error before the backend loads.
    if (fresh) checkSettings(fresh);
    const runtime = {
      out: values.out,
      backend,
      cache: values.cache === "none" ? "" : values.cache,
      workers,
      ...(caseMemory === undefined ? {} : { caseMemory }),
      quiet: values.quiet ?? false,
      report: values.report ?? false,
    };
    const abort = new AbortController();
    let signalName: Deno.Signal | undefined;
    const listeners = (["SIGTERM", "SIGINT"] as const).map((sig) => {
      const handler = () => {
        if (signalName) return;
        signalName = sig;
        console.error(`train: ${sig} received; stopping before the next step to save a checkpoint`);
        abort.abort();
      };
      Deno.addSignalListener(sig, handler);
      return [sig, handler] as const;
    });
    try {
      const result = resume
        ? await train(given, { ...runtime, resume: true, signal: abort.signal })
        : await train(fresh!, { ...runtime, signal: abort.signal });
      if (values.json) printJson(result);
      if (signalName) Deno.exit(signalName === "SIGTERM" ? 143 : 130);
    } finally {
      for (const [sig, handler] of listeners) Deno.removeSignalListener(sig, handler);
    }
  },
};
