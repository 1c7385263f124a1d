/**
 * The mobile inverted bottleneck used as F and G in every reversible block (MobileNetV2 with
 * GroupNorm, which stays stable at batch size 1):
 *
 *     expand 1×1×1 c→e → GroupNorm → act → depthwise 3×3×3 → GroupNorm → act → project 1×1×1 e→c → GroupNorm
 *
 * The projection is linear (no activation): the "linear bottleneck" that keeps information in the
 * narrow c-channel stream the coupling adds onto.
 * @module
 */
import * as tf from "./tf.ts";
import { depthwiseConv3d } from "./depthwise_conv3d.ts";
import { groupNorm } from "./group_norm.ts";

/** Weights of one inverted bottleneck, in a fixed order so they can travel as a tensor list. */
export interface BottleneckWeights {
  expand: tf.Tensor2D; // [c, e]
  norm1Scale: tf.Tensor1D; // [e]
  norm1Offset: tf.Tensor1D; // [e]
  depthwise: tf.Tensor5D; // [3, 3, 3, e, 1]
  norm2Scale: tf.Tensor1D; // [e]
  norm2Offset: tf.Tensor1D; // [e]
  project: tf.Tensor2D; // [e, c]
  norm3Scale: tf.Tensor1D; // [c]
  norm3Offset: tf.Tensor1D; // [c]
}

/** The order of {@linkcode BottleneckWeights} fields as a flat list (for tf.grads). */
export const BOTTLENECK_FIELDS = [
  "expand",
  "norm1Scale",
  "norm1Offset",
  "depthwise",
  "norm2Scale",
  "norm2Offset",
  "project",
  "norm3Scale",
  "norm3Offset",
] as const satisfies readonly (keyof BottleneckWeights)[];

/** How the bottleneck normalizes and activates. */
export interface BottleneckOptions {
  /** GroupNorm groups for the expanded (e) and the narrow (c) tensors. */
  groupsExpanded: number;
  groupsNarrow: number;
  epsilon: number;
  activation: "relu6" | "relu";
}

/** Shapes of one bottleneck's weights on c channels with expansion t. */
export function bottleneckShapes(c: number, t: number): Record<keyof BottleneckWeights, number[]> {
  const e = c * t;
  return {
    expand: [c, e],
    norm1Scale: [e],
    norm1Offset: [e],
    depthwise: [3, 3, 3, e, 1],
    norm2Scale: [e],
    norm2Offset: [e],
    project: [e, c],
    norm3Scale: [c],
    norm3Offset: [c],
  };
}

/** A 1×1×1 convolution as a matrix product over all voxels: [n,d,h,w,cin]·[cin,cout]. */
export function pointwise(x: tf.Tensor5D, w: tf.Tensor2D): tf.Tensor5D {
  const [n, d, h, wd, cin] = x.shape;
  const flat = tf.reshape(x, [n * d * h * wd, cin]); // [voxels, cin]
  return tf.reshape(tf.matMul(flat, w), [n, d, h, wd, w.shape[1]]); // [n, d, h, w, cout]
}

/**
 * Applies one inverted bottleneck to `x` ([n, d, h, w, c]); returns [n, d, h, w, c].
 */
export function bottleneck(
  x: tf.Tensor5D,
  w: BottleneckWeights,
  o: BottleneckOptions,
): tf.Tensor5D {
  const norm = (t: tf.Tensor5D, s: tf.Tensor1D, b: tf.Tensor1D, groups: number, act: boolean) =>
    groupNorm(t, s, b, {
      groups,
      epsilon: o.epsilon,
      activation: act ? o.activation : "none",
    });
  const e1 = norm(pointwise(x, w.expand), w.norm1Scale, w.norm1Offset, o.groupsExpanded, true); // [n,d,h,w,e]
  const e2 = norm(
    depthwiseConv3d(e1, w.depthwise),
    w.norm2Scale,
    w.norm2Offset,
    o.groupsExpanded,
    true,
  ); // [n,d,h,w,e]
  return norm(pointwise(e2, w.project), w.norm3Scale, w.norm3Offset, o.groupsNarrow, false); // [n,d,h,w,c]
}

/** Flattens weights into {@linkcode BOTTLENECK_FIELDS} order. */
export function bottleneckList(w: BottleneckWeights): tf.Tensor[] {
  return BOTTLENECK_FIELDS.map((f) => w[f]);
}

/** Rebuilds weights from a list in {@linkcode BOTTLENECK_FIELDS} order. */
export function bottleneckFromList(list: tf.Tensor[]): BottleneckWeights {
  return Object.fromEntries(
    BOTTLENECK_FIELDS.map((f, i) => [f, list[i]]),
  ) as unknown as BottleneckWeights;
}
