/**
 * `version` (also `main.ts --version`): the project's version, Deno's, tfjs's, and the backend
 * `--backend auto` would choose here, with why.
 * @module
 */
import config from "../deno.json" with { type: "json" };
import { selectBackend } from "../model/backend.ts";
import * as tf from "../model/tf.ts";
import { type Command, parseFlags, printJson } from "./_cli.ts";

/** The project's version: deno.json's `version` field. */
export const VERSION: string = config.version;

/** What `version` reports. */
export interface VersionInfo {
  revunet: string;
  deno: string;
  v8: string;
  typescript: string;
  tfjs: string;
  /** The backend `--backend auto` chooses in this process, its device and why. */
  backend: { name: string; device: string; reason: string };
}

/** Collects {@linkcode VersionInfo}; selects the auto backend (as a computing command would). */
export async function versionInfo(): Promise<VersionInfo> {
  const choice = await selectBackend("auto");
  return {
    revunet: VERSION,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
    tfjs: tf.version_core,
    backend: { name: choice.name, device: choice.device, reason: choice.reason },
  };
}

export const versionCommand: Command = {
  name: "version",
  summary: "Print the versions of RevUNet-Deno, Deno and tfjs, and the backend auto would choose",
  help: `Usage: deno task version [--json]     (or: deno run -A main.ts --version)

Prints the project's version (deno.json's "version"), Deno's (with V8 and TypeScript), tfjs's, and
the backend that --backend auto would choose in this process (tfjs-node-gpu, tfjs-node, a hardware
WebGPU adapter, else cpu), its device and the reason. Commands compute on cpu unless --backend
says otherwise.

Options:
  --json   print one JSON object instead of lines

Example:
  deno run -A --unstable-webgpu main.ts --version`,
  async run(args) {
    const { values } = parseFlags("version", args, { json: { type: "boolean" } });
    const v = await versionInfo();
    if (values.json) return printJson(v);
    console.log(
      [
        `revunet-deno ${v.revunet}`,
        `deno ${v.deno} (v8 ${v.v8}, typescript ${v.typescript})`,
        `tfjs ${v.tfjs}`,
        `backend (--backend auto): ${v.backend.name} on ${v.backend.device} (${v.backend.reason})`,
      ].join("\n"),
    );
  },
};
