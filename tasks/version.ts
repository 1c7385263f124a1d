/**
 * `version` (also `main.ts --version`): the versions, and the backend auto would choose.
 * @module
 */
import { versionInfo } from "../pipeline/training/mod.ts";
import { defineCommand, printJson } from "./_cli.ts";

export const versionCommand = defineCommand({
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
  async run(flags) {
    const v = await versionInfo();
    if (flags.bool("json")) return printJson(v);
    console.log(
      [
        `revunet-deno ${v.revunet}`,
        `deno ${v.deno} (v8 ${v.v8}, typescript ${v.typescript})`,
        `tfjs ${v.tfjs}`,
        `backend (--backend auto): ${v.backend.name} on ${v.backend.device} (${v.backend.reason})`,
      ].join("\n"),
    );
  },
});
