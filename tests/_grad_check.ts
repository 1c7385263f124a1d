/**
 * Helpers for checking values and gradients of layers: seeded random tensors, a scale-aware
 * comparison, central finite differences (per element, or along a random direction), and peak
 * tensor memory.
 *
 * Finite differences are taken on the scalar `L = Σ cotangent ⊙ f(inputs)`, accumulated in float64
 * from the float32 output, so that the only float32 error is that of `f` itself.
 * @module
 */
import { AssertionError } from "node:assert";
import * as tf from "../model/tf.ts";

/** A function of tensors whose gradient is checked; it must not dispose its arguments. */
export type TensorFn = (...inputs: tf.Tensor[]) => tf.Tensor;

export { seededRandom } from "../pipeline/cases/random.ts";

/** Normal values (Box–Muller) of `shape` from `rng`, as float32. */
export function randomNormal<R extends tf.Rank>(
  shape: number[],
  rng: () => number,
  { mean = 0, std = 1 }: { mean?: number; std?: number } = {},
): tf.Tensor<R> {
  const size = shape.reduce((a, b) => a * b, 1);
  const values = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    const u = 1 - rng(); // (0, 1]
    const v = rng();
    values[i] = mean + std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return tf.tensor(values, shape as tf.ShapeMap[R], "float32") as tf.Tensor<R>;
}

/**
 * The largest absolute difference divided by the largest magnitude of `expected` (an infinity-norm
 * relative error: small entries of `expected` are not held to a tighter standard than large ones).
 */
export function maxRelativeError(actual: tf.Tensor, expected: tf.Tensor): number {
  const a = actual.dataSync();
  const e = expected.dataSync();
  return maxRelativeErrorOf(a, e);
}

function maxRelativeErrorOf(a: ArrayLike<number>, e: ArrayLike<number>): number {
  if (a.length !== e.length) return Infinity;
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - e[i]));
    scale = Math.max(scale, Math.abs(e[i]));
  }
  if (Number.isNaN(diff)) return NaN;
  return scale === 0 ? diff : diff / scale;
}

/** Asserts equal shapes and {@linkcode maxRelativeError} at most `rtol`. */
export function assertAllClose(
  actual: tf.Tensor | ArrayLike<number>,
  expected: tf.Tensor | ArrayLike<number>,
  rtol: number,
  what: string,
): void {
  if (actual instanceof tf.Tensor && expected instanceof tf.Tensor) {
    if (actual.shape.join() !== expected.shape.join()) {
      throw new AssertionError({
        message: `${what}: shape [${actual.shape}] differs from expected [${expected.shape}]`,
      });
    }
  }
  const a = actual instanceof tf.Tensor ? actual.dataSync() : actual;
  const e = expected instanceof tf.Tensor ? expected.dataSync() : expected;
  const err = maxRelativeErrorOf(a, e);
  if (!(err <= rtol)) {
    throw new AssertionError({
      message: `${what}: relative error ${err.toExponential(2)} exceeds ${rtol.toExponential(0)}`,
    });
  }
}

/** `Σ cotangent ⊙ f(inputs)` in float64; disposes the output of `f`. */
export function projectedLoss(f: TensorFn, inputs: tf.Tensor[], cotangent: tf.Tensor): number {
  const y = f(...inputs);
  const yv = y.dataSync();
  const cv = cotangent.dataSync();
  y.dispose();
  let sum = 0;
  for (let i = 0; i < yv.length; i++) sum += yv[i] * cv[i];
  return sum;
}

/**
 * Central finite differences of `Σ cotangent ⊙ f(inputs)` with respect to every element of
 * `inputs[which]`. For tiny shapes only: two evaluations of `f` per element.
 */
export function numericGradient(
  f: TensorFn,
  inputs: tf.Tensor[],
  which: number,
  cotangent: tf.Tensor,
  eps: number,
): Float64Array {
  const base = Float32Array.from(inputs[which].dataSync());
  const shape = inputs[which].shape;
  const out = new Float64Array(base.length);
  const at = (values: Float32Array) => {
    const t = tf.tensor(values, shape, "float32");
    const args = inputs.map((x, i) => (i === which ? t : x));
    const loss = projectedLoss(f, args, cotangent);
    t.dispose();
    return loss;
  };
  for (let i = 0; i < base.length; i++) {
    const v = base.slice();
    v[i] = base[i] + eps;
    const plus = at(v);
    v[i] = base[i] - eps;
    const minus = at(v);
    out[i] = (plus - minus) / (2 * eps);
  }
  return out;
}

/**
 * The derivative of `Σ cotangent ⊙ f(inputs)` along `direction` for `inputs[which]`, by central
 * differences (`numeric`) and from the gradient `grad` of that input (`analytic`, `Σ grad ⊙
 * direction`), both in float64.
 */
export function directionalDerivative(
  f: TensorFn,
  inputs: tf.Tensor[],
  which: number,
  cotangent: tf.Tensor,
  grad: tf.Tensor,
  direction: tf.Tensor,
  eps: number,
): { numeric: number; analytic: number } {
  const shifted = (sign: number) =>
    tf.tidy(() => {
      const moved = tf.add(inputs[which], tf.mul(direction, sign * eps));
      return projectedLoss(f, inputs.map((x, i) => (i === which ? moved : x)), cotangent);
    });
  const numeric = (shifted(1) - shifted(-1)) / (2 * eps);
  const g = grad.dataSync();
  const v = direction.dataSync();
  let analytic = 0;
  for (let i = 0; i < g.length; i++) analytic += g[i] * v[i];
  return { numeric, analytic };
}

/**
 * Value and gradients of `f` at `inputs` for the incoming gradient `dy`; the caller disposes the
 * returned tensors.
 */
export function valueAndGrads(
  f: TensorFn,
  inputs: tf.Tensor[],
  dy: tf.Tensor,
): { value: tf.Tensor; grads: tf.Tensor[] } {
  return tf.valueAndGrads(f)(inputs, dy);
}

/**
 * Peak tensor bytes while `fn` runs, above those allocated when it starts (`tf.profile` counts
 * tensor objects, so views and saved clones count in full). `fn` must dispose what it creates.
 */
export async function peakBytesAbove(fn: () => void): Promise<number> {
  const before = tf.memory().numBytes;
  // tf.profile returns the same mutable object on every call: copy the figure out at once.
  const info = await tf.profile(() => {
    fn();
  });
  const peak = info.peakBytes;
  return peak - before;
}
