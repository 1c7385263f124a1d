/**
 * Inference on a whole volume: sliding windows with Gaussian blending and mirroring, through any
 * `predict` function, and the label-map post-processing nnU-Net offers.
 * @module
 */
export * from "./sliding_window.ts";
export * from "./postprocess.ts";
