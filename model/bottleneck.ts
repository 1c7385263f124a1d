/**
 * The mobile inverted bottleneck used as F and G in every reversible block (MobileNetV2 with
 * GroupNorm, which stays stable at batch size 1):
 *
 *     expand 1×1×1 c→e → GroupNorm → act → depthwise 3×3×3 → GroupNorm → act → project 1×1×1 e→c → GroupNorm
 *
 * The projection is linear (no activation): the "linear bottleneck" that keeps information in the
 * narrow c-channel stream the coupling adds onto.
 *
 * Three ways to run it:
 * - {@linkcode bottleneck}: composed ops that automatic differentiation can go through (the
 *   standard twin stores every intermediate under a gradient tape);
 * - {@linkcode bottleneckForward}: the value alone, outside any tape, freeing each expanded
 *   intermediate as soon as the next exists (at most two expanded tensors alive);
 * - {@linkcode bottleneckVjp}: the value and the vector-Jacobian product with respect to the input
 *   and every weight, stage by stage with the analytic gradient of each stage, recomputing the
 *   cheap first stage rather than keeping it (at most three expanded tensors alive). This is what
 *   the reversible backward pass calls for each F and G; no tape is involved.
 * @module
 */
import * as tf from "./tf.ts";
import { depthwiseConv3d } from "./depthwise_conv3d.ts";
import { groupNorm, type GroupNormActivation } from "./group_norm.ts";
import {
  hasKernel,
  REV_DEPTHWISE_CONV3D,
  REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
  REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
  REV_GROUP_NORM_ACT,
  REV_GROUP_NORM_ACT_GRAD,
} from "./native/names.ts";

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

/**
 * The value of {@linkcode bottleneck} without a gradient tape, each expanded intermediate freed as
 * soon as the next one exists: at most two `[n, d, h, w, e]` tensors are alive at once, where a
 * `tf.tidy` around the composite keeps all four until it ends. Call it outside any gradient tape
 * (it would not be differentiable there without keeping everything); the input is not disposed.
 * @returns [n, d, h, w, c]
 */
export function bottleneckForward(
  x: tf.Tensor5D,
  w: BottleneckWeights,
  o: BottleneckOptions,
): tf.Tensor5D {
  const a1 = expand(x, w); // [n,d,h,w,e]
  const n1 = normForward(
    a1,
    w.norm1Scale,
    w.norm1Offset,
    o.groupsExpanded,
    o.epsilon,
    o.activation,
  );
  tf.dispose([a1, ...n1.stats]);
  const a2 = depthwiseForward(n1.y, w.depthwise); // [n,d,h,w,e]
  n1.y.dispose();
  const n2 = normForward(
    a2,
    w.norm2Scale,
    w.norm2Offset,
    o.groupsExpanded,
    o.epsilon,
    o.activation,
  );
  tf.dispose([a2, ...n2.stats]);
  const a3 = tf.matMul(n2.y, w.project) as tf.Tensor5D; // [n,d,h,w,c]
  n2.y.dispose();
  const n3 = normForward(a3, w.norm3Scale, w.norm3Offset, o.groupsNarrow, o.epsilon, "none");
  tf.dispose([a3, ...n3.stats]);
  return n3.y;
}

/** The value of a bottleneck, and the gradients of its input and of every weight. */
export interface BottleneckVjp {
  value: tf.Tensor5D; // [n, d, h, w, c]
  dx: tf.Tensor5D; // [n, d, h, w, c]
  dw: BottleneckWeights;
}

/**
 * The value of {@linkcode bottleneck} at `x` and its vector-Jacobian product with `dy`, computed
 * stage by stage with each stage's analytic gradient (the native kernels' on the cpu backend),
 * outside any gradient tape, disposing every intermediate as soon as it is no longer needed.
 *
 * With `e` the expanded width, the schedule keeps at most three `[n, d, h, w, e]` tensors alive:
 * the forward pass keeps the depthwise output `a2` and its activation `h2` (what the backward pass
 * of the second GroupNorm and of the projection need) but not the expansion `a1` or its activation
 * `h1`, which the backward pass recomputes from `x` (one c→e product and one GroupNorm) when it
 * reaches them. Automatic differentiation of the composite keeps all four, their gradients and
 * the aliases the tape saves.
 *
 * Same values as `tf.grads` of {@linkcode bottleneck} to float32 rounding. Nothing given is
 * disposed; every returned tensor is new.
 * @param x the input [n, d, h, w, c]
 * @param w the weights
 * @param dy the gradient of the loss with respect to the output [n, d, h, w, c]
 */
