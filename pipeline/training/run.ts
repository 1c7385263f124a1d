/**
 * A training run, as a sequence: open a new run or resume one, prepare its cases, step through its
 * epochs, end each epoch, finish.
 *
 * - Open: a new run checks its settings and that `out` holds no run yet; a resumed run reads its
 *   latest checkpoint, its settings (those it may change applied, {@linkcode resumedSettings}),
 *   weights and optimizer state.
 * - Prepare cases: find the labelled cases and split off validation cases (seeded, or the split
 *   of the run being resumed), make the network for the dataset's channels and regions, take the
 *   run lock, and preprocess every case once (brain crop, z-score; cached by the inputs' identity),
 *   held in memory or, when they do not fit `caseMemory`, kept as local cache files that the
 *   samplers read as they draw them.
 * - Step: random crops (a third forced onto tumor, augmented, prepared ahead in a worker) through
 *   the reversible training step with a polynomial learning-rate decay. Every random draw of step k
 *   comes from a generator seeded by (seed, k), so a resumed run draws what the uninterrupted run
 *   would have.
 * - End of epoch: sliding-window validation with Dice per region every few epochs, the best
 *   weights, `metrics.jsonl` and `curves.svg`, a checkpoint.
 * - Finish: an aborted run writes a checkpoint of where it is, even mid-epoch, which `resume`
 *   continues bit for bit on the cpu backend; the report, when asked for.
 *
 * Output layout under `out`:
 * - `checkpoints/epoch-EEEE-step-SSSSSSS/{model,optimizer}.safetensors, state.json`: the latest
 *   two checkpoints; `latest.json` names the newest and is written last, so a run killed while
 *   writing a checkpoint resumes from the previous one (checkpoint.ts);
 * - `best/model.safetensors`: the weights with the best mean validation Dice so far, or the latest
 *   weights when the run has no validation cases;
 * - `metrics.jsonl` (one JSON object per epoch), `curves.svg` (loss and validation Dice).
 *
 * The run prints nothing: it tells `onProgress` its log lines and progress (events.ts).
 * @module
 */
import * as tf from "../../model/tf.ts";
import {
  type BackendChoice,
  type BackendName,
  createUNet,
  disposeUNet,
  Optimizer,
  polyLearningRate,
  trainStepAsync,
  type UNet,
} from "../../model/mod.ts";
import { type Batch, BatchPrefetcher, type Case, type Cases } from "../cases/mod.ts";
import type { RegionScores } from "../evaluation/mod.ts";
import { formatDuration } from "../report/mod.ts";
import {
  acquireRunLock,
  exists,
  joinUri,
  removeStaleWritesUnder,
  type RunLock,
} from "../storage/mod.ts";
import {
  checkpointName,
  type EpochMetrics,
  latestUri,
  type TrainState,
  writeBest,
  writeCheckpoint,
} from "./checkpoint.ts";
import { type OpenedRun, openRun, type RunContext } from "./_open.ts";
import type { TrainEvent } from "./events.ts";
import { trainingReport, writeReports } from "./reports.ts";
import { METADATA_KEYS } from "./model_store.ts";
import { labelledCases, type RunDataset, runDataset, runSplit } from "./run_cases.ts";
import type { TrainSettings } from "./settings.ts";
import { defaultCaseMemory, loadCases } from "./training_cases.ts";
import { validate } from "./validation.ts";

