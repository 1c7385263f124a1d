/**
 * Names of the project's own tfjs kernels, the test the layers use to pick them, and the checks
 * of their arguments that every backend's implementation shares (model/native for cpu,
 * model/webgpu for webgpu).
 *
 * Kept apart from the kernels themselves so that the layers (depthwise_conv3d.ts, group_norm.ts)
 * can ask for a kernel without importing any FFI code: on a backend with no such kernel
 * registered (cpu with the native path off, or with REVUNET_NATIVE=0) they take their tfjs
 * composite path.
 * @module
 */
import * as tf from "../tf.ts";

/** Depthwise conv3d, stride 1, "same": inputs `{x, filter}` → `y`. */
export const REV_DEPTHWISE_CONV3D = "RevDepthwiseConv3D";
/** Its gradient with respect to the input: inputs `{dy, filter}` → `dx`. */
export const REV_DEPTHWISE_CONV3D_BACKPROP_INPUT = "RevDepthwiseConv3DBackpropInput";
/** Its gradient with respect to the filter: inputs `{x, dy}` → `dfilter` `[kd, kh, kw, c, 1]`. */
export const REV_DEPTHWISE_CONV3D_BACKPROP_FILTER = "RevDepthwiseConv3DBackpropFilter";
/**
 * GroupNorm + activation: inputs `{x, gamma, beta}`, attrs `{groups, epsilon, activation}` →
 * `[y, mean, rstd]` with `mean` and `rstd` of shape `[n, groups]`.
 */
export const REV_GROUP_NORM_ACT = "RevGroupNormAct";
/**
 * Its gradient: inputs `{dy, x, gamma, beta, mean, rstd}`, attrs `{groups, activation}` →
 * `[dx, dgamma, dbeta]`.
 */
export const REV_GROUP_NORM_ACT_GRAD = "RevGroupNormActGrad";
/**
 * One Adam(W) update of one weight: inputs `{w, g, m, v}`, attrs `{beta1, beta2, epsilon,
 * weightDecay, lr, step}` (step counted from 1) → `[w', m', v']`, the arithmetic of the op-by-op
 * update in model/optimizer.ts. Registered on webgpu, where the op-by-op update is some fifteen
 * dispatches per weight.
 */
export const REV_ADAM_UPDATE = "RevAdamUpdate";
/**
 * One SGD update with Nesterov momentum (and decoupled weight decay) of one weight: inputs
 * `{w, g, vel}`, attrs `{momentum, weightDecay, lr}` → `[w', vel']`, the arithmetic of the
 * op-by-op update in model/optimizer.ts. Registered on webgpu.
 */
export const REV_SGD_UPDATE = "RevSgdUpdate";

/** Whether `kernelName` is registered for the active backend. */
export function hasKernel(kernelName: string): boolean {
  return tf.getKernel(kernelName, tf.getBackend()) !== undefined;
}

/** The activations GroupNorm kernels fuse, by the code both implementations use. */
export const KERNEL_ACTIVATIONS = { none: 0, relu: 1, relu6: 2 } as const;

/** [kd, kh, kw] of a `[kd, kh, kw, c, 1]` depthwise filter for `x` `[n, d, h, w, c]`, checked. */
export function depthwiseKernelSize(
  x: number[],
  filter: number[],
  kernel: string,
): [number, number, number] {
  const [kd, kh, kw, fc, m] = filter;
  if (
    x.length !== 5 || filter.length !== 5 || fc !== x[4] || m !== 1 ||
    [kd, kh, kw].some((s) => s % 2 !== 1)
  ) {
    throw new TypeError(
      `${kernel}: needs x [n,d,h,w,c] and filter [kd,kh,kw,c,1] with odd sizes, found ` +
        `[${x}] and [${filter}]`,
    );
  }
  return [kd, kh, kw];
}

/** Samples, voxels per sample, channels, groups and activation code of a GroupNorm call. */
export interface GroupNormCall {
  n: number;
  voxels: number;
  c: number;
  groups: number;
  act: number;
}

/**
 * The dimensions of a GroupNorm kernel call on `x` `[n, ..., c]` with `gamma` and `beta` `[c]`
 * and attributes `{groups, activation}`, checked.
 */
export function groupNormCall(
  shapes: { x: number[]; gamma: number[]; beta: number[] },
  attrs: Record<string, unknown> | undefined,
  kernel: string,
): GroupNormCall {
  const { x, gamma, beta } = shapes;
  const groups = Number(attrs?.groups);
  const activation = String(attrs?.activation ?? "none");
  const act = KERNEL_ACTIVATIONS[activation as keyof typeof KERNEL_ACTIVATIONS];
  const n = x[0];
  const c = x[x.length - 1];
  if (x.length < 2 || gamma.join() !== `${c}` || beta.join() !== `${c}`) {
    throw new TypeError(
      `${kernel}: needs x [n,...,c] with gamma and beta [c], found [${x}], [${gamma}] and ` +
        `[${beta}]`,
    );
  }
  if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0) {
    throw new RangeError(`${kernel}: groups must divide the ${c} channels, found ${groups}`);
  }
  if (act === undefined) {
    throw new RangeError(
      `${kernel}: activation must be none, relu or relu6, found "${activation}"`,
    );
  }
  const voxels = n * c === 0 ? 0 : tf.util.sizeFromShape(x) / (n * c);
  return { n, voxels, c, groups, act };
}
