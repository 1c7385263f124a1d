/**
 * Comparing two sets of gradients: how the reversible backward pass is checked against autodiff.
 * @module
 */
import type * as tf from "./tf.ts";

/** Global relative L2 error over all tensors, and the worst per-tensor max-abs relative error. */
export function compareGradMaps(
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
  return {
    globalRelErr: Math.sqrt(diff2 / ref2),
    worstTensorRelErr: worst,
    worstTensor: worstName,
  };
}
