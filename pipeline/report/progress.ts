/**
 * A progress line for long loops: redrawn in place on a terminal, a plain line now and then
 * elsewhere (logs of batch jobs), on standard error so standard output stays machine-readable.
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

/** Draws `label [#####.....] text ETA` lines. */
export class Progress {
  readonly #tty: boolean;
  readonly #quiet: boolean;
  #lastPlain = 0;
  #drawn = false;

  constructor(options: { quiet?: boolean; tty?: boolean } = {}) {
    this.#quiet = options.quiet ?? false;
    this.#tty = options.tty ?? Deno.stderr.isTerminal();
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
      Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[K${line}`));
      this.#drawn = true;
    } else if (Date.now() - this.#lastPlain > 30_000 || done === total) {
      this.#lastPlain = Date.now();
      console.error(line);
    }
  }

  /** Prints a message on its own line (after the progress line, if one is drawn). */
  log(message: string): void {
    if (this.#quiet) return;
    if (this.#drawn) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
    this.#drawn = false;
    console.error(message);
  }
}
