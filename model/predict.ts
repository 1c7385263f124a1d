/**
 * The U-Net seen as sliding-window inference sees a network: channels in and out, the multiple a
 * window's edges must be, and a function from a batch of windows to their probabilities. Inference
 * (pipeline/inference/) takes such an object and imports nothing from model/.
 * @module
 */
import * as tf from "./tf.ts";
import { cropMultiple } from "./config.ts";
import { predictLogits, type UNet } from "./unet.ts";
import { checkWebGpuErrors } from "./backend.ts";

/**
 * The U-Net as sliding-window inference takes a network (`WindowPredictor` in
 * pipeline/inference/): `predict` gives the probabilities of a batch of windows, [count, z, y, x,
 * inChannels] in, [count, z, y, x, outChannels] out, computed on the network's backend (the sigmoid
 * of its logits there, so the same bits as training's validation), checked for WebGPU device errors.
 */
export function unetPredictor(net: UNet) {
  // The type is inferred: model/ imports nothing of pipeline/, and WindowPredictor is structural.
  return {
    inChannels: net.config.inChannels,
    outChannels: net.config.outChannels,
    multiple: cropMultiple(net.config),
    /** [count, z, y, x, inChannels] windows of `shape` (x, y, z) → their probabilities. */
    async predict(
      input: Float32Array,
      count: number,
      shape: readonly [number, number, number],
    ): Promise<Float32Array> {
      const out = tf.tidy(() => {
        const x = tf.tensor5d(input, [count, shape[2], shape[1], shape[0], net.config.inChannels]);
        return tf.sigmoid(predictLogits(net, x));
      });
      // An asynchronous read: WebGPU's synchronous one needs a canvas, which Deno lacks.
      const values = (await out.data()) as Float32Array;
      out.dispose();
      checkWebGpuErrors();
      return values;
    },
  };
}
