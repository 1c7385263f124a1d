/**
 * `train`: the command line of pipeline/training's run: its flags, SIGTERM and SIGINT as its abort
 * signal (it checkpoints; the command exits 143 or 130), its progress printed.
 * @module
 */
import {
  autoCropSetting,
  type BackendName,
  networkConfigFlag,
  newRunSettings,
  type NumericSetting,
  SETTING_FLAGS,
  SETTING_LIMITS,
  STREAMED_CASES_PER_SAMPLER,
  train,
  trainEventPrinter,
  type TrainResult,
  type TrainRuntime,
  type TrainSettings,
} from "../pipeline/training/mod.ts";
import {
  backendFlag,
  type Command,
  defineCommand,
  type Flags,
  numberFlag,
  printJson,
  stderrProgress,
  UsageError,
  withSignals,
} from "./_cli.ts";

/** A numeric setting's flag, parsed within the setting's limits (pipeline/training/settings.ts). */
function numericFlag(key: NumericSetting, value: string): number {
  const name = SETTING_FLAGS[key].slice(2);
  const { integer, min, max, flagMax } = SETTING_LIMITS[key];
  return numberFlag(name, value, 0, min, flagMax ?? max, integer);
}

/**
 * The settings the command line names, in the order of the help (a resumed run names its
 * conflicts in that order). A new run fills the rest with defaults; a resumed run compares these
 * with its stored settings, so defaults must not be added. `--crop` is {@linkcode cropFlag}'s.
 */
function givenSettings(flags: Flags): Partial<TrainSettings> {
  const given: Partial<TrainSettings> = {};
  const data = flags.str("data");
  if (data !== undefined) given.data = data;
  const numeric = (...keys: NumericSetting[]) => {
    for (const key of keys) {
      const value = flags.str(SETTING_FLAGS[key].slice(2));
      if (value !== undefined) given[key] = numericFlag(key, value);
    }
  };
  numeric("epochs", "stepsPerEpoch", "batch", "lr");
  const optimizer = flags.choice("optimizer", ["adam", "sgd"]);
  if (optimizer !== undefined) given.optimizer = optimizer;
  numeric("weightDecay", "valCases", "valEvery", "valWindow");
  const config = flags.str("config");
  if (config !== undefined) given.config = networkConfigFlag(config);
  numeric("seed");
  if (flags.bool("no-augment")) given.augment = false;
  return given;
}

/**
 * `--crop <n>`, or `--crop auto --budget <gib>`: the largest crop whose measured step fits the
 * budget on `backend` (a resumed run keeps its crop).
 */
async function cropFlag(
  flags: Flags,
  given: Partial<TrainSettings>,
  backend: BackendName,
): Promise<void> {
  const crop = flags.str("crop");
  if (crop !== "auto") {
    if (flags.str("budget") !== undefined) {
      throw new UsageError("--budget is only used with --crop auto");
    }
    if (crop !== undefined) given.crop = numericFlag("crop", crop);
    return;
  }
  if (flags.str("budget") === undefined) throw new UsageError("--crop auto needs --budget <gib>");
  const budget = flags.gib("budget", 0, 0.001);
  const auto = await autoCropSetting(given, budget, backend, flags.bool("resume"));
  if (auto.crop === undefined) {
    if (!flags.bool("quiet")) console.error(`train: ${auto.note}`);
    return;
  }
  console.error(`train: ${auto.note}`);
  given.crop = auto.crop;
}

/** Runs `start` with an abort signal that SIGTERM and SIGINT raise; exits 143 or 130 after one. */
async function runStoppable(
  start: (signal: AbortSignal) => Promise<TrainResult>,
  json: boolean,
): Promise<void> {
  const abort = new AbortController();
  let signalName: Deno.Signal | undefined;
  const onSignal = (sig: "SIGTERM" | "SIGINT") => {
    if (signalName) return;
    signalName = sig;
    console.error(`train: ${sig} received; stopping before the next step to save a checkpoint`);
    abort.abort();
  };
  const result = await withSignals(onSignal, () => start(abort.signal));
  if (json) printJson(result);
  if (signalName) Deno.exit(signalName === "SIGTERM" ? 143 : 130);
}

/** The command: flags, settings checked before a backend loads, then the run. */
async function trainFromFlags(flags: Flags): Promise<void> {
  const out = flags.str("out");
  if (!out) throw new UsageError("--out is required (a folder or s3:// prefix)");
  const resume = flags.bool("resume");
  if (!flags.str("data") && !resume) throw new UsageError("--data is required");
  const given = givenSettings(flags);
  const backend = backendFlag(flags);
  const workers = flags.int("workers", 1, 0, 16);
  const caseMemory = flags.str("case-memory") === undefined
    ? undefined
    : flags.gib("case-memory", 0, 0);
  await cropFlag(flags, given, backend);
  // A crop the network cannot take is a usage error before the backend loads.
  const fresh = resume ? undefined : newRunSettings(given.data!, given);
  const cache = flags.str("cache");
  const runtime: TrainRuntime = {
    out,
    backend,
    cache: cache === "none" ? "" : cache,
    workers,
    ...(caseMemory === undefined ? {} : { caseMemory }),
    report: flags.bool("report"),
    onProgress: trainEventPrinter(stderrProgress(flags.bool("quiet"))),
  };
  await runStoppable(
    (signal) =>
      fresh
        ? train(fresh, { ...runtime, signal })
        : train(given, { ...runtime, resume: true, signal }),
    flags.bool("json"),
  );
}

export const trainCommand: Command = defineCommand({
  name: "train",
  summary: "Train the reversible U-Net on BraTS cases (checkpoints, resume, validation)",
  help: `Usage: deno task train --data <uri> --out <uri> [options]
       deno task train --out <uri> --resume [--epochs <n>] [options]

Trains the reversible U-Net on the labelled cases under --data (a folder or s3:// prefix: BraTS in
any naming, nnU-Net v2 raw or MSD), writing checkpoints, best/, metrics.jsonl and curves.svg under
--out. SIGTERM or SIGINT (a preempted instance) saves a checkpoint before the next step and exits
143 or 130; --resume then continues exactly where it stopped.

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
  --case-memory <gib>     memory the preprocessed cases may take (default: half the machine's, or
                          8 GiB); beyond it each sampler reads the cases it draws from local
                          disk, keeping the last ${STREAMED_CASES_PER_SAMPLER} (same batches and
                          weights); 0 always streams
  --workers <n>           sampler threads preparing batches ahead (default 1; 0: none)
  --resume                continue the run under --out from its latest checkpoint with its settings;
                          --epochs may lengthen or shorten it (the learning rate then decays over
                          the new total), --val-every, --val-window and --data (the same cases
                          moved) may change; another setting flag must repeat the run's value.
                          The flags that are not settings apply as given
  --report                at the end, write <out>/report/index.html: validation cases' slices with
                          reference and prediction, their metrics, and the training curves
  --quiet                 no progress output
  --json                  print a JSON summary at the end

Examples:
  deno task synth --out out/synth --cases 6 --size 96,96,72
  deno task train --data out/synth --out out/run1 --epochs 4 --steps-per-epoch 20 --crop 32
  deno task train --out out/run1 --resume              # after SIGTERM: continue exactly
  deno task train --out out/run1 --resume --epochs 8   # train the finished run 4 epochs longer`,
  run: trainFromFlags,
});