export function bottleneckVjp(
  x: tf.Tensor5D,
  w: BottleneckWeights,
  dy: tf.Tensor5D,
  o: BottleneckOptions,
): BottleneckVjp {
  const { groupsExpanded: gE, groupsNarrow: gN, epsilon: eps, activation: act } = o;
  // ---- forward: keep a2 and h2 (and the narrow a3)
  let a1 = expand(x, w); // [n,d,h,w,e]
  let n1 = normForward(a1, w.norm1Scale, w.norm1Offset, gE, eps, act);
  tf.dispose([a1, ...n1.stats]);
  const a2 = depthwiseForward(n1.y, w.depthwise); // [n,d,h,w,e]
  n1.y.dispose();
  const n2 = normForward(a2, w.norm2Scale, w.norm2Offset, gE, eps, act); // h2 = n2.y
  const a3 = tf.matMul(n2.y, w.project) as tf.Tensor5D; // [n,d,h,w,c]
  const n3 = normForward(a3, w.norm3Scale, w.norm3Offset, gN, eps, "none");
  const value = n3.y; // [n,d,h,w,c]

  // ---- backward, last stage first
  const [da3, dNorm3Scale, dNorm3Offset] = normBackward(
    dy,
    a3,
    w.norm3Scale,
    w.norm3Offset,
    n3.stats,
    gN,
    eps,
    "none",
  ); // da3 [n,d,h,w,c]
  tf.dispose([a3, ...n3.stats]);
  // The projection's weight gradient first, so that h2 is gone before its input gradient exists.
  const dProject = voxelProduct(n2.y, da3); // [e, c]
  n2.y.dispose();
  const dh2 = tf.matMul(da3, w.project, false, true) as tf.Tensor5D; // [n,d,h,w,e]
  da3.dispose();
  const [da2, dNorm2Scale, dNorm2Offset] = normBackward(
    dh2,
    a2,
    w.norm2Scale,
    w.norm2Offset,
    n2.stats,
    gE,
    eps,
    act,
  ); // da2 [n,d,h,w,e]
  tf.dispose([dh2, a2, ...n2.stats]);
  // Recompute the expansion and its activation: cheaper than keeping them through the above.
  a1 = expand(x, w);
  n1 = normForward(a1, w.norm1Scale, w.norm1Offset, gE, eps, act);
  const [dh1, dDepthwise] = depthwiseBackward(n1.y, w.depthwise, da2); // disposes n1.y
  da2.dispose();
  const [da1, dNorm1Scale, dNorm1Offset] = normBackward(
    dh1,
    a1,
    w.norm1Scale,
    w.norm1Offset,
    n1.stats,
    gE,
    eps,
    act,
  ); // da1 [n,d,h,w,e]
  tf.dispose([dh1, a1, ...n1.stats]);
  const dExpand = voxelProduct(x, da1); // [c, e]
  const dx = tf.matMul(da1, w.expand, false, true) as tf.Tensor5D; // [n,d,h,w,c]
  da1.dispose();
  return {
    value,
    dx,
    dw: {
      expand: dExpand,
      norm1Scale: dNorm1Scale,
      norm1Offset: dNorm1Offset,
      depthwise: dDepthwise,
      norm2Scale: dNorm2Scale,
      norm2Offset: dNorm2Offset,
      project: dProject,
      norm3Scale: dNorm3Scale,
      norm3Offset: dNorm3Offset,
    },
  };
}

// ---- the stages of bottleneckForward and bottleneckVjp ------------------------------------------

/**
 * The expansion x·W as one matrix product on the 5D tensor (a batch of [w, c] matrices times one
 * [c, e] matrix, which the cpu kernels run as a single product): no reshape, because tf.profile
 * counts a reshaped alias as a second tensor of the full size.
 */
function expand(x: tf.Tensor5D, w: BottleneckWeights): tf.Tensor5D {
  return tf.matMul(x, w.expand) as tf.Tensor5D; // [n,d,h,w,e]
}

