/**
 * Flags declared once, in each command's help: the lines of its Options block that start with
 * `  --name` are its flags, and {@linkcode parseFlags} builds node:util's option table from them.
 * `--name <x>` or `--name a|b` (one space, then a token) takes a value; `--name` followed by two
 * spaces or the end of the line is a switch.
 * @module
 */
import { parseArgs as nodeParseArgs, type ParseArgsConfig } from "node:util";

/** A wrong flag, a missing argument or conflicting options: exit code 2 and the help's hint. */
export class UsageError extends Error {
  override name = "UsageError";
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** An option line of a help text: its flag and, when a token follows after one space, a value. */
const OPTION_LINE = /^ {2}--([a-z][a-z0-9-]*)( \S)?/;

/**
 * The flags the Options block of `help` declares (up to its first blank line), with `--help`.
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * const help = "Usage: x\n\nOptions:\n  --out <uri>  where\n  --json       JSON\n\nExample: x";
 * assertEquals(Object.keys(declaredFlags(help)), ["out", "json", "help"]);
 * assertEquals(declaredFlags(help).out.type, "string");
 * ```
 */
export function declaredFlags(help: string): Options {
  const block = help.split("\nOptions:\n")[1]?.split("\n\n")[0] ?? "";
  const options: Options = {};
  for (const line of block.split("\n")) {
    const m = OPTION_LINE.exec(line);
    if (m) options[m[1]] = { type: m[2] ? "string" : "boolean" };
  }
  return { ...options, help: { type: "boolean", short: "h" } };
}

/** A value that starts with "-" but is a number (or a shard like -1/3), not a flag. */
const NEGATIVE_VALUE = /^-(?:\d|\.\d)/;

/**
 * Joins `--flag -1` into `--flag=-1` for flags that take a value: node:util's parseArgs refuses a
 * value starting with "-" as "ambiguous", where the user meant a (negative) number, which the
 * flag's own check then refuses with its range.
 */
function joinNegativeValues(args: string[], options: Options): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const [arg, next] = [args[i], args[i + 1]];
    if (arg === "--") {
      out.push(...args.slice(i));
      break;
    }
    const takesValue = arg.startsWith("--") && options[arg.slice(2)]?.type === "string";
    if (next !== undefined && NEGATIVE_VALUE.test(next) && takesValue) {
      out.push(`${arg}=${next}`);
      i++;
    } else out.push(arg);
  }
  return out;
}

/** The flags a command was given, read by name and type; a name its help lacks is a bug, thrown. */
export class Flags {
  constructor(
    readonly command: string,
    private readonly options: Options,
    private readonly values: Record<string, string | boolean | (string | boolean)[] | undefined>,
    /** The arguments that are not flags (commands that take them: `cases`, `inspect`, `bench`). */
    readonly positionals: string[],
  ) {}

  #get(name: string, type: "string" | "boolean") {
    if (this.options[name]?.type !== type) {
      throw new Error(`${this.command}: its help declares no ${type} flag --${name}`);
    }
    return this.values[name];
  }

  /** A value flag's text, undefined when not given. */
  str(name: string): string | undefined {
    return this.#get(name, "string") as string | undefined;
  }

  /** Whether a switch was given. */
  bool(name: string): boolean {
    return this.#get(name, "boolean") === true;
  }

  /** An integer flag in [min, max], `fallback` when not given ({@linkcode intFlag}). */
  int(name: string, fallback: number, min?: number, max?: number): number {
    return intFlag(name, this.str(name), fallback, min, max);
  }

  /** A number flag in [min, max], `fallback` when not given ({@linkcode numberFlag}). */
  num(name: string, fallback: number, min?: number, max?: number): number {
    return numberFlag(name, this.str(name), fallback, min, max);
  }

  /** One of `values` (a wrong one is refused with the list), `fallback` when not given. */
  choice<T extends string, F extends T | undefined = undefined>(
    name: string,
    values: readonly T[],
    fallback?: F,
  ): T | F {
    const value = this.str(name);
    if (value === undefined) return fallback as F;
    if ((values as readonly string[]).includes(value)) return value as T;
    const list = values.length === 2 ? values.join(" or ") : `one of ${values.join(", ")}`;
    throw new UsageError(`--${name} must be ${list}, got "${value}"`);
  }

  /** A crop or window edge: an integer in [8, max], a multiple of 8. */
  edge(name: string, fallback: number, max?: number): number {
    const edge = this.int(name, fallback, 8, max);
    if (edge % 8 !== 0) throw new UsageError(`--${name} must be a multiple of 8, got ${edge}`);
    return edge;
  }

  /** A memory flag in GiB (a number of at least `min`), in bytes. */
  gib(name: string, fallback: number, min: number): number {
    return this.num(name, fallback, min) * 2 ** 30;
  }

  /** The names of the flags given, in the order given. */
  given(): string[] {
    return Object.keys(this.values).filter((k) => k !== "help" && this.values[k] !== undefined);
  }

  /** Throws a usage error `--<flag> is required` for the first of `names` not given (or empty). */
  require(...names: string[]): void {
    for (const name of names) if (!this.str(name)) throw new UsageError(`--${name} is required`);
  }
}

/**
 * Parses `args` strictly by the flags `help` declares: an unknown flag or a missing value is a
 * {@linkcode UsageError} naming it. A value that is a negative number (`--seed -1`) is taken as
 * the flag's value, for its own range check to refuse.
 */
export function parseFlags(command: string, args: string[], help: string, positionals = false) {
  const options = declaredFlags(help);
  try {
    const parsed = nodeParseArgs({
      args: joinNegativeValues(args, options),
      options,
      allowPositionals: positionals,
      strict: true,
    });
    return new Flags(command, options, parsed.values, parsed.positionals);
  } catch (e) {
    throw new UsageError(`${command}: ${(e as Error).message}`, { cause: e });
  }
}

const bound = (op: string, n: number) => Number.isFinite(n) ? ` ${op} ${n}` : "";

/**
 * Parses a number flag in [min, max] (an integer when `integer`), `fallback` when not given; the
 * error names the flag and the range.
 */
export function numberFlag(
  name: string,
  value: string | undefined,
  fallback: number,
  min = -Infinity,
  max = Infinity,
  integer = false,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  const ok = integer ? Number.isInteger(n) : value.trim() !== "" && Number.isFinite(n);
  if (ok && n >= min && n <= max) return n;
  const range = !integer && Number.isFinite(min) && Number.isFinite(max)
    ? ` in [${min}, ${max}]`
    : `${bound(">=", min)}${bound("<=", max)}`;
  throw new UsageError(
    `--${name} must be ${integer ? "an integer" : "a number"}${range}, got "${value}"`,
  );
}

/** Parses an integer flag in [min, max]: a {@linkcode numberFlag} with `integer`. */
export function intFlag(
  name: string,
  value: string | undefined,
  fallback: number,
  min?: number,
  max?: number,
) {
  return numberFlag(name, value, fallback, min, max, true);
}
