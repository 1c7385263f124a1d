/**
 * Segmentation: S3 event notifications and the cases they complete.
 * @module
 */
export * from "./events.ts";