/** Σ over voxels of aᵀ·b: the weight gradient of a 1×1×1 convolution with input a, output grad b. */
function voxelProduct(a: tf.Tensor5D, b: tf.Tensor5D): tf.Tensor2D {
  return tf.tidy(() => {
    const ca = a.shape[4];
    const cb = b.shape[4];
    return tf.matMul(tf.reshape(a, [-1, ca]), tf.reshape(b, [-1, cb]), true, false); // [ca, cb]
  });
}

/** A GroupNorm(+act) value and, on the native path, its statistics (mean, rstd) for the backward. */
interface NormOut {
  y: tf.Tensor5D;
  stats: tf.Tensor[];
}

function normForward(
  x: tf.Tensor5D,
  scale: tf.Tensor1D,
  offset: tf.Tensor1D,
  groups: number,
  epsilon: number,
  activation: GroupNormActivation,
): NormOut {
  if (hasKernel(REV_GROUP_NORM_ACT) && hasKernel(REV_GROUP_NORM_ACT_GRAD)) {
    const [y, mean, rstd] = tf.engine().runKernel<tf.Tensor[]>(
      REV_GROUP_NORM_ACT,
      { x, gamma: scale, beta: offset },
      { groups, epsilon, activation },
    );
    return { y: y as tf.Tensor5D, stats: [mean, rstd] };
  }
  return { y: groupNorm(x, scale, offset, { groups, epsilon, activation }), stats: [] };
}

/** [dx, dscale, doffset] of a GroupNorm(+act) at `x` for the output gradient `dy`. */
function normBackward(
  dy: tf.Tensor5D,
  x: tf.Tensor5D,
  scale: tf.Tensor1D,
  offset: tf.Tensor1D,
  stats: tf.Tensor[],
  groups: number,
  epsilon: number,
  activation: GroupNormActivation,
): [tf.Tensor5D, tf.Tensor1D, tf.Tensor1D] {
  if (stats.length === 2) {
    const [mean, rstd] = stats;
    return tf.engine().runKernel<tf.Tensor[]>(
      REV_GROUP_NORM_ACT_GRAD,
      { dy, x, gamma: scale, beta: offset, mean, rstd },
      { groups, activation },
    ) as [tf.Tensor5D, tf.Tensor1D, tf.Tensor1D];
  }
  // Other backends: the layer's own gradient through a one-op tape (it recomputes the value).
  return tf.tidy(() =>
    tf.grads((a: tf.Tensor, s: tf.Tensor, b: tf.Tensor) =>
      groupNorm(a as tf.Tensor5D, s as tf.Tensor1D, b as tf.Tensor1D, {
        groups,
        epsilon,
        activation,
      })
    )([x, scale, offset], dy)
  ) as [tf.Tensor5D, tf.Tensor1D, tf.Tensor1D];
}

function depthwiseForward(x: tf.Tensor5D, filter: tf.Tensor5D): tf.Tensor5D {
  return hasKernel(REV_DEPTHWISE_CONV3D)
    ? tf.engine().runKernel<tf.Tensor5D>(REV_DEPTHWISE_CONV3D, { x, filter })
    : depthwiseConv3d(x, filter);
}

/**
 * [dx, dfilter] of the depthwise convolution at `x` for the output gradient `dy`. Disposes `x`
 * as soon as it is no longer needed (before dx exists, on the native path).
 */
function depthwiseBackward(
  x: tf.Tensor5D,
  filter: tf.Tensor5D,
  dy: tf.Tensor5D,
): [tf.Tensor5D, tf.Tensor5D] {
  if (
    hasKernel(REV_DEPTHWISE_CONV3D_BACKPROP_FILTER) &&
    hasKernel(REV_DEPTHWISE_CONV3D_BACKPROP_INPUT)
  ) {
    const engine = tf.engine();
    const dFilter = engine.runKernel<tf.Tensor5D>(
      REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
      { x, dy },
      { filterShape: filter.shape },
    ); // [kd, kh, kw, e, 1]
    x.dispose();
    const dx = engine.runKernel<tf.Tensor5D>(REV_DEPTHWISE_CONV3D_BACKPROP_INPUT, { dy, filter });
    return [dx, dFilter];
  }
  const grads = tf.tidy(() =>
    tf.grads((a: tf.Tensor, f: tf.Tensor) => depthwiseConv3d(a as tf.Tensor5D, f as tf.Tensor5D))(
      [x, filter],
      dy,
    )
  ) as [tf.Tensor5D, tf.Tensor5D];
  x.dispose();
  return grads;
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
