/**
 * Runs main.ts as a user does, in a subprocess, for the CLI tests.
 * @module
 */
import { fileURLToPath } from "node:url";

/** The repository root. */
export const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** What a run printed and how it exited. */
export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno run -A main.ts ...args` from the repository root. */
export async function runMain(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  // Deno's own note when another deno process holds node_modules (e.g. a parallel test run).
  const stderr = dec.decode(out.stderr).replace(/^Blocking waiting for file lock.*\n/gm, "");
  return { code: out.code, stdout: dec.decode(out.stdout), stderr };
}
