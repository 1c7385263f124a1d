/**
 * Names of the project's own tfjs kernels, and the test the layers use to pick them.
 *
 * Kept apart from the kernels themselves so that the layers (depthwise_conv3d.ts, group_norm.ts)
 * can ask for a kernel without importing any FFI code: on a backend with no such kernel
 * registered (webgpu, or cpu with the native path off) they take their tfjs composite path.
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

/** Whether `kernelName` is registered for the active backend. */
export function hasKernel(kernelName: string): boolean {
  return tf.getKernel(kernelName, tf.getBackend()) !== undefined;
}
