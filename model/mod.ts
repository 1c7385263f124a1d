/**
 * The reversible mobile-inverted-bottleneck 3D U-Net in TensorFlow.js: tensors only, no I/O.
 * @module
 */
export * from "./config.ts";
export * from "./bottleneck.ts";
export * from "./depthwise_conv3d.ts";
export * from "./group_norm.ts";
export * from "./reversible.ts";
export * from "./upsample.ts";
export * from "./unet.ts";
export * from "./predict.ts";
export * from "./loss.ts";
export * from "./optimizer.ts";
export * from "./train_step.ts";
export * from "./safetensors.ts";
export * from "./serialize.ts";
export * from "./memory.ts";
export * from "./grad_check.ts";
export * from "./backend.ts";
export * from "./native/mod.ts";
export * from "./webgpu/kernels.ts";
