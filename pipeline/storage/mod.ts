/**
 * Object storage: one interface over `s3://bucket/key`, local paths and `file://` URLs (listing,
 * ranged reads, atomic writes, stale-write cleanup) and the lock on a run's output folder.
 * Everything else in pipeline/ reaches storage through this module.
 * @module
 */
export * from "./objects.ts";
export * from "./uri.ts";
export * from "./run_lock.ts";
export { isTransientS3Error } from "./s3.ts";