/** How a run is executed: does not change its result. */
export interface TrainRuntime {
  out: string;
  resume?: boolean;
  /** @default "cpu" */
  backend?: BackendName;
  /** Preprocessed-case cache URI; "" for none. @default `<out>/cache` */
  cache?: string;
  /** Sampler worker threads (0: main thread). @default 1 */
  workers?: number;
  /**
   * Bytes the run's preprocessed cases (training and validation) may take in memory. When they
   * need more, they are kept on local disk in the case cache (a temporary folder when the cache
   * is on S3 or off) and read when drawn, a few at a time per sampler; 0 always streams. The
   * batches, and so the run's result, are the same either way.
   * @default {@linkcode defaultCaseMemory}()
   */
  caseMemory?: number;
  /** Stop (with a checkpoint) once this many epochs are complete: for tests and time-boxed jobs. */
  stopAfterEpoch?: number;
  /**
   * When aborted, the run starts no further step: it stops between cases while loading them, before
   * the next step, or between validation cases (abandoning the validation, which the resumed run
   * redoes), writes a checkpoint of its current weights and state, and returns with `interrupted`.
   */
  signal?: AbortSignal;
  /**
   * Told of each log line, case loaded, step taken and validation case scored, as they happen
   * ({@linkcode trainEventPrinter} prints them as the command line does).
   */
  onProgress?: (event: TrainEvent) => void;
  /** At the end, write `<out>/report/index.html` (validation cases, metrics, curves). */
  report?: boolean;
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
  /**
   * Where the cases were read from while training, when they did not fit `caseMemory`: a local
   * folder of cache entries; `temporary` when the run made it (and has removed it).
   */
  streamed?: { dir: string; temporary: boolean };
}

/**
 * Trains; see the module documentation.
 *
 * A new run takes every setting from `settings`. With `runtime.resume` the run under `runtime.out`
 * continues from its latest checkpoint with the settings stored there; `settings` then holds only
 * what the caller asks for, and {@linkcode resumedSettings} decides what may change (`epochs`,
 * `valEvery`, `valWindow`, `data`) and rejects the rest when it differs.
 * @throws {SettingsError} naming the flag of a setting the run cannot take, or an `--out` inside
 *   the data
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
  const run = new TrainRun(await openRun(requested, runtime));
  try {
    await run.prepareCases();
    while (run.hasEpochToRun()) {
      if (!(await run.epochSteps())) break;
      if (!(await run.endOfEpoch())) break;
    }
    return await run.finish();
  } finally {
    await run.close();
  }
}

/** The run's cases, split and loaded, and what the dataset says about them. */
interface RunCases extends RunDataset {
  split: { train: Case[]; val: Case[] };
  train: Cases;
  val: Cases;
  /** Stored with every model file the run writes. */
  modelDataset: Record<string, string>;
}

/** A run in progress: its settings and state, its network and optimizer, its cases. */
class TrainRun {
  state: TrainState;
  net?: UNet;
  optimizer: Optimizer;
  saved?: string;
  cases?: RunCases;
  prefetcher?: BatchPrefetcher;
  /** The folder streamed cases were written to, when the run made one: removed at the end. */
  tempDir?: string;
  streamed?: TrainResult["streamed"];
  lock?: RunLock;
  interrupted = false;
  lastLoss: number | null = null;
  lastValDice: RegionScores | null;
  runStart = 0;
  stepsAtStart: number;
  stopAfter: number;

  readonly ctx: RunContext;
  readonly backend: BackendChoice;

  constructor({ ctx, backend, opened }: OpenedRun) {
    this.ctx = ctx;
    this.backend = backend;
    this.state = opened.state;
    this.net = opened.net;
    this.optimizer = opened.optimizer;
    this.saved = opened.saved;
    this.lastValDice = this.state.history.at(-1)?.val_dice ?? null;
    this.stepsAtStart = this.state.globalStep;
    const epochs = this.state.settings.epochs;
    this.stopAfter = Math.min(ctx.runtime.stopAfterEpoch ?? epochs, epochs);
  }

  get s(): TrainSettings {
    return this.state.settings;
  }

