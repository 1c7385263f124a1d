/**
 * The training loss over region logits: soft Dice plus binary cross-entropy, as nnU-Net trains its
 * BraTS region models. Each output channel is one nested region (WT, TC, ET) through its own sigmoid.
 * @module
 */
import * as tf from "./tf.ts";

/** Options of {@linkcode diceBceLoss}. */
export interface DiceBceOptions {
  /** Added to the Dice numerator and denominator; keeps empty regions well defined. @default 1 */
  smooth?: number;
  /** Weight of the cross-entropy term. @default 1 */
  bceWeight?: number;
  /** Weight of the Dice term. @default 1 */
  diceWeight?: number;
}

/**
 * Soft Dice + binary cross-entropy.
 * @param logits [n, d, h, w, r] one logit per region
 * @param target [n, d, h, w, r] of 0 and 1
 * @returns bceWeight·mean BCE + diceWeight·(1 − mean soft Dice over samples and regions)
 */
export function diceBceLoss(
  logits: tf.Tensor5D,
  target: tf.Tensor5D,
  options: DiceBceOptions = {},
): tf.Scalar {
  const { smooth = 1, bceWeight = 1, diceWeight = 1 } = options;
  if (logits.shape.join() !== target.shape.join()) {
    throw new TypeError(
      `diceBceLoss: logits [${logits.shape}] and target [${target.shape}] differ`,
    );
  }
  return tf.tidy(() => {
    // Numerically stable BCE with logits: max(z,0) − z·t + log(1 + e^−|z|)
    const bce = tf.mean(
      tf.add(
        tf.sub(tf.relu(logits), tf.mul(logits, target)),
        tf.log1p(tf.exp(tf.neg(tf.abs(logits)))),
      ),
    );
    const p = tf.sigmoid(logits);
    const axes = [1, 2, 3];
    const inter = tf.sum(tf.mul(p, target), axes); // [n, r]
    const denom = tf.add(tf.sum(p, axes), tf.sum(target, axes)); // [n, r]
    const dice = tf.div(tf.add(tf.mul(inter, 2), smooth), tf.add(denom, smooth)); // [n, r]
    return tf.add(
      tf.mul(bce, bceWeight),
      tf.mul(tf.sub(1, tf.mean(dice)), diceWeight),
    ) as tf.Scalar;
  });
}

/**
 * A random target of 0s and 1s, each voxel and region 1 with probability 1 − `threshold`, made in
 * float32 from the start (step of uniform − threshold): tfjs-webgpu 4.22 cannot transpose an int32
 * or bool tensor — its shader fails validation and the result is zeros — and a cast of a
 * comparison keeps that buffer, so summing the cast over the spatial axes, as the loss does, fails.
 */
export function randomTarget(
  shape: [number, number, number, number, number],
  seed: number,
  threshold: number,
): tf.Tensor5D {
  return tf.tidy(() =>
    tf.step(tf.sub(tf.randomUniform(shape, 0, 1, "float32", seed), threshold))
  ) as tf.Tensor5D;
}
