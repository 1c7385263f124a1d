/**
 * Fast paths of the cpu backend's data-movement and element-wise kernels, in plain TypeScript:
 * `Add`, `Sub`, `Multiply`, `RealDiv` where each operand is the output's shape, a scalar or a
 * trailing block of it (a bias, a per-channel weight); `Sum` over one contiguous run of axes;
 * `Transpose`; `Concat`.
 *
 * Why: once the native convolutions, GroupNorm and matrix products took the heavy layers, these
 * were half of a training step's profile (reference network, 32³). tfjs's cpu kernels call the
 * operation through a closure per element and find each broadcast operand's element with
 * `indexToLoc`, reduce over leading axes by transposing them to the end first, and transpose and
 * concatenate element by element; a typed-array loop does the same work 10 to 40 times faster.
 * Everything else (other dtypes, other broadcasts) goes to tfjs's own kernel unchanged.
 *
 * Results are those of tfjs's kernels, except `Sum`, which adds in float64 (tfjs adds in float32
 * in a different order): equal to float32 rounding, and closer to the exact sum.
 * @module
 */
import * as tf from "../tf.ts";

/** The cpu backend's parts used here (MathBackendCPU is not exported by the umbrella package). */
export interface CpuStore {
  data: { get(dataId: unknown): { values?: unknown } };
  makeTensorInfo(shape: number[], dtype: tf.DataType, values: Float32Array): tf.TensorInfo;
}

/** A kernel's arguments as the cpu backend passes them. */
export interface ElementwiseArgs {
  inputs: Record<string, tf.TensorInfo> | tf.TensorInfo[];
  backend: CpuStore;
  attrs?: Record<string, unknown>;
}

/** The four binary operations with a fast path. */
export const BINARY_KERNELS = ["Add", "Sub", "Multiply", "RealDiv"] as const;
type BinaryKernel = (typeof BINARY_KERNELS)[number];

/** The dense float32 values of `t`, or undefined when it is not dense float32. */
function values(backend: CpuStore, t: tf.TensorInfo): Float32Array | undefined {
  if (t.dtype !== "float32") return undefined;
  const v = backend.data.get(t.dataId).values;
  return v instanceof Float32Array && v.length === tf.util.sizeFromShape(t.shape) ? v : undefined;
}

/**
 * Whether `shape` broadcasts onto `out` as a trailing block: left-padded with ones, it is 1 on a
 * leading run of axes and equal to `out` on the rest. Element i of the output then reads element
 * `i mod size(shape)` of the operand.
 */
function isTrailingBlock(shape: number[], out: number[]): boolean {
  const pad = out.length - shape.length;
  let j = 0;
  while (j < out.length && (j < pad || shape[j - pad] === 1)) j++;
  for (; j < out.length; j++) {
    if ((j < pad ? 1 : shape[j - pad]) !== out[j]) return false;
  }
  return true;
}

/**
 * `a op b` for float32 operands that are each the output's shape, a scalar or a trailing block of
 * it; undefined otherwise (the caller hands the call to tfjs).
 */
export function binaryFast(
  op: BinaryKernel,
  args: ElementwiseArgs,
): tf.TensorInfo | undefined {
  const { a, b } = args.inputs as Record<string, tf.TensorInfo>;
  const av = values(args.backend, a);
  const bv = values(args.backend, b);
  if (!av || !bv) return undefined;
  const shape = tf.broadcast_util.assertAndGetBroadcastShape(a.shape, b.shape);
  if (!isTrailingBlock(a.shape, shape) || !isTrailingBlock(b.shape, shape)) return undefined;
  const out = new Float32Array(tf.util.sizeFromShape(shape));
  if (out.length > 0) binaryLoop(op, av, bv, out);
  return args.backend.makeTensorInfo(shape, "float32", out);
}

/**
 * out[i] = a[i mod |a|] op b[i mod |b|], where each of |a| and |b| is |out|, 1, or a divisor of
 * |out| (a trailing block; then the other one is |out|, since the output is their broadcast).
 */
