/**
 * Training: the settings of a run and their defaults, the run itself (open or resume, prepare
 * cases, step, end of epoch, finish), its events, validation and reports, checkpoints and their
 * state at any storage URI, saving and loading networks with their digests, the cases of a run
 * loaded once, memory planning (`plan`, `--crop auto`), benchmarks, and the environment the
 * network runs in (backends, versions, optional packages).
 *
 * Also what the command line needs of model/ (backend names and choice, the network
 * configuration's type), so that tasks/ imports no model/ module itself.
 * @module
 */
export * from "./settings.ts";
export * from "./run.ts";
export * from "./events.ts";
export * from "./validation.ts";
export * from "./reports.ts";
export * from "./run_cases.ts";
export * from "./plan.ts";
export * from "./checkpoint.ts";
export * from "./model_store.ts";
export * from "./training_cases.ts";
export * from "./bench/mod.ts";
export * from "./environment/mod.ts";
/** The network configuration, for the command line's `--config`. */
export type { NetworkConfig } from "../../model/mod.ts";
