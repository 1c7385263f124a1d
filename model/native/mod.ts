/**
 * A fast native path for tfjs's `cpu` backend: the pointwise convolutions' matrix products on
 * OpenBLAS sgemm; the depthwise 3D convolution, GroupNorm(+activation) and the dense conv3d (stem,
 * downsampling), forward and backward, on C kernels compiled with gcc on first use and run with
 * OpenMP on every core; and the blocks' strided channel splits as run copies in TypeScript.
 *
 * `selectBackend("cpu")` (and `"auto"` when it lands on cpu) turns it on unless the environment
 * variable `REVUNET_NATIVE` is `0`; tests and benchmarks switch it with
 * {@linkcode enableNativeKernels} and {@linkcode disableNativeKernels}. Without gcc or OpenBLAS,
 * or without FFI permission (`--allow-ffi`, plus `--allow-run` for gcc and read/write for the
 * `.cache/` directory), the missing part stays on tfjs and one line says why.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import * as tf from "../tf.ts";
 * import { disableNativeKernels, enableNativeKernels } from "./mod.ts";
 *
 * await tf.setBackend("cpu");
 * const why: string[] = []; // what stays on tfjs, and why
 * const status = enableNativeKernels({ log: (m) => why.push(m) });
 * assert(status.threads >= 1 && (status.matMul || why.length > 0));
 * disableNativeKernels();
 * ```
 * @module
 */
export {
  disableNativeKernels,
  enableNativeKernels,
  type EnableOptions,
  nativeKernelStatus,
  type NativeStatus,
} from "./kernels.ts";
export {
  hasKernel,
  REV_DEPTHWISE_CONV3D,
  REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
  REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
  REV_GROUP_NORM_ACT,
  REV_GROUP_NORM_ACT_GRAD,
} from "./names.ts";
export { NATIVE_CFLAGS } from "./build.ts";
import { envVar } from "../env.ts";

/**
 * Whether the environment asks for the native path: true unless `REVUNET_NATIVE` is `0`, `false`
 * or `off` (or env access is not allowed, in which case the default, on, holds).
 */
export function nativeRequested(): boolean {
  return !/^(0|false|off|no)$/i.test((envVar("REVUNET_NATIVE") ?? "").trim());
}