function binaryLoop(op: BinaryKernel, a: Float32Array, b: Float32Array, out: Float32Array): void {
  const n = out.length;
  if (a.length === n && b.length === n) {
    switch (op) {
      case "Add":
        for (let i = 0; i < n; i++) out[i] = a[i] + b[i];
        return;
      case "Sub":
        for (let i = 0; i < n; i++) out[i] = a[i] - b[i];
        return;
      case "Multiply":
        for (let i = 0; i < n; i++) out[i] = a[i] * b[i];
        return;
      case "RealDiv":
        for (let i = 0; i < n; i++) out[i] = a[i] / b[i];
        return;
    }
  }
  const left = a.length === n; // the full operand is a: out = full op block, else block op full
  const full = left ? a : b;
  const block = left ? b : a;
  const m = block.length;
  if (m === 1) {
    const s = block[0];
    switch (op) {
      case "Add":
        for (let i = 0; i < n; i++) out[i] = full[i] + s;
        return;
      case "Sub":
        if (left) { for (let i = 0; i < n; i++) out[i] = full[i] - s; }
        else for (let i = 0; i < n; i++) out[i] = s - full[i];
        return;
      case "Multiply":
        for (let i = 0; i < n; i++) out[i] = full[i] * s;
        return;
      case "RealDiv":
        if (left) { for (let i = 0; i < n; i++) out[i] = full[i] / s; }
        else for (let i = 0; i < n; i++) out[i] = s / full[i];
        return;
    }
  }
  for (let o = 0; o < n; o += m) {
    switch (op) {
      case "Add":
        for (let j = 0; j < m; j++) out[o + j] = full[o + j] + block[j];
        break;
      case "Sub":
        if (left) { for (let j = 0; j < m; j++) out[o + j] = full[o + j] - block[j]; }
        else for (let j = 0; j < m; j++) out[o + j] = block[j] - full[o + j];
        break;
      case "Multiply":
        for (let j = 0; j < m; j++) out[o + j] = full[o + j] * block[j];
        break;
      case "RealDiv":
        if (left) { for (let j = 0; j < m; j++) out[o + j] = full[o + j] / block[j]; }
        else for (let j = 0; j < m; j++) out[o + j] = block[j] / full[o + j];
        break;
    }
  }
}

/**
 * `Sum` over axes that form one contiguous run (after removing negative indices), with float64
 * accumulators; undefined for anything else.
 */
export function sumFast(args: ElementwiseArgs): tf.TensorInfo | undefined {
  const { x } = args.inputs as Record<string, tf.TensorInfo>;
  const xv = values(args.backend, x);
  if (!xv) return undefined;
  let axes: number[];
  try {
    axes = tf.util.parseAxisParam(args.attrs?.axis as number | number[], x.shape);
  } catch {
    return undefined; // tfjs's kernel reports the bad axis
  }
  axes = [...new Set(axes)].sort((p, q) => p - q);
  if (axes.length === 0) return undefined;
  const p = axes[0];
  const q = axes[axes.length - 1] + 1;
  if (q - p !== axes.length) return undefined; // not one run
  const outer = tf.util.sizeFromShape(x.shape.slice(0, p));
  const mid = tf.util.sizeFromShape(x.shape.slice(p, q));
  const inner = tf.util.sizeFromShape(x.shape.slice(q));
  const shape = args.attrs?.keepDims
    ? x.shape.map((d, j) => (j >= p && j < q ? 1 : d))
    : [...x.shape.slice(0, p), ...x.shape.slice(q)];
  const out = new Float32Array(outer * inner);
  const acc = new Float64Array(inner);
  for (let o = 0; o < outer; o++) {
    acc.fill(0);
    const base = o * mid * inner;
    if (inner === 1) {
      let s = 0;
      for (let m = 0; m < mid; m++) s += xv[base + m];
      acc[0] = s;
    } else {
      for (let m = 0; m < mid; m++) {
        const row = base + m * inner;
        for (let j = 0; j < inner; j++) acc[j] += xv[row + j];
      }
    }
    for (let j = 0; j < inner; j++) out[o * inner + j] = acc[j];
  }
  return args.backend.makeTensorInfo(shape, "float32", out);
}

