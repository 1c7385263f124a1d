/**
 * What every command shares: the command shape, flag parsing and the usage error that main.ts turns
 * into exit code 2.
 * @module
 */
import { parseShard, type Shard } from "../pipeline/cases/mod.ts";
import { MAX_OVERLAP, OVERLAP_RANGE } from "../pipeline/inference/mod.ts";
import type { CaseOptions } from "../pipeline/segmentation/mod.ts";
import { BACKEND_NAMES, type BackendName, SettingsError } from "../pipeline/training/mod.ts";
import { Progress } from "../pipeline/report/mod.ts";
import { type Flags, parseFlags, UsageError } from "./_flags.ts";

export { type Flags, intFlag, numberFlag, UsageError } from "./_flags.ts";
/** main.ts's hooks on the WebGPU device: its errors said as they come, checked after a command. */
export { checkWebGpuErrors, onWebGpuError } from "../pipeline/training/mod.ts";

/** One subcommand of main.ts. */
export interface Command {
  /** The subcommand's name, as typed after `main.ts` (and as its `deno task` name). */
  name: string;
  /** One line for the list of commands. */
  summary: string;
  /** Usage, options, examples, printed by `--help`; its Options block declares the flags. */
  help: string;
  /** Runs the command with the arguments after its name. Throws on failure; never exits. */
  run(args: string[]): Promise<void>;
}

/**
 * A command whose `run` gets the flags its help declares, parsed (with positional arguments only
 * when `positionals`). A {@linkcode SettingsError} (the engine naming a flag it cannot take) is a
 * usage error.
 */
export function defineCommand(
  spec: Omit<Command, "run"> & { positionals?: boolean; run(flags: Flags): Promise<void> },
): Command {
  const { name, summary, help } = spec;
  return {
    name,
    summary,
    help,
    async run(args) {
      try {
        await spec.run(parseFlags(name, args, help, spec.positionals));
      } catch (e) {
        throw e instanceof SettingsError ? new UsageError(e.message, { cause: e }) : e;
      }
    },
  };
}

/** Writes text to standard error at once (all of it, even when the first write is short). */
export function writeStderr(text: string): void {
  const bytes = new TextEncoder().encode(text);
  for (let n = 0; n < bytes.length;) n += Deno.stderr.writeSync(bytes.subarray(n));
}

/** A progress line on standard error, redrawn in place when standard error is a terminal. */
export function stderrProgress(quiet = false): Progress {
  return new Progress({ quiet, tty: Deno.stderr.isTerminal(), write: writeStderr });
}

/** Writes one JSON value as a line on stdout. */
export function printJson(value: unknown): void {
  console.log(JSON.stringify(value));
}

/**
 * Runs `body` with `onSignal` called on each SIGTERM and SIGINT, the listeners removed after.
 * @returns what `body` returns
 */
export async function withSignals<T>(
  onSignal: (signal: "SIGTERM" | "SIGINT") => void,
  body: () => Promise<T>,
): Promise<T> {
  const listeners = (["SIGTERM", "SIGINT"] as const).map((sig) => {
    const handler = () => onSignal(sig);
    Deno.addSignalListener(sig, handler);
    return [sig, handler] as const;
  });
  try {
    return await body();
  } finally {
    for (const [sig, handler] of listeners) Deno.removeSignalListener(sig, handler);
  }
}

/** Parses `--backend`: one of the names {@linkcode selectBackend} knows, else a usage error. */
export function backendFlag(flags: Flags): BackendName {
  return flags.choice("backend", BACKEND_NAMES, "cpu");
}

/** Parses `--size <x,y,z>`: three integers in [min, max], `fallback` when not given. */
export function sizeFlag(
  flags: Flags,
  fallback: readonly number[],
  min: number,
  max: number,
): [number, number, number] {
  const value = flags.str("size");
  if (value === undefined) return [...fallback] as [number, number, number];
  const dims = value.split(",").map((s) => s.trim() === "" ? NaN : Number(s));
  if (dims.length !== 3 || !dims.every((d) => Number.isInteger(d) && d >= min && d <= max)) {
    throw new UsageError(
      `--size must be three integers X,Y,Z, each ${min}..${max}, got "${value}"`,
    );
  }
  return dims as [number, number, number];
}

/**
 * Parses `--shard` (or, without it, the AWS Batch / Kubernetes Indexed Job variables) into this
 * worker's shard; undefined when neither says anything (every case). Bad values are usage errors.
 */
export function shardFlag(flags: Flags): Shard | undefined {
  try {
    return parseShard(flags.str("shard"), Deno.env.toObject());
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/**
 * The inference flags `segment` and `serve` share, declared here once (their help lines, the same
 * in both) and parsed once by {@linkcode inferenceOptions}.
 */
export const INFERENCE_HELP =
  `  --overlap <x>|auto        window overlap in ${OVERLAP_RANGE} (default auto: 0.5, nnU-Net's,
                            or 0.25 where its windows would cover over 8.4 M voxels, as on a
                            whole BraTS brain: 2.5 times fewer windows; training validates alike)
  --window <n>|auto         window edge (default auto: the window training validated the model
                            with, else its training crop, else 128, capped at the largest window
                            whose inference fits half the free memory)
  --tta                     average the 8 mirrorings (slower, slightly better)
  --batch <n>               windows per forward pass (default 1)
  --save-probabilities      also write <case>_probabilities.nii.gz (float32, WT/TC/ET as dim 4)
  --et-threshold <n>        an enhancing region under N voxels becomes necrosis (default 0: off)
  --largest-component       keep only the largest connected tumour component (nnU-Net's
                            post-processing; removes scattered false positives, off by default)`;

/** The case options the inference flags set. */
type InferenceFlags =
  & Required<Pick<CaseOptions, "overlap" | "tta" | "batch" | "etThreshold" | "largestComponent">>
  & Pick<CaseOptions, "saveProbabilities">
  & { window?: number };

/**
 * The case options the inference flags give, checked in this order: overlap in [0, MAX_OVERLAP] or
 * auto, window in [8, 1024] or auto (left out), batch in [1, 64], et-threshold >= 0.
 * @throws {UsageError} naming the flag and the value given
 */
export function inferenceOptions(flags: Flags): InferenceFlags {
  const auto = (name: string) => [undefined, "auto"].includes(flags.str(name));
  const overlap = auto("overlap") ? "auto" as const : flags.num("overlap", 0.5, 0, MAX_OVERLAP);
  const window = auto("window") ? undefined : flags.int("window", 128, 8, 1024);
  return {
    overlap,
    ...(window ? { window } : {}),
    tta: flags.bool("tta"),
    batch: flags.int("batch", 1, 1, 64),
    etThreshold: flags.int("et-threshold", 0, 0),
    largestComponent: flags.bool("largest-component"),
    saveProbabilities: flags.bool("save-probabilities"),
  };
}
