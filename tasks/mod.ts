/**
 * The list of commands main.ts dispatches to, one file per command.
 * @module
 */
import type { Command } from "./_cli.ts";

export const commands: Command[] = [];
