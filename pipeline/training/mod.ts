/**
 * Training: checkpoints and their state at any storage URI, saving and loading networks with their
 * digests, and the cases of a run loaded once.
 * @module
 */
export * from "./checkpoint.ts";
export * from "./model_store.ts";
export * from "./training_cases.ts";
export * from "./bench/mod.ts";
export * from "./environment/mod.ts";
