/**
 * Comparing two sets of gradients: how the reversible backward pass is checked against autodiff.
 * @module
 */
import type * as tf from "./tf.ts";

/** What {@linkcode compareGradMaps} reports. */
export interface GradComparison {
  globalRelErr: number;
  worstTensorRelErr: number;
  worstTensor: string;
}

/** Global relative L2 error over all tensors, and the worst per-tensor max-abs relative error. */
export function compareGradMaps(
  actual: Map<string, tf.Tensor>,
  expected: Map<string, tf.Tensor>,
): GradComparison {
  const read = (m: Map<string, tf.Tensor>) =>
    new Map([...m].map(([k, t]) => [k, t.dataSync() as Float32Array]));
  return compareValues(read(actual), read(expected));
}

/**
 * {@linkcode compareGradMaps} reading the tensors asynchronously, as every backend can (WebGPU's
 * synchronous read needs a canvas that Deno lacks).
 */
export async function compareGradMapsAsync(
  actual: Map<string, tf.Tensor>,
  expected: Map<string, tf.Tensor>,
): Promise<GradComparison> {
  const read = async (m: Map<string, tf.Tensor>) => {
    const out = new Map<string, Float32Array>();
    for (const [k, t] of m) out.set(k, (await t.data()) as Float32Array);
    return out;
  };
  return compareValues(await read(actual), await read(expected));
}

function compareValues(
  actual: Map<string, Float32Array>,
  expected: Map<string, Float32Array>,
): GradComparison {
  let diff2 = 0;
  let ref2 = 0;
  let worst = 0;
  let worstName = "";
  for (const [name, ev] of expected) {
    const av = actual.get(name);
    if (!av) throw new Error(`gradient "${name}" missing`);
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
