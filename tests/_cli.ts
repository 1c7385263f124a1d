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
export function runMain(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return runCommand(Deno.execPath(), ["run", "-A", "main.ts", ...args], env);
}

/** Runs a program from the repository root (stdin empty, NO_COLOR set, `env` added). */
export async function runCommand(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Run> {
  const out = await new Deno.Command(cmd, {
    args,
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
