/** Shared helpers for the model tests: randomized networks and gradient comparisons. */
import * as tf from "../model/tf.ts";
import { createUNet, type NetworkConfig, resolveConfig, type UNet } from "../model/mod.ts";

await tf.setBackend("cpu");

/**
 * A network whose norm scales and offsets are random too, so that no gradient is trivially zero
 * (the default init starts each residual branch at zero).
 */
export function randomNet(partial: Partial<NetworkConfig> = {}, seed = 1): UNet {
  const net = createUNet(resolveConfig(partial), { seed, zeroInitResidual: false });
  let i = 0;
  for (const [name, w] of net.named) {
    i++;
    if (name.endsWith("Scale")) {
      (w as tf.Variable).assign(
        tf.tidy(() => tf.add(1, tf.randomNormal(w.shape, 0, 0.3, "float32", seed * 7919 + i))),
      );
    } else if (name.endsWith("Offset") || name.endsWith("bias")) {
      (w as tf.Variable).assign(tf.randomNormal(w.shape, 0, 0.1, "float32", seed * 7919 + i));
    }
  }
  return net;
}

/** A random input [n, s, s, s, c] and region targets [n, s, s, s, r] (0/1). */
export function randomBatch(
  net: UNet,
  size: number,
  n = 1,
  seed = 3,
): { x: tf.Tensor5D; target: tf.Tensor5D } {
  const { inChannels, outChannels } = net.config;
  const x = tf.randomNormal(
    [n, size, size, size, inChannels],
    0,
    1,
    "float32",
    seed,
  ) as tf.Tensor5D;
  const target = tf.tidy(() =>
    tf.cast(
      tf.greater(
        tf.randomUniform([n, size, size, size, outChannels], 0, 1, "float32", seed + 1),
        0.7,
      ),
      "float32",
    )
  ) as tf.Tensor5D;
  return { x, target };
}

export { compareGradMaps as compareGrads } from "../model/mod.ts";
