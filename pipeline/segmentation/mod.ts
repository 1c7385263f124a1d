/**
 * Segmentation: the {@linkcode Segmenter} (a trained model loaded once, segmenting cases into label
 * volumes on their own grids, with the records that let a later run skip them), runs over a
 * dataset or the cases an S3 event notification completes, and the event service (`serve`): HTTP
 * and authentication, jobs and de-duplication, and the worker threads that segment.
 * @module
 */
export * from "./s3_event.ts";
export * from "./bucket_name.ts";
export * from "./events.ts";
export * from "./event_datasets.ts";
export * from "./dataset_metrics.ts";
export * from "./channels.ts";
export * from "./outputs.ts";
export * from "./segmenter.ts";
export * from "./encode_case.ts";
export * from "./batch.ts";
export { BACKEND_NAMES, type BackendName } from "../../model/mod.ts";
export * from "./runner.ts";
export * from "./worker_pool.ts";
export * from "./job.ts";
export * from "./jobs.ts";
export { DEDUPE_ENTRIES } from "./intake.ts";
export * from "./service.ts";
export * from "./model_service.ts";
