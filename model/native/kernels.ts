/**
 * The native kernels as tfjs kernels of the `cpu` backend: `BatchMatMul` replaced by OpenBLAS's
 * sgemm, `Conv3D` and its gradients by C loops, `Slice` and `SplitV` by run copies (slice.ts),
 * and the project's own depthwise conv3d and
 * GroupNorm kernels (names in names.ts) added. Each override hands what it does not handle (other
 * dtypes, contiguous slices, which tfjs makes as views) to tfjs's own kernel.
 *
 * A kernel reads its inputs' values straight from the cpu backend's storage and returns a new
 * Float32Array the native code filled, so nothing is copied on the way in or out. The layers
 * reach the project's kernels with `tf.engine().runKernel` inside their own `tf.customGrad`, so
 * none of these kernels needs a registered gradient. Registered for "cpu" only: the webgpu and
 * other backends keep their own kernels and the layers' composite path.
 * @module
 */
import * as tf from "../tf.ts";
import { type BlasSymbols, type KernelSymbols, loadBlas, loadKernels } from "./library.ts";
import { stridedSlice } from "./slice.ts";
import {
  BINARY_KERNELS,
  binaryFast,
  concatFast,
  type CpuStore,
  type ElementwiseArgs,
  sumFast,
  transposeFast,
} from "./elementwise.ts";
import {
  depthwiseKernelSize,
  groupNormCall,
  REV_DEPTHWISE_CONV3D,
  REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
  REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
  REV_GROUP_NORM_ACT,
  REV_GROUP_NORM_ACT_GRAD,
} from "./names.ts";

const BACKEND = "cpu";
const BATCH_MAT_MUL = "BatchMatMul";
const SLICE = "Slice";
const SPLIT_V = "SplitV";

/** What {@linkcode enableNativeKernels} turned on, and why anything stayed off. */
export interface NativeStatus {
  /** `BatchMatMul` (tf.matMul, the pointwise convolutions) runs on OpenBLAS sgemm. */
  matMul: boolean;
  /**
   * Depthwise conv3d, GroupNorm(+activation) and the dense `Conv3D` with its two gradients (the
   * stem and the downsampling convolutions) run on the compiled kernels.
   */
  layers: boolean;
  /** Strided `Slice` and `SplitV` (the blocks' channel splits) copy whole runs (slice.ts). */
  slices: boolean;
  /**
   * `Add`, `Sub`, `Multiply`, `RealDiv` (same shapes, scalars, biases), `Sum` over contiguous
   * axes, `Transpose` and `Concat` run on typed-array loops (elementwise.ts).
   */
  elementwise: boolean;
  /** Threads the native code uses. */
  threads: number;
  /** One line for each part that is off, saying why. */
  notes: string[];
}

/** Options of {@linkcode enableNativeKernels}. */
export interface EnableOptions {
  /**
   * Threads for OpenMP and OpenBLAS.
   * @default {navigator.hardwareConcurrency}
   */
  threads?: number;
  /** Receives one line for each part that cannot be turned on. */
  log?: (msg: string) => void;
}

interface KernelArgs {
  inputs: Record<string, tf.TensorInfo>;
  backend: CpuStore;
  attrs?: Record<string, unknown>;
}

/** tfjs's own kernels that an override replaced, to put back on disable. */
const originals = new Map<string, tf.KernelConfig>();
/** Everything off: before the first enable and after a disable. */
const OFF: Readonly<NativeStatus> = Object.freeze({
  matMul: false,
  layers: false,
  slices: false,
  elementwise: false,
  threads: 0,
  notes: [],
});
let state: NativeStatus = { ...OFF, notes: [] };

/** tfjs cpu kernels with a typed-array fast path (elementwise.ts), each falling back to tfjs. */
const ELEMENTWISE_OVERRIDES: [string, (args: ElementwiseArgs) => tf.TensorInfo | undefined][] = [
  ...BINARY_KERNELS.map((op) =>
    [op, (args: ElementwiseArgs) => binaryFast(op, args)] as [
      string,
      (args: ElementwiseArgs) => tf.TensorInfo | undefined,
    ]
  ),
  ["Sum", sumFast],
  ["Transpose", transposeFast],
  ["Concat", concatFast],
];