  /** Cases: find, split, make the network, take the run's folder, preprocess (cached). */
  async prepareCases(): Promise<void> {
    const { s, state, ctx } = this;
    const own = new Set([...state.split.train, ...state.split.val]);
    const labelled = await labelledCases(s.data, own, ctx.log);
    const data = runDataset(labelled[0], s.data);
    this.makeNetwork(data);
    const split = runSplit(labelled, state.split, s);
    if (state.split.train.length === 0) {
      state.split = { train: split.train.map((c) => c.id), val: split.val.map((c) => c.id) };
    }
    await this.claimOut();
    const loaded = await this.loadCases(split);
    this.cases = {
      ...data,
      split,
      ...loaded,
      modelDataset: { [METADATA_KEYS.dataset]: JSON.stringify(data.dataset) },
    };
    this.runStart = performance.now();
    if (this.hasEpochToRun()) {
      this.prefetcher = new BatchPrefetcher(loaded.train, {
        batch: s.batch,
        seed: s.seed,
        workers: ctx.runtime.workers ?? 1,
        sampling: {
          crop: s.crop,
          foregroundFraction: s.foregroundFraction,
          ...(s.augment ? {} : { augment: false }),
        },
      });
    }
  }

  /** The network follows the data: its channels in, its regions out, kept in the model file. */
  private makeNetwork({ dataset, regionNames, io }: RunDataset): void {
    const s = this.s;
    if (!this.net) {
      const c = s.config;
      if (c.inChannels !== io.inChannels || c.outChannels !== io.outChannels) {
        const plural = (n: number) => (n === 1 ? "" : "s");
        this.ctx.log(
          `${s.data}: ${io.inChannels} channel${plural(io.inChannels)} (${
            dataset.channels.join(", ")
          }) in, ${io.outChannels} region${plural(io.outChannels)} (${regionNames.join(", ")}) out`,
        );
      }
      s.config = { ...c, ...io };
      this.net = createUNet(s.config, { seed: s.seed });
    } else if (
      this.net.config.inChannels !== io.inChannels || this.net.config.outChannels !== io.outChannels
    ) {
      throw new Error(
        `${s.data}: its cases have ${io.inChannels} channels and ${io.outChannels} ` +
          `regions, the run being resumed ${this.net.config.inChannels} and ${this.net.config.outChannels}`,
      );
    }
  }

  /**
   * Takes the run lock: before the run's first write (its cases' cache entries), after everything
   * that can refuse the run without writing, so that a refused run leaves no lock behind, nor a
   * folder for it.
   */
  private async claimOut(): Promise<void> {
    const { out, log, runtime } = this.ctx;
    this.lock = await acquireRunLock(out, "train", log);
    // Holding the lock, the run's folder is its own: temporary files there are of writes killed
    // mid-way (SIGKILL during a checkpoint), never to be finished.
    const stray = await removeStaleWritesUnder(out);
    if (stray.length > 0) {
      log(`removed what killed writes left under ${out}: ${stray.join(", ")}`);
    }
    if (!runtime.resume && await exists(latestUri(out))) {
      throw new Error(
        `${out} already holds a training run (${
          latestUri(out)
        }), written since this run started; pass --resume to continue it or choose another --out`,
      );
    }
  }

  /** Preprocesses (or reads from the cache) the split's cases; an abort leaves them partial. */
  private async loadCases(split: { train: Case[]; val: Case[] }) {
    const { out, runtime, log, emit, aborted } = this.ctx;
    const cacheUri = runtime.cache === undefined
      ? joinUri(out, "cache")
      : runtime.cache === ""
      ? undefined
      : runtime.cache;
    const t0 = performance.now();
    const loaded = await loadCases(split.train, split.val, {
      cacheUri,
      budget: runtime.caseMemory ?? defaultCaseMemory(),
      // Training cases go straight into shared memory when sampler workers read them: the
      // prefetcher then uses them where they are instead of holding a second copy.
      shared: (runtime.workers ?? 1) > 0,
      aborted,
      onCase: (id, done, total) => emit({ kind: "case-loaded", id, done, total }),
      onTemporaryDir: (dir) => (this.tempDir = dir),
      log,
    });
    if (loaded.streamedFrom) {
      this.streamed = { dir: loaded.streamedFrom, temporary: loaded.streamedFrom === this.tempDir };
    }
    this.interrupted = aborted();
    if (!this.interrupted) {
      log(
        `${loaded.train.length} training and ${loaded.val.length} validation cases ready in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s (${loaded.fromCache} from the cache${cacheUri ? ` ${cacheUri}` : ""})`,
      );
    }
    return { train: loaded.train, val: loaded.val };
  }

