/**
 * What every command shares: the command shape, flag parsing and the usage error that main.ts turns
 * into exit code 2.
 * @module
 */
import { parseArgs as nodeParseArgs, type ParseArgsConfig } from "node:util";
import { parseShard, type Shard } from "../pipeline/cases/mod.ts";
import { MAX_OVERLAP, OVERLAP_RANGE } from "../pipeline/inference/mod.ts";
import type { CaseOptions } from "../pipeline/segmentation/mod.ts";
import { BACKEND_NAMES, type BackendName } from "../pipeline/training/mod.ts";
import { Progress } from "../pipeline/report/mod.ts";

/** main.ts's hooks on the WebGPU device: its errors said as they come, checked after a command. */
export { checkWebGpuErrors, onWebGpuError } from "../pipeline/training/mod.ts";

/** One subcommand of main.ts. */
export interface Command {
  /** The subcommand's name, as typed after `main.ts` (and as its `deno task` name). */
  name: string;
  /** One line for the list of commands. */
  summary: string;
  /** Full help: usage, options, examples. Printed by `--help`. */
  help: string;
  /** Runs the command with the arguments after its name. Throws on failure; never exits. */
  run(args: string[]): Promise<void>;
}

/** A wrong flag, a missing argument or conflicting options: exit code 2 and the command's help hint. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** The option table handed to {@linkcode parseFlags}. */
export type Options = NonNullable<ParseArgsConfig["options"]>;

/** A value that starts with "-" but is a number (or a shard like -1/3), not a flag. */
const NEGATIVE_VALUE = /^-(?:\d|\.\d)/;

/**
 * Joins `--flag -1` into `--flag=-1` for flags that take a value: node:util's parseArgs refuses a
 * value starting with "-" as "ambiguous", where the user meant a (negative) number, which the
 * flag's own check then refuses with its range.
 */
function joinNegativeValues(args: string[], options: Options): string[] {
  const takesValue = (arg: string) => {
    if (arg.startsWith("--")) return options[arg.slice(2)]?.type === "string";
    if (/^-[A-Za-z]$/.test(arg)) {
      return Object.values(options).some((o) => o.short === arg[1] && o.type === "string");
    }
    return false;
  };
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const [arg, next] = [args[i], args[i + 1]];
    if (arg === "--") {
      out.push(...args.slice(i));
      break;
    }
    if (next !== undefined && NEGATIVE_VALUE.test(next) && takesValue(arg)) {
      out.push(`${arg}=${next}`);
      i++;
    } else out.push(arg);
  }
  return out;
}

/**
 * Parses `args` strictly: an unknown flag or a missing value is a {@linkcode UsageError} naming it.
 * A value that is a negative number (`--seed -1`) is taken as the flag's value, for its own range
 * check to refuse. `--help` is always accepted and reported as `help: true`.
 */
export function parseFlags<O extends Options>(
  command: string,
  args: string[],
  options: O,
  allowPositionals = false,
) {
  try {
    return nodeParseArgs({
      args: joinNegativeValues(args, options),
      options: { ...options, help: { type: "boolean", short: "h" } } as O & {
        help: { type: "boolean"; short: "h" };
      },
      allowPositionals,
      strict: true,
    });
  } catch (e) {
    throw new UsageError(`${command}: ${(e as Error).message}`, { cause: e });
  }
}

/** Parses an integer flag, with its name in the error. */
export function intFlag(
  name: string,
  value: string | undefined,
  fallback: number,
  min = -Infinity,
  max = Infinity,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(
      `--${name} must be an integer${Number.isFinite(min) ? ` >= ${min}` : ""}${
        Number.isFinite(max) ? ` <= ${max}` : ""
      }, got "${value}"`,
    );
  }
  return n;
}

