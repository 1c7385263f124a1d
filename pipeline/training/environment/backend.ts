/**
 * The backend the network computes on, as the tasks ask for it: the names `--backend` takes, the
 * choice with its reason, the WebGPU device's error check, and the versions `version` reports.
 * @module
 */
import config from "../../../deno.json" with { type: "json" };
import * as tf from "../../../model/tf.ts";
import { selectBackend } from "../../../model/backend.ts";

export {
  BACKEND_NAMES,
  type BackendChoice,
  type BackendName,
  checkWebGpuErrors,
  onWebGpuError,
  selectBackend,
} from "../../../model/backend.ts";

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