  hasEpochToRun(): boolean {
    return !this.interrupted && this.state.epoch < this.stopAfter;
  }

  /**
   * The rest of the current epoch's steps. A signal stops the run before the next step starts,
   * also one that came while waiting for the batch.
   * @returns false when the run was aborted
   */
  async epochSteps(): Promise<boolean> {
    const { state, s, ctx } = this;
    const epochStart = performance.now() - state.epochSeconds * 1000;
    while (state.stepInEpoch < s.stepsPerEpoch) {
      if (ctx.aborted()) break;
      const batch = await this.prefetcher!.next(state.globalStep);
      if (ctx.aborted()) break;
      await this.step(batch);
    }
    state.epochSeconds = (performance.now() - epochStart) / 1000;
    if (ctx.aborted()) this.interrupted = true;
    return !this.interrupted;
  }

  /** One training step on `batch`, at the learning rate of the run's step. */
  private async step(batch: Batch): Promise<void> {
    const { state, s } = this;
    const net = this.net!;
    const totalSteps = s.epochs * s.stepsPerEpoch;
    const lr = polyLearningRate(s.lr, state.globalStep, totalSteps);
    const shape = [s.batch, s.crop, s.crop, s.crop];
    type Shape5 = [number, number, number, number, number];
    const x = tf.tensor5d(batch.image, [...shape, net.config.inChannels] as Shape5);
    const y = tf.tensor5d(batch.target, [...shape, net.config.outChannels] as Shape5);
    let loss: number;
    try {
      loss = await trainStepAsync(net, this.optimizer, x, y, lr);
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
    this.lastLoss = loss;
    state.epochLossSum += loss;
    state.stepInEpoch++;
    state.globalStep++;
    state.rng.counter = state.globalStep; // checked against globalStep when resumed
    const perStep = (performance.now() - this.runStart) / 1000 /
      (state.globalStep - this.stepsAtStart);
    this.ctx.emit({
      kind: "step",
      epoch: state.epoch + 1,
      step: state.globalStep,
      loss,
      epochs: s.epochs,
      stepInEpoch: state.stepInEpoch,
      stepsPerEpoch: s.stepsPerEpoch,
      lr,
      secondsPerStep: perStep,
      secondsLeft: perStep * (totalSteps - state.globalStep),
    });
  }

  /**
   * End of an epoch: validation, best weights, metrics, curves, checkpoint.
   * @returns false when the run was aborted (during validation: the epoch is not recorded)
   */
  async endOfEpoch(): Promise<boolean> {
    const { state, s, ctx } = this;
    const { val, regionNames, modelDataset } = this.cases!;
    const metrics: EpochMetrics = {
      epoch: state.epoch + 1,
      step: state.globalStep,
      loss: state.epochLossSum / s.stepsPerEpoch,
      lr: polyLearningRate(s.lr, state.globalStep - 1, s.epochs * s.stepsPerEpoch),
      seconds: Number(state.epochSeconds.toFixed(2)),
    };
    const last = state.epoch + 1 === s.epochs;
    if (val.length > 0 && ((state.epoch + 1) % s.valEvery === 0 || last)) {
      if (!(await this.validateEpoch(metrics))) return false;
    } else {
      if (val.length === 0) {
        // Nothing to choose the best weights by: best/ holds the latest, so that <out>/best
        // names the run's model either way.
        await writeBest(ctx.out, this.net!, { crop: s.crop, epoch: metrics.epoch }, modelDataset);
      }
      ctx.log(`epoch ${metrics.epoch}: loss ${metrics.loss.toFixed(4)}`);
    }
    state.history.push(metrics);
    state.epoch++;
    state.stepInEpoch = 0;
    state.epochLossSum = 0;
    state.epochSeconds = 0;
    await writeReports(ctx.out, state.history, regionNames);
    this.saved = await writeCheckpoint(ctx.out, this.net!, this.optimizer, state, modelDataset);
    if (ctx.aborted()) this.interrupted = true;
    return !this.interrupted;
  }

  /**
   * Validates the epoch into `metrics`, and keeps the weights when they are the best so far.
   * @returns false when a signal abandoned the validation: the checkpoint then holds the epoch's
   *   steps, and the resumed run validates and records the epoch before its next step
   */
  private async validateEpoch(metrics: EpochMetrics): Promise<boolean> {
    const { state, s, ctx } = this;
    const { val, regionNames, scheme, modelDataset } = this.cases!;
    const signal = ctx.runtime.signal;
    const v0 = performance.now();
    let dice: RegionScores;
    try {
      dice = await validate(this.net!, val, s.valWindow, {
        labels: scheme,
        signal,
        onCase: (id, done) =>
          ctx.emit({ kind: "validated-case", epoch: metrics.epoch, id, done, total: val.length }),
      });
    } catch (e) {
      if (signal?.aborted && e === signal.reason) {
        this.interrupted = true;
        return false;
      }
      throw e;
    }
    const mean = regionNames.reduce((a, r) => a + dice[r], 0) / regionNames.length;
    metrics.val_dice = dice;
    metrics.val_mean_dice = mean;
    this.lastValDice = dice;
    ctx.log(
      `epoch ${metrics.epoch}: loss ${metrics.loss.toFixed(4)}, validation Dice ${
        regionNames.map((r) => `${r} ${dice[r].toFixed(3)}`).join(" ")
      } (${((performance.now() - v0) / 1000).toFixed(1)} s)`,
    );
    if (!state.best || mean > state.best.meanDice) {
      state.best = { epoch: metrics.epoch, meanDice: mean };
      const at = { crop: s.crop, epoch: metrics.epoch, valDice: dice, valWindow: s.valWindow };
      await writeBest(ctx.out, this.net!, at, modelDataset);
    }
    return true;
  }

  /** An aborted run's checkpoint, the closing lines, the report when asked for; the result. */
  async finish(): Promise<TrainResult> {
    const { state, s, ctx } = this;
    if (this.interrupted) {
      if (checkpointName(state) !== this.saved) {
        const { modelDataset } = this.cases!;
        this.saved = await writeCheckpoint(ctx.out, this.net!, this.optimizer, state, modelDataset);
      }
      ctx.log(
        `stopped at epoch ${state.epoch + 1}, step ${state.stepInEpoch}/${s.stepsPerEpoch} ` +
          `(global step ${state.globalStep}): checkpoint ${this.saved}; continue with --resume`,
      );
    }
    const seconds = (performance.now() - this.runStart) / 1000;
    ctx.log(`done: ${state.globalStep - this.stepsAtStart} steps in ${formatDuration(seconds)}`);
    let report: string | undefined;
    if (ctx.runtime.report && !this.interrupted) {
      const { split, val, scheme } = this.cases!;
      report = await trainingReport(ctx.out, this.net!, split.val, val, s, state.history, scheme);
      ctx.log(`report: ${report}`);
    }
    return {
      ...(report ? { report } : {}),
      ...(this.streamed ? { streamed: this.streamed } : {}),
      out: ctx.out,
      backend: this.backend.name,
      epochs: state.epoch,
      steps: state.globalStep,
      seconds,
      lastLoss: this.lastLoss,
      best: state.best,
      lastValDice: this.lastValDice,
      interrupted: this.interrupted,
      checkpoint: checkpointName(state),
    };
  }

  /** Releases what the run holds, whether it finished or failed. */
  async close(): Promise<void> {
    this.prefetcher?.close();
    this.optimizer.dispose();
    if (this.net) disposeUNet(this.net);
    const tempDir = this.tempDir;
    if (tempDir) {
      await Deno.remove(tempDir, { recursive: true }).catch((e) => {
        if (!(e instanceof Deno.errors.NotFound)) {
          this.ctx.log(
            `could not remove the temporary case folder ${tempDir}: ${(e as Error).message}`,
          );
        }
      });
    }
    await this.lock?.release();
  }
}
