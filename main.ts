/**
 * RevUNet-Deno's command line: `deno run -A main.ts <command> [options]`, one subcommand per task.
 * Only this file turns errors into exit codes: 2 for usage errors, 1 for everything else.
 * @module
 */
import { checkWebGpuErrors, type Command, onWebGpuError, UsageError } from "./tasks/_cli.ts";
import { commands } from "./tasks/mod.ts";

function usage(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    "RevUNet-Deno: a memory-efficient reversible 3D U-Net for brain tumor segmentation (BraTS).",
    "",
    "Usage: deno task <command> [options]   (or: deno run -A main.ts <command> [options])",
    "",
    "Commands:",
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    "",
    "Run `deno task <command> --help` for a command's options and examples; `--version` for the",
    "versions and the backend `--backend auto` would choose.",
  ].join("\n");
}

/** Runs the command line; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  // `--version` as every command-line tool has it: the `version` command.
  const wanted = name === "--version" || name === "-V" ? "version" : name;
  const command: Command | undefined = commands.find((c) => c.name === wanted);
  if (!command) {
    console.error(`error: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(command.help);
    return 0;
  }
  // Every error names its command, once: "error: train: --out is required".
  onWebGpuError((message) => console.error(`error: WebGPU: ${message}`));
  const prefix = `${command.name}: `;
  const named = (message: string) => message.startsWith(prefix) ? message : prefix + message;
  try {
    await command.run(rest);
    checkWebGpuErrors();
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(
        `error: ${named(e.message)}\nRun \`deno task ${command.name} --help\` for usage.`,
      );
      return 2;
    }
    console.error(`error: ${named(formatError(e))}`);
    if (Deno.env.get("REVUNET_DEBUG")) console.error(e);
    return 1;
  }
}

function formatError(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  let text = e.message;
  let cause = e.cause;
  while (cause instanceof Error) {
    if (!text.includes(cause.message)) text += `\n  caused by: ${cause.message}`;
    cause = cause.cause;
  }
  return text;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