/** `Transpose` of a float32 tensor: runs of the trailing axes it leaves in place are copied whole. */
export function transposeFast(args: ElementwiseArgs): tf.TensorInfo | undefined {
  const { x } = args.inputs as Record<string, tf.TensorInfo>;
  const xv = values(args.backend, x);
  const perm = (args.attrs?.perm as number[] | undefined)?.map(Number);
  const rank = x.shape.length;
  if (!xv || !perm || perm.length !== rank) return undefined;
  const shape = perm.map((p) => x.shape[p]);
  const out = new Float32Array(xv.length);
  if (out.length > 0) {
    // Trailing axes with perm[j] = j, taken whole, form one contiguous run in both layouts.
    let t = rank;
    while (t > 0 && perm[t - 1] === t - 1) t--;
    const run = tf.util.sizeFromShape(x.shape.slice(t));
    const inStrides = [...tf.util.computeStrides(x.shape), 1];
    const stride = perm.slice(0, t).map((p) => inStrides[p]); // source step per output axis
    const index = new Array(t).fill(0);
    let src = 0;
    for (let dst = 0; dst < out.length; dst += run) {
      if (run === 1) out[dst] = xv[src];
      else for (let k = 0; k < run; k++) out[dst + k] = xv[src + k];
      for (let axis = t - 1; axis >= 0; axis--) {
        src += stride[axis];
        if (++index[axis] < shape[axis]) break;
        src -= shape[axis] * stride[axis];
        index[axis] = 0;
      }
    }
  }
  return args.backend.makeTensorInfo(shape, "float32", out);
}

/** `Concat` of float32 tensors along one axis: each output row is the inputs' rows in turn. */
export function concatFast(args: ElementwiseArgs): tf.TensorInfo | undefined {
  const inputs = Array.isArray(args.inputs) ? args.inputs : Object.values(args.inputs);
  if (inputs.length === 0) return undefined;
  const rank = inputs[0].shape.length;
  const raw = Number(Array.isArray(args.attrs?.axis) ? args.attrs.axis[0] : args.attrs?.axis);
  if (!Number.isInteger(raw) || raw < -rank || raw >= rank) return undefined;
  const axis = raw < 0 ? raw + rank : raw;
  const vs: Float32Array[] = [];
  for (const t of inputs) {
    const v = values(args.backend, t);
    const sameOuter = t.shape.length === rank &&
      t.shape.every((d, j) => j === axis || d === inputs[0].shape[j]);
    if (!v || !sameOuter) return undefined;
    vs.push(v);
  }
  const shape = [...inputs[0].shape];
  shape[axis] = inputs.reduce((s, t) => s + t.shape[axis], 0);
  const outer = tf.util.sizeFromShape(shape.slice(0, axis));
  const rows = inputs.map((t) => tf.util.sizeFromShape(t.shape.slice(axis)));
  const width = rows.reduce((s, r) => s + r, 0);
  const out = new Float32Array(outer * width);
  let col = 0;
  for (let k = 0; k < vs.length; k++) {
    const v = vs[k];
    const r = rows[k];
    if (r >= 256) {
      for (let o = 0; o < outer; o++) out.set(v.subarray(o * r, (o + 1) * r), o * width + col);
    } else {
      for (let o = 0; o < outer; o++) {
        const d = o * width + col;
        const s = o * r;
        for (let j = 0; j < r; j++) out[d + j] = v[s + j];
      }
    }
    col += r;
  }
  return args.backend.makeTensorInfo(shape, "float32", out);
}