/** Parses a number flag, with its name in the error. */
export function numberFlag(
  name: string,
  value: string | undefined,
  fallback: number,
  min = -Infinity,
  max = Infinity,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n < min || n > max) {
    const range = Number.isFinite(min) && Number.isFinite(max)
      ? ` in [${min}, ${max}]`
      : `${Number.isFinite(min) ? ` >= ${min}` : ""}${Number.isFinite(max) ? ` <= ${max}` : ""}`;
    throw new UsageError(`--${name} must be a number${range}, got "${value}"`);
  }
  return n;
}

/** Parses a memory flag given in GiB (a {@linkcode numberFlag}); returns bytes. */
export function gibFlag(name: string, value: string | undefined, fallback: number, min: number) {
  return numberFlag(name, value, fallback, min) * 2 ** 30;
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

/** Throws a usage error `--<flag> is required` for the first of `flags` not given (or empty). */
export function requireFlags<V extends Record<string, unknown>>(values: V, flags: (keyof V)[]) {
  for (const f of flags) if (!values[f]) throw new UsageError(`--${String(f)} is required`);
}

/** Parses `--backend`: one of the names {@linkcode selectBackend} knows, else a usage error. */
export function backendFlag(value: string | undefined, fallback: BackendName = "cpu"): BackendName {
  if (value === undefined) return fallback;
  if (!(BACKEND_NAMES as readonly string[]).includes(value)) {
    throw new UsageError(`--backend must be one of ${BACKEND_NAMES.join(", ")}, got "${value}"`);
  }
  return value as BackendName;
}

/**
 * Parses `--shard` (or, without it, the AWS Batch / Kubernetes Indexed Job variables) into this
 * worker's shard; undefined when neither says anything (every case). Bad values are usage errors.
 */
export function shardFlag(value: string | undefined): Shard | undefined {
  try {
    return parseShard(value, Deno.env.toObject());
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/**
 * The inference flags `segment` and `serve` share, declared and parsed once: --overlap, --window,
 * --tta, --batch, --et-threshold, --largest-component and --save-probabilities, into the options
 * of each case's segmentation.
 */
export const INFERENCE_FLAGS = {
  overlap: { type: "string" },
  window: { type: "string" },
  tta: { type: "boolean" },
  batch: { type: "string" },
  "et-threshold": { type: "string" },
  "largest-component": { type: "boolean" },
  "save-probabilities": { type: "boolean" },
} as const;

/** The help lines of {@linkcode INFERENCE_FLAGS}, the same in `segment --help` and `serve --help`. */
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

/** The flags' values as parseFlags returns them. */
export type InferenceFlagValues = {
  [K in keyof typeof INFERENCE_FLAGS]?: (typeof INFERENCE_FLAGS)[K]["type"] extends "boolean"
    ? boolean
    : string;
};

/**
 * The case options the flags give: overlap in [0, MAX_OVERLAP] or "auto" (the default), window an integer
 * in [8, 1024] or "auto" (the default, left out), batch in [1, 64] (default 1), et-threshold
 * >= 0 (default 0). Checked in that order. The two switches default to off.
 * @throws {UsageError} naming the flag and the value given
 */
export function inferenceOptions(values: InferenceFlagValues):
  & Required<
    Pick<
      CaseOptions,
      "overlap" | "tta" | "batch" | "etThreshold" | "largestComponent" | "saveProbabilities"
    >
  >
  & { window?: number } {
  const overlap = values.overlap === undefined || values.overlap === "auto"
    ? "auto" as const
    : numberFlag("overlap", values.overlap, 0.5, 0, MAX_OVERLAP);
  const window = values.window === undefined || values.window === "auto"
    ? undefined
    : intFlag("window", values.window, 128, 8, 1024);
  return {
    overlap,
    ...(window ? { window } : {}),
    tta: values.tta ?? false,
    batch: intFlag("batch", values.batch, 1, 1, 64),
    etThreshold: intFlag("et-threshold", values["et-threshold"], 0, 0),
    largestComponent: values["largest-component"] === true,
    saveProbabilities: values["save-probabilities"] ?? false,
  };
}
