/**
 * Optimizers with state that can be saved and restored exactly: Adam (with decoupled weight decay,
 * AdamW) and SGD with Nesterov momentum, plus nnU-Net's polynomial learning-rate decay.
 *
 * Why not tf.train.*: their state is keyed by global variable names and cannot be serialised without
 * them; resuming a run must reproduce the same next step bit for bit.
 * @module
 */
import * as tf from "./tf.ts";
import { hasKernel, REV_ADAM_UPDATE, REV_SGD_UPDATE } from "./native/names.ts";

/** Which optimizer and its hyper-parameters. */
export interface OptimizerConfig {
  /** @default "adam" */
  kind: "adam" | "sgd";
  /** Adam's β1. @default 0.9 */
  beta1: number;
  /** Adam's β2. @default 0.999 */
  beta2: number;
  /** Adam's ε. @default 1e-8 */
  epsilon: number;
  /** SGD momentum (Nesterov). @default 0.99 */
  momentum: number;
  /** Decoupled weight decay for Adam (AdamW), L2 added to the gradient for SGD. @default 0 */
  weightDecay: number;
}

export const DEFAULT_OPTIMIZER: Readonly<OptimizerConfig> = Object.freeze({
  kind: "adam",
  beta1: 0.9,
  beta2: 0.999,
  epsilon: 1e-8,
  momentum: 0.99,
  weightDecay: 0,
});

/** nnU-Net's schedule: lr · (1 − progress)^0.9, progress = step / total in [0, 1]. */
export function polyLearningRate(base: number, step: number, total: number, power = 0.9): number {
  return base * Math.pow(Math.max(0, 1 - step / Math.max(1, total)), power);
}

/** An optimizer over named weights (tf.Variables). */
export class Optimizer {
  readonly config: OptimizerConfig;
  /** Updates applied so far. */
  step = 0;
  /** Per weight: Adam's first and second moments, or SGD's velocity. */
  readonly slots = new Map<string, tf.Variable[]>();

  constructor(config: Partial<OptimizerConfig> = {}) {
    this.config = { ...DEFAULT_OPTIMIZER, ...config };
    if (this.config.kind !== "adam" && this.config.kind !== "sgd") {
      throw new RangeError(
        `Optimizer kind must be "adam" or "sgd", found ${JSON.stringify(this.config.kind)}`,
      );
    }
  }

  private slotCount(): number {
    return this.config.kind === "adam" ? 2 : 1;
  }

