/**
 * The list of commands main.ts dispatches to, one file per command.
 * @module
 */
import type { Command } from "./_cli.ts";
import { casesCommand } from "./cases.ts";
import { setupCommand } from "./setup.ts";

export const commands: Command[] = [casesCommand, setupCommand];