/**
 * Registers the native kernels for the cpu backend, building the kernel library with gcc on first
 * use. Idempotent and cheap after the first call. Never throws: a part whose library is missing
 * (no gcc, no OpenBLAS, no FFI permission, a failed build) stays on tfjs's JavaScript kernels,
 * and one line says which and why.
 *
 * @param options Threads and the log.
 * @returns What is on now.
 */
export function enableNativeKernels(options: EnableOptions = {}): NativeStatus {
  const threads = options.threads ?? (globalThis.navigator?.hardwareConcurrency || 1);
  const notes: string[] = [];
  const blas = loadBlas(threads);
  const matMul = blas.ok &&
    override(BATCH_MAT_MUL, (original) => sgemmKernel(blas.symbols, original));
  if (!blas.ok) {
    notes.push(`native: OpenBLAS unavailable (${blas.why}); matrix products stay on tfjs`);
  }
  const lib = loadKernels(threads);
  if (lib.ok) {
    registerLayers(lib.symbols);
    for (const [name, make] of CONV3D_OVERRIDES) {
      override(name, (original) => make(lib.symbols, original));
    }
  } else {
    notes.push(
      `native: kernel library unavailable (${lib.why}); depthwise conv3d and GroupNorm stay on tfjs`,
    );
  }
  const slices = override(SLICE, sliceKernel) && override(SPLIT_V, splitKernel);
  let elementwise = true;
  for (const [name, fast] of ELEMENTWISE_OVERRIDES) {
    elementwise = override(name, (original) => (args) =>
      fast(args as unknown as ElementwiseArgs) ?? original(args)) && elementwise;
  }
  for (const note of notes) options.log?.(note);
  state = { matMul, layers: lib.ok, slices, elementwise, threads, notes };
  return nativeKernelStatus();
}

/** Unregisters the native kernels and puts tfjs's own kernels back. Idempotent. */
export function disableNativeKernels(): void {
  for (const name of LAYER_KERNELS) {
    if (tf.getKernel(name, BACKEND)) tf.unregisterKernel(name, BACKEND);
  }
  for (const [name, config] of originals) {
    tf.unregisterKernel(name, BACKEND);
    tf.registerKernel(config);
  }
  originals.clear();
  state = { ...OFF, notes: [] };
}

/** What is on now (a copy). */
export function nativeKernelStatus(): NativeStatus {
  return { ...state, notes: [...state.notes] };
}

/**
 * Replaces tfjs's cpu kernel `name` by `make(original)`, which may hand what it does not handle to
 * the original. Returns whether the override is in place.
 */
function override(name: string, make: (original: KernelFn) => KernelFn): boolean {
  if (originals.has(name)) return true;
  const original = tf.getKernel(name, BACKEND);
  if (!original) return false; // not a kernel of this tfjs version: nothing to speed up
  originals.set(name, original);
  tf.unregisterKernel(name, BACKEND);
  tf.registerKernel({
    kernelName: name,
    backendName: BACKEND,
    kernelFunc: make(original.kernelFunc as unknown as KernelFn) as unknown as tf.KernelFunc,
  });
  return true;
}