  /**
   * Applies one update: every weight in `grads` is changed in place.
   * @param weights name → tf.Variable
   * @param grads name → gradient (not disposed)
   * @param lr the learning rate for this step
   */
  apply(weights: Map<string, tf.Tensor>, grads: Map<string, tf.Tensor>, lr: number): void {
    this.step++;
    const { kind, beta1, beta2, epsilon, momentum, weightDecay } = this.config;
    for (const [name, g] of grads) {
      const w = weights.get(name);
      if (!(w instanceof tf.Variable)) {
        throw new TypeError(`Optimizer: weight "${name}" is not a tf.Variable`);
      }
      let slots = this.slots.get(name);
      if (!slots) {
        slots = Array.from({ length: this.slotCount() }, () => {
          const zeros = tf.zerosLike(w);
          const slot = tf.variable(zeros, false);
          zeros.dispose(); // the variable holds its own copy
          return slot;
        });
        this.slots.set(name, slots);
      }
      const s = slots;
      if (kind === "adam" && tf.getBackend() === "cpu") {
        this.adamOnCpu(w, g, s, lr);
        continue;
      }
      if (kind === "adam" && hasKernel(REV_ADAM_UPDATE)) {
        this.adamFused(w, g, s, lr);
        continue;
      }
      if (kind === "sgd" && hasKernel(REV_SGD_UPDATE)) {
        this.sgdFused(w, g, s[0], lr);
        continue;
      }
      tf.tidy(() => {
        if (kind === "adam") {
          const [m, v] = s;
          m.assign(tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1)));
          v.assign(tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2)));
          const mHat = tf.div(m, 1 - Math.pow(beta1, this.step));
          const vHat = tf.div(v, 1 - Math.pow(beta2, this.step));
          let update = tf.div(mHat, tf.add(tf.sqrt(vHat), epsilon));
          if (weightDecay > 0) update = tf.add(update, tf.mul(w, weightDecay));
          w.assign(tf.sub(w, tf.mul(update, lr)));
        } else {
          const [vel] = s;
          const grad = weightDecay > 0 ? tf.add(g, tf.mul(w, weightDecay)) : g;
          vel.assign(tf.add(tf.mul(vel, momentum), grad));
          // Nesterov: step along the gradient plus the look-ahead velocity
          w.assign(tf.sub(w, tf.mul(tf.add(grad, tf.mul(vel, momentum)), lr)));
        }
      });
    }
  }

  /**
   * The Adam update of one weight as one loop over its values, on the cpu backend: the same
   * arithmetic as the op-by-op path below in float32, without its dozen full-size intermediates
   * per weight (some 3,000 kernel calls a step for the reference network's 270 weights).
   */
  private adamOnCpu(w: tf.Variable, g: tf.Tensor, slots: tf.Variable[], lr: number): void {
    const { beta1, beta2, epsilon, weightDecay } = this.config;
    const [m, v] = slots;
    const wv = w.dataSync() as Float32Array;
    const gv = g.dataSync() as Float32Array;
    const mv = m.dataSync() as Float32Array;
    const vv = v.dataSync() as Float32Array;
    const n = wv.length;
    const m2 = new Float32Array(n);
    const v2 = new Float32Array(n);
    const w2 = new Float32Array(n);
    const f = Math.fround;
    const b1 = f(beta1), c1 = f(1 - beta1), b2 = f(beta2), c2 = f(1 - beta2);
    const bc1 = f(1 - Math.pow(beta1, this.step)), bc2 = f(1 - Math.pow(beta2, this.step));
    const eps = f(epsilon), wd = f(weightDecay), rate = f(lr);
    for (let i = 0; i < n; i++) {
      const gi = gv[i];
      const mi = f(f(mv[i] * b1) + f(gi * c1));
      const vi = f(f(vv[i] * b2) + f(f(gi * gi) * c2));
      m2[i] = mi;
      v2[i] = vi;
      let update = f(f(mi / bc1) / f(f(Math.sqrt(f(vi / bc2))) + eps));
      if (weightDecay > 0) update = f(update + f(wv[i] * wd));
      w2[i] = f(wv[i] - f(update * rate));
    }
    tf.tidy(() => {
      m.assign(tf.tensor(m2, m.shape, "float32"));
      v.assign(tf.tensor(v2, v.shape, "float32"));
      w.assign(tf.tensor(w2, w.shape, "float32"));
    });
  }

  /** The Adam update of one weight by the backend's fused kernel (webgpu's WGSL one). */
  private adamFused(w: tf.Variable, g: tf.Tensor, slots: tf.Variable[], lr: number): void {
    const { beta1, beta2, epsilon, weightDecay } = this.config;
    const [m, v] = slots;
    tf.tidy(() => {
      const [w2, m2, v2] = tf.engine().runKernel(REV_ADAM_UPDATE, { w, g, m, v }, {
        beta1,
        beta2,
        epsilon,
        weightDecay,
        lr,
        step: this.step,
      }) as tf.Tensor[];
      m.assign(m2);
      v.assign(v2);
      w.assign(w2);
    });
  }

  /** The SGD update of one weight by the backend's fused kernel (webgpu's WGSL one). */
  private sgdFused(w: tf.Variable, g: tf.Tensor, vel: tf.Variable, lr: number): void {
    const { momentum, weightDecay } = this.config;
    tf.tidy(() => {
      const [w2, vel2] = tf.engine().runKernel(REV_SGD_UPDATE, { w, g, vel }, {
        momentum,
        weightDecay,
        lr,
      }) as tf.Tensor[];
      vel.assign(vel2);
      w.assign(w2);
    });
  }

  /** The state as named tensors (copies are not made: do not dispose them). */
  state(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (const [name, slots] of this.slots) slots.forEach((t, i) => out.set(`slot${i}/${name}`, t));
    return out;
  }

  /** Restores state saved by {@linkcode state} (values are copied). */
  load(step: number, state: Map<string, tf.Tensor>): void {
    this.dispose();
    this.step = step;
    for (const [key, t] of state) {
      const m = /^slot(\d+)\/(.+)$/.exec(key);
      if (!m || Number(m[1]) >= this.slotCount()) {
        throw new RangeError(
          `Optimizer state has an unexpected entry "${key}" for ${this.config.kind}`,
        );
      }
      const slots = this.slots.get(m[2]) ?? [];
      slots[Number(m[1])] = tf.variable(t, false);
      this.slots.set(m[2], slots);
    }
  }

  /** Frees the state. */
  dispose(): void {
    for (const slots of this.slots.values()) for (const t of slots) t?.dispose();
    this.slots.clear();
  }
}
