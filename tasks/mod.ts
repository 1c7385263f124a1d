/**
 * The list of commands main.ts dispatches to, one file per command.
 * @module
 */
import type { Command } from "./_cli.ts";
import { benchCommand } from "./bench.ts";
import { casesCommand } from "./cases.ts";
import { demoCommand } from "./demo.ts";
import { evaluateCommand } from "./evaluate.ts";
import { inspectCommand } from "./inspect.ts";
import { planCommand } from "./plan.ts";
import { segmentCommand } from "./segment.ts";
import { serveCommand } from "./serve.ts";
import { setupCommand } from "./setup.ts";
import { synthCommand } from "./synth.ts";
import { trainCommand } from "./train.ts";
import { versionCommand } from "./version.ts";

export const commands: Command[] = [
  benchCommand,
  casesCommand,
  demoCommand,
  evaluateCommand,
  inspectCommand,
  planCommand,
  segmentCommand,
  serveCommand,
  setupCommand,
  synthCommand,
  trainCommand,
  versionCommand,
];
