/**
 * Evaluation of segmentations against references: overlap metrics of the BraTS regions, surface
 * distances (HD95, exact Euclidean distance transform), BraTS 2023 lesion-wise scores, and
 * per-case and per-run evaluation from storage.
 * @module
 */
export * from "./metrics.ts";
export * from "./distance.ts";
export * from "./surfels.ts";
export * from "./lesion_wise.ts";
export * from "./evaluation.ts";
export * from "./run.ts";
export * from "./table.ts";
