/**
 * A progress line for long loops: redrawn in place on a terminal, a plain line now and then
 * elsewhere (logs of batch jobs), written where its owner says (the command line passes standard
 * error, so standard output stays machine-readable).
 * @module
 */

/** Formats seconds as `1h02m`, `4m05s` or `12s`. */
export function formatDuration(seconds: number): string {
  if (!isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  if (s >= 3600) {
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/** Options of {@linkcode Progress}. */
export interface ProgressOptions {
  /** Draw nothing. @default false */
  quiet?: boolean;
  /**
   * Redraw one line in place (a terminal) instead of a plain line now and then.
   * @default false
   */
  tty?: boolean;
  /**
   * Where the text goes, as it is to appear: lines end in "\n", a redrawn line starts with
   * "\r\x1b[K". The command line passes standard error; `quiet` writes nothing.
   */
  write: (text: string) => void;
}

/**
 * Draws `label [#####.....] text ETA` lines.
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { Progress } from "./progress.ts";
 * const out: string[] = [];
 * const progress = new Progress({ write: (t) => out.push(t) });
 * progress.update("train", 5, 10, "loss 0.5", 65);
 * progress.log("epoch 1 done");
 * assertEquals(out, ["train [##########..........] loss 0.5 ETA 1m05s\n", "epoch 1 done\n"]);
 * ```
 */
export class Progress {
  readonly #tty: boolean;
  readonly #quiet: boolean;
  readonly #write: (text: string) => void;
  #lastPlain = 0;
  #drawn = false;

  constructor(options: ProgressOptions) {
    this.#quiet = options.quiet ?? false;
    this.#write = options.write;
    this.#tty = options.tty ?? false;
  }

  /** Updates the line: `done` of `total` units, `text` after the bar, `eta` seconds left. */
  update(label: string, done: number, total: number, text: string, eta: number): void {
    if (this.#quiet) return;
    const width = 20;
    const filled = Math.round((width * done) / Math.max(total, 1));
    const line = `${label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${text} ETA ${
      formatDuration(eta)
    }`;
    if (this.#tty) {
      this.#write(`\r\x1b[K${line}`);
      this.#drawn = true;
    } else if (Date.now() - this.#lastPlain > 30_000 || done === total) {
      this.#lastPlain = Date.now();
      this.#write(`${line}\n`);
    }
  }

  /** Prints a message on its own line (after the progress line, if one is drawn). */
  log(message: string): void {
    if (this.#quiet) return;
    this.#write(`${this.#drawn ? "\r\x1b[K" : ""}${message}\n`);
    this.#drawn = false;
  }
}