type KernelFn = (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[];

// ---- BatchMatMul on OpenBLAS --------------------------------------------------------------------

const CBLAS_ROW_MAJOR = 101;
const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;

function sgemmKernel(blas: BlasSymbols, original: KernelFn): KernelFn {
  return (args) => sgemmMatMul(args, blas) ?? original(args);
}

/**
 * tfjs's BatchMatMul semantics (transposes of the last two axes; batch `i` of the output uses
 * batch `i mod batchA` of `a` and `i mod batchB` of `b`) with one sgemm per batch, or a single
 * one when `b` has one batch and `a` is not transposed (the pointwise convolutions). Returns
 * undefined for what it does not handle (other dtypes, rank < 2), which the caller sends to
 * tfjs's kernel.
 */
function sgemmMatMul(args: KernelArgs, blas: BlasSymbols): tf.TensorInfo | undefined {
  const { a, b } = args.inputs;
  const transposeA = Boolean(args.attrs?.transposeA);
  const transposeB = Boolean(args.attrs?.transposeB);
  if (a.dtype !== "float32" || b.dtype !== "float32" || a.shape.length < 2 || b.shape.length < 2) {
    return undefined;
  }
  const av = args.backend.data.get(a.dataId).values;
  const bv = args.backend.data.get(b.dataId).values;
  if (!(av instanceof Float32Array) || !(bv instanceof Float32Array)) return undefined;
  const ra = a.shape.length;
  const rb = b.shape.length;
  const m = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
  const k = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
  const kb = transposeB ? b.shape[rb - 1] : b.shape[rb - 2];
  const n = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
  if (k !== kb) {
    throw new Error(
      `Error in matMul: inner shapes (${k}) and (${kb}) of Tensors with shapes ${a.shape} and ` +
        `${b.shape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
    );
  }
  const outer = tf.broadcast_util.assertAndGetBroadcastShape(
    a.shape.slice(0, -2),
    b.shape.slice(0, -2),
  );
  const batchA = tf.util.sizeFromShape(a.shape.slice(0, -2));
  const batchB = tf.util.sizeFromShape(b.shape.slice(0, -2));
  const batch = Math.max(batchA, batchB);
  const out = new Float32Array(batch * m * n);
  const shape = [...outer, m, n];
  if (out.length === 0 || k === 0) return args.backend.makeTensorInfo(shape, "float32", out);
  const tA = transposeA ? CBLAS_TRANS : CBLAS_NO_TRANS;
  const tB = transposeB ? CBLAS_TRANS : CBLAS_NO_TRANS;
  const lda = transposeA ? m : k;
  const ldb = transposeB ? k : n;
  if (batchB === 1 && !transposeA) {
    // [batchA·m, k]·[k, n] in one call: the batches of a are consecutive rows.
    const rows = batchA * m;
    blas.cblas_sgemm(CBLAS_ROW_MAJOR, tA, tB, rows, n, k, 1, av, lda, bv, ldb, 0, out, n);
  } else {
    for (let i = 0; i < batch; i++) {
      const ai = av.subarray((i % batchA) * m * k, ((i % batchA) + 1) * m * k);
      const bi = bv.subarray((i % batchB) * k * n, ((i % batchB) + 1) * k * n);
      const ci = out.subarray(i * m * n, (i + 1) * m * n);
      blas.cblas_sgemm(CBLAS_ROW_MAJOR, tA, tB, m, n, k, 1, ai, lda, bi, ldb, 0, ci, n);
    }
  }
  return args.backend.makeTensorInfo(shape, "float32", out);
}

// ---- depthwise conv3d and GroupNorm -------------------------------------------------------------

const LAYER_KERNELS = [
  REV_DEPTHWISE_CONV3D,
  REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
  REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
  REV_GROUP_NORM_ACT,
  REV_GROUP_NORM_ACT_GRAD,
] as const;

function registerLayers(lib: KernelSymbols): void {
  const funcs: Record<(typeof LAYER_KERNELS)[number], (args: KernelArgs) => unknown> = {
    [REV_DEPTHWISE_CONV3D]: (args) =>
      depthwise(args, lib, args.inputs.x, args.inputs.filter, false, REV_DEPTHWISE_CONV3D),
    [REV_DEPTHWISE_CONV3D_BACKPROP_INPUT]: (args) =>
      depthwise(
        args,
        lib,
        args.inputs.dy,
        args.inputs.filter,
        true,
        REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
      ),
    [REV_DEPTHWISE_CONV3D_BACKPROP_FILTER]: (args) => depthwiseFilterGrad(args, lib),
    [REV_GROUP_NORM_ACT]: (args) => groupNormAct(args, lib),
    [REV_GROUP_NORM_ACT_GRAD]: (args) => groupNormActGrad(args, lib),
  };
  for (const name of LAYER_KERNELS) {
    if (tf.getKernel(name, BACKEND)) continue;
    tf.registerKernel({
      kernelName: name,
      backendName: BACKEND,
      kernelFunc: funcs[name] as unknown as tf.KernelFunc,
    });
  }
}

/** The dense float32 values of a kernel input, checked against its shape. */
function floats(backend: CpuStore, t: tf.TensorInfo, kernel: string, name: string): Float32Array {
  const values = backend.data.get(t.dataId).values;
  const size = tf.util.sizeFromShape(t.shape);
  if (t.dtype !== "float32" || !(values instanceof Float32Array) || values.length !== size) {
    throw new TypeError(
      `${kernel}: ${name} must be dense float32 of shape [${t.shape}], found ${t.dtype}` +
        (values instanceof Float32Array ? ` with ${values.length} values` : ""),
    );
  }
  return values;
}

/** The shapes a GroupNorm call is checked on. */
const shapesOf = (args: KernelArgs) => ({
  x: args.inputs.x.shape,
  gamma: args.inputs.gamma.shape,
  beta: args.inputs.beta.shape,
});

/** Throws naming the kernel when the native code reports a failure (out of memory). */
function check(rc: number, kernel: string): void {
  if (rc !== 0) {
    throw new Error(`${kernel}: the native kernel failed (status ${rc}, out of memory)`);
  }
}

function depthwise(
  args: KernelArgs,
  lib: KernelSymbols,
  x: tf.TensorInfo,
  filter: tf.TensorInfo,
  flip: boolean,
  kernel: string,
): tf.TensorInfo {
  const [kd, kh, kw] = depthwiseKernelSize(x.shape, filter.shape, kernel);
  const [n, d, h, w, c] = x.shape;
  const xv = floats(args.backend, x, kernel, flip ? "dy" : "x");
  const fv = floats(args.backend, filter, kernel, "filter");
  const y = new Float32Array(xv.length);
  if (y.length > 0) {
    check(lib.rev_dwconv3d(xv, fv, y, n, d, h, w, c, kd, kh, kw, flip ? 1 : 0), kernel);
  }
  return args.backend.makeTensorInfo(x.shape, "float32", y);
}

function depthwiseFilterGrad(args: KernelArgs, lib: KernelSymbols): tf.TensorInfo {
  const kernel = REV_DEPTHWISE_CONV3D_BACKPROP_FILTER;
  const { x, dy } = args.inputs;
  const filterShape = args.attrs?.filterShape as number[] | undefined;
  if (!filterShape) throw new TypeError(`${kernel}: the filterShape attribute is missing`);
  const [kd, kh, kw] = depthwiseKernelSize(x.shape, filterShape, kernel);
  if (dy.shape.join() !== x.shape.join()) {
    throw new TypeError(`${kernel}: dy [${dy.shape}] must have the shape of x [${x.shape}]`);
  }
  const [n, d, h, w, c] = x.shape;
  const xv = floats(args.backend, x, kernel, "x");
  const gv = floats(args.backend, dy, kernel, "dy");
  const df = new Float32Array(tf.util.sizeFromShape(filterShape));
  if (xv.length > 0) {
    check(lib.rev_dwconv3d_filter_grad(xv, gv, df, n, d, h, w, c, kd, kh, kw), kernel);
  }
  return args.backend.makeTensorInfo(filterShape, "float32", df);
}

function groupNormAct(args: KernelArgs, lib: KernelSymbols): tf.TensorInfo[] {
  const kernel = REV_GROUP_NORM_ACT;
  const { n, voxels, c, groups, act } = groupNormCall(shapesOf(args), args.attrs, kernel);
  const epsilon = Number(args.attrs?.epsilon);
  if (!(epsilon > 0)) throw new RangeError(`${kernel}: epsilon must be positive, found ${epsilon}`);
  const { x, gamma, beta } = args.inputs;
  const xv = floats(args.backend, x, kernel, "x");
  const gv = floats(args.backend, gamma, kernel, "gamma");
  const bv = floats(args.backend, beta, kernel, "beta");
  const y = new Float32Array(xv.length);
  const mean = new Float32Array(n * groups);
  const rstd = new Float32Array(n * groups);
  if (y.length > 0) {
    check(
      lib.rev_group_norm(xv, gv, bv, y, mean, rstd, n, BigInt(voxels), c, groups, epsilon, act),
      kernel,
    );
  }
  return [
    args.backend.makeTensorInfo(x.shape, "float32", y),
    args.backend.makeTensorInfo([n, groups], "float32", mean),
    args.backend.makeTensorInfo([n, groups], "float32", rstd),
  ];
}

function groupNormActGrad(args: KernelArgs, lib: KernelSymbols): tf.TensorInfo[] {
  const kernel = REV_GROUP_NORM_ACT_GRAD;
  const { n, voxels, c, groups, act } = groupNormCall(shapesOf(args), args.attrs, kernel);
  const { dy, x, gamma, beta, mean, rstd } = args.inputs;
  if (dy.shape.join() !== x.shape.join()) {
    throw new TypeError(`${kernel}: dy [${dy.shape}] must have the shape of x [${x.shape}]`);
  }
  for (const [name, t] of [["mean", mean], ["rstd", rstd]] as const) {
    if (t.shape.join() !== `${n},${groups}`) {
      throw new TypeError(`${kernel}: ${name} must be [${n},${groups}], found [${t.shape}]`);
    }
  }
  const dx = new Float32Array(tf.util.sizeFromShape(x.shape));
  const dGamma = new Float32Array(c);
  const dBeta = new Float32Array(c);
  if (dx.length > 0) {
    check(
      lib.rev_group_norm_grad(
        floats(args.backend, dy, kernel, "dy"),
        floats(args.backend, x, kernel, "x"),
        floats(args.backend, gamma, kernel, "gamma"),
        floats(args.backend, beta, kernel, "beta"),
        floats(args.backend, mean, kernel, "mean"),
        floats(args.backend, rstd, kernel, "rstd"),
        dx,
        dGamma,
        dBeta,
        n,
        BigInt(voxels),
        c,
        groups,
        act,
      ),
      kernel,
    );
  }
  return [
    args.backend.makeTensorInfo(x.shape, "float32", dx),
    args.backend.makeTensorInfo([c], "float32", dGamma),
    args.backend.makeTensorInfo([c], "float32", dBeta),
  ];
}

// ---- Slice and SplitV ---------------------------------------------------------------------------

/** The dense float32 values of `x`, or undefined when tfjs's own kernel should handle it. */
function floatValues(args: KernelArgs, x: tf.TensorInfo): Float32Array | undefined {
  if (x.dtype !== "float32") return undefined;
  const values = args.backend.data.get(x.dataId).values;
  return values instanceof Float32Array && values.length === tf.util.sizeFromShape(x.shape)
    ? values
    : undefined;
}

function sliceKernel(original: KernelFn): KernelFn {
  return (args) => {
    const { x } = args.inputs;
    const values = floatValues(args, x);
    if (!values) return original(args);
    const [begin, size] = tf.slice_util.parseSliceParams(
      x,
      args.attrs?.begin as number | number[],
      args.attrs?.size as number | number[] | undefined,
    );
    tf.slice_util.assertParamsValid(x, begin, size);
    if (tf.slice_util.isSliceContinous(x.shape, begin, size)) return original(args); // a view
    return args.backend.makeTensorInfo(size, "float32", stridedSlice(values, x.shape, begin, size));
  };
}

function splitKernel(original: KernelFn): KernelFn {
  return (args) => {
    const { x } = args.inputs;
    const values = floatValues(args, x);
    if (!values) return original(args);
    const axis = tf.util.parseAxisParam(args.attrs?.axis as number, x.shape)[0];
    const sizes = tf.backend_util.prepareSplitSize(
      x,
      args.attrs?.numOrSizeSplits as number | number[],
      axis,
    );
    const begin: number[] = new Array(x.shape.length).fill(0);
    return sizes.map((s) => {
      const size = [...x.shape];
      size[axis] = s;
      // A contiguous piece is a view of x, as tfjs makes it.
      const piece = tf.slice_util.isSliceContinous(x.shape, begin, size)
        ? values.subarray(
          tf.slice_util.computeFlatOffset(begin, tf.util.computeStrides(x.shape)),
        ).subarray(0, tf.util.sizeFromShape(size))
        : stridedSlice(values, x.shape, begin, size);
      begin[axis] += s;
      return args.backend.makeTensorInfo(size, "float32", piece);
    });
  };
}

// ---- dense Conv3D and its gradients -------------------------------------------------------------

type Conv3DMaker = (lib: KernelSymbols, original: KernelFn) => KernelFn;

/**
 * The geometry `kernels.c` takes (`conv_geom`), or undefined for what it does not handle
 * (dilations other than 1, dtypes other than float32), which goes to tfjs's kernel.
 */
function convGeometry(
  xShape: number[],
  filterShape: number[],
  attrs: Record<string, unknown> | undefined,
): Int32Array | undefined {
  const dilations = attrs?.dilations ?? 1;
  if ([dilations].flat().some((v) => v !== 1)) return undefined;
  const info = tf.backend_util.computeConv3DInfo(
    xShape as [number, number, number, number, number],
    filterShape as [number, number, number, number, number],
    attrs?.strides as number | [number, number, number],
    1,
    attrs?.pad as "valid" | "same",
  );
  const [n, d, h, w, ci] = xShape;
  return Int32Array.from([
    n,
    d,
    h,
    w,
    ci,
    info.outDepth,
    info.outHeight,
    info.outWidth,
    info.outChannels,
    info.filterDepth,
    info.filterHeight,
    info.filterWidth,
    info.strideDepth,
    info.strideHeight,
    info.strideWidth,
    info.padInfo.front,
    info.padInfo.top,
    info.padInfo.left,
  ]);
}

const CONV3D_OVERRIDES: [string, Conv3DMaker][] = [
  ["Conv3D", (lib, original) => (args) => {
    const { x, filter } = args.inputs;
    const xv = floatValues(args, x);
    const fv = floatValues(args, filter);
    const geom = xv && fv && convGeometry(x.shape, filter.shape, args.attrs);
    if (!xv || !fv || !geom) return original(args);
    const shape = [geom[0], geom[5], geom[6], geom[7], geom[8]];
    const y = new Float32Array(tf.util.sizeFromShape(shape));
    if (y.length > 0) check(lib.rev_conv3d(xv, fv, y, geom), "Conv3D");
    return args.backend.makeTensorInfo(shape, "float32", y);
  }],
  ["Conv3DBackpropFilterV2", (lib, original) => (args) => {
    const { x, dy } = args.inputs;
    const filterShape = args.attrs?.filterShape as number[];
    const xv = floatValues(args, x);
    const gv = floatValues(args, dy);
    const geom = xv && gv && convGeometry(x.shape, filterShape, args.attrs);
    if (!xv || !gv || !geom) return original(args);
    const df = new Float32Array(tf.util.sizeFromShape(filterShape));
    if (df.length > 0 && gv.length > 0) {
      check(lib.rev_conv3d_filter_grad(xv, gv, df, geom), "Conv3DBackpropFilterV2");
    }
    return args.backend.makeTensorInfo(filterShape, "float32", df);
  }],
  ["Conv3DBackpropInputV2", (lib, original) => (args) => {
    const { dy, filter } = args.inputs;
    const inputShape = args.attrs?.inputShape as number[];
    const gv = floatValues(args, dy);
    const fv = floatValues(args, filter);
    const geom = gv && fv && convGeometry(inputShape, filter.shape, args.attrs);
    if (!gv || !fv || !geom) return original(args);
    const dx = new Float32Array(tf.util.sizeFromShape(inputShape));
    if (dx.length > 0) check(lib.rev_conv3d_input_grad(gv, fv, dx, geom), "Conv3DBackpropInputV2");
    return args.backend.makeTensorInfo(inputShape, "float32", dx);
  }],
];
