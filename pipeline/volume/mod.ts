/**
 * Volumes on a voxel grid: extents, boxes, bounding boxes, cropping with zero padding, uncropping
 * and mirroring of channel-last arrays.
 * @module
 */
export * from "./geometry.ts";
