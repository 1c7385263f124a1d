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
      (w as tf.Variable).assign(tf.tidy(() => tf.add(1, tf.randomNormal(w.shape, 0, 0.3, "float32", seed * 7919 + i))));
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
  const x = tf.randomNormal([n, size, size, size, inChannels], 0, 1, "float32", seed) as tf.Tensor5D;
  const target = tf.tidy(() =>
    tf.cast(tf.greater(tf.randomUniform([n, size, size, size, outChannels], 0, 1, "float32", seed + 1), 0.7), "float32")
  ) as tf.Tensor5D;
  return { x, target };
}

/** Global relative L2 error over all tensors, and the worst per-tensor max-abs relative error. */
export function compareGrads(
  actual: Map<string, tf.Tensor>,
  expected: Map<string, tf.Tensor>,
): { globalRelErr: number; worstTensorRelErr: number; worstTensor: string } {
  let diff2 = 0;
  let ref2 = 0;
  let worst = 0;
  let worstName = "";
  for (const [name, e] of expected) {
    const a = actual.get(name);
    if (!a) throw new Error(`gradient "${name}" missing`);
    const av = a.dataSync();
    const ev = e.dataSync();
    let maxDiff = 0;
    let maxRef = 0;
    for (let i = 0; i < ev.length; i++) {
      const d = av[i] - ev[i];
      diff2 += d * d;
      ref2 += ev[i] * ev[i];
      maxDiff = Math.max(maxDiff, Math.abs(d));
      maxRef = Math.max(maxRef, Math.abs(ev[i]));
    }
    const rel = maxRef > 0 ? maxDiff / maxRef : maxDiff;
    if (rel > worst) {
      worst = rel;
      worstName = name;
    }
  }
  return { globalRelErr: Math.sqrt(diff2 / ref2), worstTensorRelErr: worst, worstTensor: worstName };
}
