/**
 * One training step: forward, loss, backward (reversible or standard), optimizer update.
 * @module
 */
import * as tf from "./tf.ts";
import { diceBceLoss, type DiceBceOptions } from "./loss.ts";
import type { Optimizer } from "./optimizer.ts";
import { computeGrads, type UNet } from "./unet.ts";
import { checkWebGpuErrors } from "./backend.ts";

/** The step itself; returns the loss tensor (the caller reads and disposes it). */
function step(
  net: UNet,
  optimizer: Optimizer,
  x: tf.Tensor5D,
  target: tf.Tensor5D,
  lr: number,
  lossOptions: DiceBceOptions,
): tf.Scalar {
  const { loss, grads } = computeGrads(
    net,
    x,
    (logits) => diceBceLoss(logits, target, lossOptions),
  );
  try {
    optimizer.apply(net.named, grads, lr);
    return loss;
  } catch (e) {
    loss.dispose();
    throw e;
  } finally {
    for (const g of grads.values()) g.dispose();
  }
}

/**
 * Runs one step on a batch and updates the weights in place.
 * @param x [n, d, h, w, in] normalized images
 * @param target [n, d, h, w, out] region masks (0/1)
 * @returns the loss before the update
 */
export function trainStep(
  net: UNet,
  optimizer: Optimizer,
  x: tf.Tensor5D,
  target: tf.Tensor5D,
  lr: number,
  lossOptions: DiceBceOptions = {},
): number {
  const loss = step(net, optimizer, x, target, lr, lossOptions);
  try {
    return loss.dataSync()[0];
  } finally {
    loss.dispose();
  }
}

/**
 * {@linkcode trainStep} reading the loss asynchronously, which every backend supports (WebGPU's
 * synchronous read needs a canvas that Deno lacks).
 */
export async function trainStepAsync(
  net: UNet,
  optimizer: Optimizer,
  x: tf.Tensor5D,
  target: tf.Tensor5D,
  lr: number,
  lossOptions: DiceBceOptions = {},
): Promise<number> {
  const loss = step(net, optimizer, x, target, lr, lossOptions);
  try {
    const value = (await loss.data())[0];
    checkWebGpuErrors();
    return value;
  } finally {
    loss.dispose();
  }
}
