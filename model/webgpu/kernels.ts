/**
 * The project's own kernels for tfjs's `webgpu` backend, in WGSL: the depthwise 3D convolution
 * with its two gradients, and GroupNorm with a fused activation and its analytic gradient — the
 * kernels the cpu backend gets from model/native, under the same names (native/names.ts), so the
 * layers pick them the same way — and one fused Adam(W) and one SGD update per weight.
 *
 * Why: without them the webgpu backend runs the layers' composite paths — a depthwise convolution
 * as kd depthwise conv2d calls with a slice and an add each, GroupNorm as a dozen full-size
 * element-wise and reduction kernels — so a bottleneck is some 60 dispatches and as many
 * full-size intermediates. Here each layer is one to three dispatches over the data.
 *
 * Layout: channels are the fastest axis, so neighbouring threads read neighbouring addresses.
 * The depthwise kernels are tiled (a workgroup per 4×4×8-voxel tile and channel block, its input
 * halo in workgroup memory; see "depthwise conv3d, tiled" below), with one-thread-per-output
 * programs kept for `REVUNET_WGSL_TILES=0` and kernels too large to tile. Reductions over voxels
 * (the statistics and the weight gradients) run in two stages: partial sums per channel over runs
 * of voxels or tiles, enough of them to fill the GPU, then a pass over the partials — one thread
 * per output where there are many outputs (the filter gradient's taps), one workgroup per output
 * where there are few (GroupNorm's per-group sums). Sums are in f32.
 * @module
 */
import * as tf from "../tf.ts";
import { envVar } from "../env.ts";
import {
  depthwiseKernelSize,
  groupNormCall,
  REV_ADAM_UPDATE,
  REV_DEPTHWISE_CONV3D,
  REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
  REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
  REV_GROUP_NORM_ACT,
  REV_GROUP_NORM_ACT_GRAD,
  REV_SGD_UPDATE,
} from "../native/names.ts";

const BACKEND = "webgpu";
/** Threads a partial-sum stage aims for: enough to fill a large GPU, few partials per output. */
const TARGET_THREADS = 1 << 16;
const WORKGROUP: [number, number, number] = [64, 1, 1];

/** What tfjs-backend-webgpu's `WebGPUBackend` offers a kernel (its class is not needed here). */
interface WebGpuBackend {
  runWebGPUProgram(
    program: WebGpuProgram,
    inputs: tf.TensorInfo[],
    dtype: tf.DataType,
    uniforms?: Uniform[],
  ): tf.TensorInfo;
  disposeData(dataId: unknown): boolean;
}

/** The part of tfjs-backend-webgpu's `WebGPUProgram` these kernels fill in. */
interface WebGpuProgram {
  shaderKey: string;
  variableNames: string[];
  outputShape: number[];
  uniforms: string;
  workgroupSize: [number, number, number];
  size: boolean;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  getUserCode(): string;
}

interface KernelArgs {
  inputs: Record<string, tf.TensorInfo>;
  backend: WebGpuBackend;
  attrs?: Record<string, unknown>;
}

/** The shapes a GroupNorm call is checked on. */
const shapesOf = (args: KernelArgs) => ({
  x: args.inputs.x.shape,
  gamma: args.inputs.gamma.shape,
  beta: args.inputs.beta.shape,
});

/** The flat-dispatch layout tfjs-webgpu's own element-wise programs use. */
function dispatchFor(size: number, threads = WORKGROUP[0]): [number, number, number] {
  const groups = Math.ceil(size / threads);
  // WebGPU allows 65,535 workgroups per dimension: spread the rest over y (and z).
  if (groups <= 65535) return [groups, 1, 1];
  const x = Math.ceil(Math.sqrt(groups));
  if (x <= 65535) return [x, Math.ceil(groups / x), 1];
  const c = Math.ceil(Math.cbrt(groups));
  return [c, c, c];
}

/**
 * A WebGPUProgram of tfjs-backend-webgpu. By default one thread per output element runs `body`
 * inside `fn main(index)` for the indices below the output's size. With `tiles`, `workgroups`
 * groups of `threads` threads each own a tile, and `body` is the whole user code: it declares its
 * `var<workgroup>` arrays and `fn main(index : i32)` itself; `main` then runs in every thread of
 * every dispatched group (the dispatch may round the count up), so the code guards its reads and
 * writes, never its barriers.
 */
class Program implements WebGpuProgram {
  readonly workgroupSize: [number, number, number];
  readonly size = true;
  readonly dispatchLayout: { x: number[] };
  readonly dispatch: [number, number, number];
  private readonly code: string;

  constructor(
    readonly shaderKey: string,
    readonly variableNames: string[],
    readonly outputShape: number[],
    readonly uniforms: string,
    body: string,
    tiles?: { threads: number; workgroups: number },
  ) {
    const threads = tiles?.threads ?? WORKGROUP[0];
    this.workgroupSize = [threads, 1, 1];
    this.dispatchLayout = { x: outputShape.map((_, i) => i) };
    this.dispatch = dispatchFor(
      tiles ? tiles.workgroups * threads : tf.util.sizeFromShape(outputShape),
      threads,
    );
    this.code = tiles ? body : `
      fn main(index : i32) {
        if (index < uniforms.size) {
          ${body}
        }
      }`;
  }

  getUserCode(): string {
    return this.code;
  }
}

/** Uniforms, one entry per scalar: tfjs aligns a multi-value entry as a vector. */
type Uniform = { type: "int32" | "float32"; data: number[] };
const ints = (...values: number[]): Uniform[] => values.map((v) => ({ type: "int32", data: [v] }));
const floats = (...values: number[]): Uniform[] =>
  values.map((v) => ({ type: "float32", data: [v] }));

/** Partial-sum ranges over `voxels` for `outputs` sums: [parts, voxels per part]. */
function partition(voxels: number, outputs: number): [number, number] {
  const parts = Math.max(1, Math.min(voxels, Math.ceil(TARGET_THREADS / Math.max(1, outputs))));
  const per = Math.max(1, Math.ceil(voxels / parts));
  return [Math.max(1, Math.ceil(voxels / per)), per];
}

// ---- depthwise conv3d ----------------------------------------------------------------------------

const VOXEL_COORDS = `
          let c = uniforms.c;
          let ch = index % c;
          var r = index / c;
          let ox = r % uniforms.wd;
          r = r / uniforms.wd;
          let oy = r % uniforms.h;
          r = r / uniforms.h;
          let oz = r % uniforms.d;
          let n = r / uniforms.d;`;

const DEPTHWISE_UNIFORMS =
  "d : i32, h : i32, wd : i32, c : i32, kd : i32, kh : i32, kw : i32, flip : i32,";

/**
 * y = x ⋆ filter (stride 1, "same"), or with `flip` the input gradient dy ⋆ flipped filter
 * (the same correlation with the taps reversed).
 */
function depthwise(args: KernelArgs, input: "x" | "dy", kernel: string): tf.TensorInfo {
  const x = args.inputs[input];
  const filter = args.inputs.filter;
  const k = depthwiseKernelSize(x.shape, filter.shape, kernel);
  const dims = x.shape;
  const flip = input === "dy" ? 1 : 0;
  const tiling = wgslTiles && depthwiseTiling(k);
  if (tiling) return depthwiseTiled(args.backend, x, filter, k, flip, tiling);
  const program = new Program(
    "rev_dwconv3d",
    ["xs", "filt"],
    dims,
    DEPTHWISE_UNIFORMS,
    `${VOXEL_COORDS}
          let taps = uniforms.kd * uniforms.kh * uniforms.kw;
          var acc = 0.0;
          for (var a = 0; a < uniforms.kd; a++) {
            let iz = oz + a - (uniforms.kd - 1) / 2;
            if (iz < 0 || iz >= uniforms.d) { continue; }
            for (var b = 0; b < uniforms.kh; b++) {
              let iy = oy + b - (uniforms.kh - 1) / 2;
              if (iy < 0 || iy >= uniforms.h) { continue; }
              let row = ((n * uniforms.d + iz) * uniforms.h + iy) * uniforms.wd;
              for (var e = 0; e < uniforms.kw; e++) {
                let ix = ox + e - (uniforms.kw - 1) / 2;
                if (ix < 0 || ix >= uniforms.wd) { continue; }
                var t = (a * uniforms.kh + b) * uniforms.kw + e;
                if (uniforms.flip == 1) { t = taps - 1 - t; }
                acc = acc + xs[(row + ix) * c + ch] * filt[t * c + ch];
              }
            }
          }
          result[index] = acc;`,
  );
  return args.backend.runWebGPUProgram(
    program,
    [x, filter],
    "float32",
    ints(dims[1], dims[2], dims[3], dims[4], k[0], k[1], k[2], flip),
  );
}

/** dfilter[t, ch] = Σ over samples and output voxels of x[o + t − pad, ch] · dy[o, ch]. */
function depthwiseFilterGrad(args: KernelArgs): tf.TensorInfo {
  const kernel = REV_DEPTHWISE_CONV3D_BACKPROP_FILTER;
  const { x, dy } = args.inputs;
  const filterShape = args.attrs?.filterShape as number[] | undefined;
  if (!filterShape) throw new TypeError(`${kernel}: the filterShape attribute is missing`);
  const k = depthwiseKernelSize(x.shape, filterShape, kernel);
  const dims = x.shape;
  if (dy.shape.join() !== x.shape.join()) {
    throw new TypeError(`${kernel}: dy [${dy.shape}] must have the shape of x [${x.shape}]`);
  }
  const [n, d, h, w, c] = dims;
  const taps = k[0] * k[1] * k[2];
  const tiling = wgslTiles && filterGradTiling(k);
  if (tiling) {
    const [parts, partial] = filterGradTiled(args.backend, x, dy, k, tiling);
    try {
      return sumParts(args.backend, partial, parts, taps * c, filterShape);
    } finally {
      args.backend.disposeData(partial.dataId);
    }
  }
  const voxels = n * d * h * w;
  const [parts, per] = partition(voxels, taps * c);
  const partial = args.backend.runWebGPUProgram(
    new Program(
      "rev_dwconv3d_filter_partial",
      ["xs", "dys"],
      [parts, taps, c],
      `${DEPTHWISE_UNIFORMS} per : i32, voxels : i32,`,
      `
          let c = uniforms.c;
          let ch = index % c;
          let t = (index / c) % (uniforms.kd * uniforms.kh * uniforms.kw);
          let p = index / (c * uniforms.kd * uniforms.kh * uniforms.kw);
          let a = t / (uniforms.kh * uniforms.kw);
          let b = (t / uniforms.kw) % uniforms.kh;
          let e = t % uniforms.kw;
          let first = p * uniforms.per;
          let last = min(first + uniforms.per, uniforms.voxels);
          var acc = 0.0;
          for (var v = first; v < last; v++) {
            var r = v;
            let ox = r % uniforms.wd;
            r = r / uniforms.wd;
            let oy = r % uniforms.h;
            r = r / uniforms.h;
            let oz = r % uniforms.d;
            let n = r / uniforms.d;
            let iz = oz + a - (uniforms.kd - 1) / 2;
            let iy = oy + b - (uniforms.kh - 1) / 2;
            let ix = ox + e - (uniforms.kw - 1) / 2;
            if (iz >= 0 && iz < uniforms.d && iy >= 0 && iy < uniforms.h && ix >= 0 &&
                ix < uniforms.wd) {
              let src = (((n * uniforms.d + iz) * uniforms.h + iy) * uniforms.wd + ix) * c + ch;
              acc = acc + xs[src] * dys[v * c + ch];
            }
          }
          result[index] = acc;`,
    ),
    [x, dy],
    "float32",
    ints(d, h, w, c, k[0], k[1], k[2], 0, per, voxels),
  );
  try {
    return sumParts(args.backend, partial, parts, taps * c, filterShape);
  } finally {
    args.backend.disposeData(partial.dataId);
  }
}

// ---- depthwise conv3d, tiled ------------------------------------------------------------------
//
// A workgroup owns a tile of TILE[0]×TILE[1]×TILE[2] output voxels (z, y, x) and `cb` channels.
// It copies the input the tile reads (the tile plus the kernel's halo) and the filter's taps for
// its channels into workgroup memory once, coalesced (channels fastest), then each thread computes
// one x-row of the tile for one channel from there, holding the row's inputs in registers: each
// input value is read from global memory once per tile instead of once per tap and output, and
// each filter tap once per row instead of once per voxel. The filter gradient loads the same
// halo and the tile's dy; a thread owns the kw taps of one (kz, ky) for one channel and sums over
// a share of the tile's x-rows, each row's inputs and dy in registers (kw·8 products from kw+14
// reads); a workgroup walks a run of tiles, so its partial sums cover many voxels before the small
// pass over the partials.

/** Output voxels per tile, (z, y, x): a thread computes one x-row of TILE[2] voxels. */
const TILE = [4, 4, 8] as const;
const TILE_VOXELS = TILE[0] * TILE[1] * TILE[2];
/** Floats of workgroup memory a program may use: WebGPU's guaranteed minimum, 16 KiB. */
const SHARED_FLOATS = 4096;
/** Threads per workgroup WebGPU guarantees (maxComputeInvocationsPerWorkgroup). */
const MAX_THREADS = 256;
/** Workgroups the filter gradient's partial-sum stage aims for: a few per multiprocessor. */
const TARGET_GROUPS = 1024;

/** Whether the depthwise kernels use their tiled programs; `REVUNET_WGSL_TILES=0` turns them off. */
let wgslTiles = envVar("REVUNET_WGSL_TILES") !== "0";

/**
 * Chooses the tiled depthwise programs (the default) or the one-thread-per-output ones, which need
 * no workgroup memory: for a driver that mishandles it, and for `bench kernels` to compare the two.
 * Returns the previous setting.
 */
export function setWgslTiles(on: boolean): boolean {
  const was = wgslTiles;
  wgslTiles = on;
  return was;
}

interface Tiling {
  /** Channels per workgroup. */
  cb: number;
  /** The input a tile reads, (z, y, x): the tile plus the kernel's halo. */
  halo: [number, number, number];
  /** Threads per workgroup. */
  threads: number;
}

const haloOf = (k: number[]): [number, number, number] => [
  TILE[0] + k[0] - 1,
  TILE[1] + k[1] - 1,
  TILE[2] + k[2] - 1,
];
const volume = (v: readonly number[]) => v[0] * v[1] * v[2];

/** The largest channel block whose halo and taps fit workgroup memory, or null (untiled). */
export function depthwiseTiling(k: number[]): Tiling | null {
  const halo = haloOf(k);
  for (const cb of [8, 4, 2, 1]) {
    if ((volume(halo) + volume(k)) * cb <= SHARED_FLOATS) {
      return { cb, halo, threads: TILE[0] * TILE[1] * cb };
    }
  }
  return null;
}

/**
 * As {@linkcode depthwiseTiling} for the filter gradient, whose threads each own one (kz, ky) row
 * of taps for one channel and one of `rowGroups` interleaved sets of the tile's x-rows.
 */
export function filterGradTiling(k: number[]): (Tiling & { rowGroups: number }) | null {
  const halo = haloOf(k);
  const rows = TILE[0] * TILE[1];
  for (const cb of [8, 4, 2, 1]) {
    const owners = k[0] * k[1] * cb;
    if (owners <= MAX_THREADS && (volume(halo) + TILE_VOXELS) * cb <= SHARED_FLOATS) {
      const rowGroups = Math.max(1, Math.min(rows, Math.floor(MAX_THREADS / owners)));
      return { cb, halo, threads: owners * rowGroups, rowGroups };
    }
  }
  return null;
}

/** WGSL constants of a tiled program: the kernel, the tile, the halo, the channel block. */
function tileConstants(k: number[], t: Tiling): string {
  return `
      const KD = ${k[0]}; const KH = ${k[1]}; const KW = ${k[2]}; const TAPS = ${volume(k)};
      const TD = ${TILE[0]}; const TH = ${TILE[1]}; const TW = ${TILE[2]};
      const HD = ${t.halo[0]}; const HH = ${t.halo[1]}; const HW = ${t.halo[2]};
      const HALO = ${volume(t.halo)}; const CB = ${t.cb}; const THREADS = ${t.threads};`;
}

/**
 * WGSL statements: copy the input `src` of a (tz, ty, tx, n) tile's halo, channels cb·CB.. of it,
 * into \`rev_halo\` (zero outside the volume, past the channels, or when not \`live\`).
 */
const LOAD_HALO = (src: string) => `
          let z0 = tz * TD - (KD - 1) / 2;
          let y0 = ty * TH - (KH - 1) / 2;
          let x0 = tx * TW - (KW - 1) / 2;
          for (var i = lid; i < HALO * CB; i += THREADS) {
            let ch = cb * CB + i % CB;
            var v = i / CB;
            let ix = x0 + v % HW;
            v = v / HW;
            let iy = y0 + v % HH;
            let iz = z0 + v / HH;
            var value = 0.0;
            if (live && ch < uniforms.c && iz >= 0 && iz < uniforms.d && iy >= 0 && iy < uniforms.h &&
                ix >= 0 && ix < uniforms.wd) {
              value = ${src}[(((n * uniforms.d + iz) * uniforms.h + iy) * uniforms.wd + ix) * uniforms.c + ch];
            }
            rev_halo[i] = value;
          }`;

/** WGSL statements: split tile number `q` into (tz, ty, tx, n). */
const TILE_COORDS = (q: string) => `
          var q = ${q};
          let tx = q % uniforms.tx;
          q = q / uniforms.tx;
          let ty = q % uniforms.ty;
          q = q / uniforms.ty;
          let tz = q % uniforms.tz;
          let n = q / uniforms.tz;`;

const TILE_UNIFORMS = "d : i32, h : i32, wd : i32, c : i32, tz : i32, ty : i32, tx : i32,";

/** Tiles per axis of an [n, d, h, w, c] volume, and their number. */
function tilesOf(dims: number[]) {
  const tz = Math.ceil(dims[1] / TILE[0]);
  const ty = Math.ceil(dims[2] / TILE[1]);
  const tx = Math.ceil(dims[3] / TILE[2]);
  return { tz, ty, tx, count: dims[0] * tz * ty * tx };
}

/** y = x ⋆ filter (or, with `flip`, the input gradient), one workgroup per tile and channel block. */
function depthwiseTiled(
  backend: WebGpuBackend,
  x: tf.TensorInfo,
  filter: tf.TensorInfo,
  k: number[],
  flip: number,
  t: Tiling,
): tf.TensorInfo {
  const dims = x.shape;
  const tiles = tilesOf(dims);
  const blocks = Math.ceil(dims[4] / t.cb);
  const groups = tiles.count * blocks;
  const code = `${tileConstants(k, t)}
      var<workgroup> rev_halo : array<f32, ${volume(t.halo) * t.cb}>;
      var<workgroup> rev_taps : array<f32, ${volume(k) * t.cb}>;

      fn main(index : i32) {
          let lid = index % THREADS;
          let group = index / THREADS;
          let live = group < uniforms.groups;
          let cb = group % uniforms.blocks;
          ${TILE_COORDS("group / uniforms.blocks")}
          ${LOAD_HALO("xs")}
          for (var i = lid; i < TAPS * CB; i += THREADS) {
            let ch = cb * CB + i % CB;
            var tap = i / CB;
            if (uniforms.flip == 1) { tap = TAPS - 1 - tap; }
            var value = 0.0;
            if (ch < uniforms.c) { value = filt[tap * uniforms.c + ch]; }
            rev_taps[i] = value;
          }
          workgroupBarrier();

          let cl = lid % CB;
          let ry = (lid / CB) % TH;
          let rz = lid / (CB * TH);
          var acc : array<f32, ${TILE[2]}>;
          for (var a = 0; a < KD; a++) {
            for (var b = 0; b < KH; b++) {
              let base = ((rz + a) * HH + ry + b) * HW;
              var row : array<f32, ${t.halo[2]}>;
              for (var j = 0; j < HW; j++) { row[j] = rev_halo[(base + j) * CB + cl]; }
              for (var e = 0; e < KW; e++) {
                let wv = rev_taps[((a * KH + b) * KW + e) * CB + cl];
                for (var j = 0; j < TW; j++) { acc[j] = acc[j] + row[j + e] * wv; }
              }
            }
          }
          let ch = cb * CB + cl;
          let oz = tz * TD + rz;
          let oy = ty * TH + ry;
          if (live && ch < uniforms.c && oz < uniforms.d && oy < uniforms.h) {
            let at = ((n * uniforms.d + oz) * uniforms.h + oy) * uniforms.wd;
            for (var j = 0; j < TW; j++) {
              let ox = tx * TW + j;
              if (ox < uniforms.wd) { result[(at + ox) * uniforms.c + ch] = acc[j]; }
            }
          }
      }`;
  return backend.runWebGPUProgram(
    new Program(
      `rev_dwconv3d_tiled_${k.join("x")}_${t.cb}`,
      ["xs", "filt"],
      dims,
      `${TILE_UNIFORMS} blocks : i32, groups : i32, flip : i32,`,
      code,
      { threads: t.threads, workgroups: groups },
    ),
    [x, filter],
    "float32",
    ints(dims[1], dims[2], dims[3], dims[4], tiles.tz, tiles.ty, tiles.tx, blocks, groups, flip),
  );
}

/**
 * The filter gradient's first stage, tiled: [parts·rowGroups, taps, c] partial sums, each
 * workgroup summing over a run of `per` consecutive tiles for its channel block, each of its
 * threads over one set of x-rows for the kw taps of one (kz, ky). Returns [partial rows, partial].
 */
function filterGradTiled(
  backend: WebGpuBackend,
  x: tf.TensorInfo,
  dy: tf.TensorInfo,
  k: number[],
  t: Tiling & { rowGroups: number },
): [number, tf.TensorInfo] {
  const dims = x.shape;
  const c = dims[4];
  const tiles = tilesOf(dims);
  const blocks = Math.ceil(c / t.cb);
  const wanted = Math.max(1, Math.min(tiles.count, Math.ceil(TARGET_GROUPS / blocks)));
  const per = Math.ceil(tiles.count / wanted);
  const parts = Math.ceil(tiles.count / per);
  const groups = parts * blocks;
  const code = `${tileConstants(k, t)}
      var<workgroup> rev_halo : array<f32, ${volume(t.halo) * t.cb}>;
      var<workgroup> rev_dy : array<f32, ${TILE_VOXELS * t.cb}>;

      const ROW_GROUPS = ${t.rowGroups};

      fn main(index : i32) {
          let lid = index % THREADS;
          let group = index / THREADS;
          let cb = group % uniforms.blocks;
          let p = group / uniforms.blocks;
          let cl = lid % CB;
          let ab = (lid / CB) % (KD * KH);
          let rg = lid / (CB * KD * KH);
          let a = ab / KH;
          let b = ab % KH;
          var acc : array<f32, ${k[2]}>;
          for (var s = 0; s < uniforms.per; s++) {
            let tile = p * uniforms.per + s;
            let live = group < uniforms.groups && tile < uniforms.tiles;
            ${TILE_COORDS("tile")}
            ${LOAD_HALO("xs")}
            for (var i = lid; i < ${TILE_VOXELS} * CB; i += THREADS) {
              let ch = cb * CB + i % CB;
              var v = i / CB;
              let ox = tx * TW + v % TW;
              v = v / TW;
              let oy = ty * TH + v % TH;
              let oz = tz * TD + v / TH;
              var value = 0.0;
              if (live && ch < uniforms.c && oz < uniforms.d && oy < uniforms.h && ox < uniforms.wd) {
                value = dys[(((n * uniforms.d + oz) * uniforms.h + oy) * uniforms.wd + ox) * uniforms.c + ch];
              }
              rev_dy[i] = value;
            }
            workgroupBarrier();
            for (var r = rg; r < TD * TH; r += ROW_GROUPS) {
              let hb = ((r / TH + a) * HH + r % TH + b) * HW;
              var xr : array<f32, ${t.halo[2]}>;
              for (var j = 0; j < HW; j++) { xr[j] = rev_halo[(hb + j) * CB + cl]; }
              var dr : array<f32, ${TILE[2]}>;
              for (var j = 0; j < TW; j++) { dr[j] = rev_dy[(r * TW + j) * CB + cl]; }
              for (var e = 0; e < KW; e++) {
                var sum = acc[e];
                for (var j = 0; j < TW; j++) { sum = sum + xr[j + e] * dr[j]; }
                acc[e] = sum;
              }
            }
            workgroupBarrier();
          }
          let ch = cb * CB + cl;
          if (group < uniforms.groups && ch < uniforms.c) {
            let at = ((p * ROW_GROUPS + rg) * TAPS + ab * KW) * uniforms.c + ch;
            for (var e = 0; e < KW; e++) { result[at + e * uniforms.c] = acc[e]; }
          }
      }`;
  const partial = backend.runWebGPUProgram(
    new Program(
      `rev_dwconv3d_filter_tiled_${k.join("x")}_${t.cb}_${t.rowGroups}`,
      ["xs", "dys"],
      [parts * t.rowGroups, volume(k), c],
      `${TILE_UNIFORMS} blocks : i32, groups : i32, per : i32, tiles : i32,`,
      code,
      { threads: t.threads, workgroups: groups },
    ),
    [x, dy],
    "float32",
    ints(
      dims[1],
      dims[2],
      dims[3],
      c,
      tiles.tz,
      tiles.ty,
      tiles.tx,
      blocks,
      groups,
      per,
      tiles.count,
    ),
  );
  return [parts * t.rowGroups, partial];
}

/** out[j] = Σ_p partial[p, j] for a [parts, width] partial, shaped `shape`. */
function sumParts(
  backend: WebGpuBackend,
  partial: tf.TensorInfo,
  parts: number,
  width: number,
  shape: number[],
): tf.TensorInfo {
  return backend.runWebGPUProgram(
    new Program(
      "rev_sum_parts",
      ["parts"],
      shape,
      "count : i32, width : i32,",
      `
          var acc = 0.0;
          for (var p = 0; p < uniforms.count; p++) { acc = acc + parts[p * uniforms.width + index]; }
          result[index] = acc;`,
    ),
    [partial],
    "float32",
    ints(parts, width),
  );
}

// ---- GroupNorm + activation ----------------------------------------------------------------------

/**
 * Per sample, part and channel: Σ x over the part's voxels, or with `centred` Σ (x − mean_g)².
 * Output [n, parts, c].
 */
function channelPartials(
  backend: WebGpuBackend,
  x: tf.TensorInfo,
  mean: tf.TensorInfo | null,
  dims: { n: number; voxels: number; c: number; groups: number },
  parts: number,
  per: number,
): tf.TensorInfo {
  const centred = mean !== null;
  return backend.runWebGPUProgram(
    new Program(
      centred ? "rev_gn_partial_centred" : "rev_gn_partial",
      centred ? ["xs", "mean"] : ["xs"],
      [dims.n, parts, dims.c],
      "c : i32, groups : i32, voxels : i32, parts : i32, per : i32,",
      `
          let c = uniforms.c;
          let ch = index % c;
          let p = (index / c) % uniforms.parts;
          let i = index / (c * uniforms.parts);
          let first = p * uniforms.per;
          let last = min(first + uniforms.per, uniforms.voxels);
          let base = i * uniforms.voxels * c + ch;
          ${centred ? "let m = mean[i * uniforms.groups + ch / (c / uniforms.groups)];" : ""}
          var acc = 0.0;
          for (var v = first; v < last; v++) {
            ${
        centred
          ? "let e = xs[base + v * c] - m;\n            acc = acc + e * e;"
          : "acc = acc + xs[base + v * c];"
      }
          }
          result[index] = acc;`,
    ),
    centred ? [x, mean] : [x],
    "float32",
    ints(dims.c, dims.groups, dims.voxels, parts, per),
  );
}

/** Threads of a workgroup that reduces one output ({@linkcode reduceRuns}). */
const REDUCE_THREADS = 256;

/**
 * Few sums of many partials, one workgroup per output: out[o] for row = o / cols and col = o % cols
 * is the sum over p < count and k < span of partial[(row·count + p)·width + col·span + k], each
 * thread summing a strided share, then a tree over the workgroup. `finish` is WGSL that turns
 * `total` into the output value (`total` itself when absent). Replaces a loop of count·span reads
 * in one thread per output, which left a GPU with a handful of busy threads.
 */
function reduceRuns(
  backend: WebGpuBackend,
  partial: tf.TensorInfo,
  shape: number[],
  layout: { cols: number; count: number; span: number; width: number },
  finish: { key: string; wgsl: string; uniforms: string; values: Uniform[] } | null,
): tf.TensorInfo {
  const outs = tf.util.sizeFromShape(shape);
  const code = `
      var<workgroup> rev_sums : array<f32, ${REDUCE_THREADS}>;

      fn main(index : i32) {
          let lid = index % ${REDUCE_THREADS};
          let o = index / ${REDUCE_THREADS};
          let live = o < uniforms.outs;
          let row = o / uniforms.cols;
          let col = o % uniforms.cols;
          let first = row * uniforms.count * uniforms.width + col * uniforms.span;
          var acc = 0.0;
          if (live) {
            for (var m = lid; m < uniforms.count * uniforms.span; m += ${REDUCE_THREADS}) {
              acc = acc + parts[first + (m / uniforms.span) * uniforms.width + m % uniforms.span];
            }
          }
          rev_sums[lid] = acc;
          workgroupBarrier();
          for (var half = ${REDUCE_THREADS / 2}; half > 0; half = half / 2) {
            if (lid < half) { rev_sums[lid] = rev_sums[lid] + rev_sums[lid + half]; }
            workgroupBarrier();
          }
          if (live && lid == 0) {
            let total = rev_sums[0];
            result[o] = ${finish?.wgsl ?? "total"};
          }
      }`;
  return backend.runWebGPUProgram(
    new Program(
      `rev_reduce_runs_${finish?.key ?? "sum"}`,
      ["parts"],
      shape,
      `outs : i32, cols : i32, count : i32, span : i32, width : i32, ${finish?.uniforms ?? ""}`,
      code,
      { threads: REDUCE_THREADS, workgroups: outs },
    ),
    [partial],
    "float32",
    [
      ...ints(outs, layout.cols, layout.count, layout.span, layout.width),
      ...(finish?.values ?? []),
    ],
  );
}

/**
 * Per sample and group, from [n, parts, c] partials: the mean (Σ / count), or with `rstd`
 * 1 / sqrt(Σ / count + ε). Output [n, groups].
 */
function groupStat(
  backend: WebGpuBackend,
  partial: tf.TensorInfo,
  dims: { n: number; voxels: number; c: number; groups: number },
  parts: number,
  rstd: { epsilon: number } | null,
): tf.TensorInfo {
  const cpg = dims.c / dims.groups;
  const count = dims.voxels * cpg;
  return reduceRuns(
    backend,
    partial,
    [dims.n, dims.groups],
    { cols: dims.groups, count: parts, span: cpg, width: dims.c },
    rstd
      ? {
        key: "rstd",
        wgsl: "inverseSqrt(total / uniforms.total + uniforms.epsilon)",
        uniforms: "total : f32, epsilon : f32,",
        values: floats(count, rstd.epsilon),
      }
      : {
        key: "mean",
        wgsl: "total / uniforms.total",
        uniforms: "total : f32,",
        values: floats(count),
      },
  );
}

/** WGSL: `pre` = x·scale + shift of element `index`, with `ch`, `i`, `g` and `xhat` defined. */
const PRE_ACTIVATION = `
          let c = uniforms.c;
          let ch = index % c;
          let i = index / (uniforms.voxels * c);
          let g = i * uniforms.groups + ch / (c / uniforms.groups);
          let scale = gamma[ch] * rstd[g];
          let shift = beta[ch] - mean[g] * scale;
          let xv = xs[index];
          let pre = xv * scale + shift;
          let xhat = (xv - mean[g]) * rstd[g];`;

/** WGSL: `mask` = the activation's derivative at `pre` (tfjs's Relu/Relu6 convention). */
const MASK = `
          var mask = 1.0;
          if (uniforms.act == 1 && pre <= 0.0) { mask = 0.0; }
          if (uniforms.act == 2 && (pre <= 0.0 || pre > 6.0)) { mask = 0.0; }`;

const NORM_UNIFORMS = "c : i32, groups : i32, voxels : i32, act : i32,";

function groupNormAct(args: KernelArgs): tf.TensorInfo[] {
  const dims = groupNormCall(shapesOf(args), args.attrs, REV_GROUP_NORM_ACT);
  const epsilon = Number(args.attrs?.epsilon);
  if (!(epsilon > 0)) {
    throw new RangeError(`${REV_GROUP_NORM_ACT}: epsilon must be positive, found ${epsilon}`);
  }
  const { x, gamma, beta } = args.inputs;
  const { backend } = args;
  const [parts, per] = partition(dims.voxels, dims.n * dims.c);
  const sums = channelPartials(backend, x, null, dims, parts, per);
  const mean = groupStat(backend, sums, dims, parts, null);
  backend.disposeData(sums.dataId);
  const squares = channelPartials(backend, x, mean, dims, parts, per);
  const rstd = groupStat(backend, squares, dims, parts, { epsilon });
  backend.disposeData(squares.dataId);
  const y = backend.runWebGPUProgram(
    new Program(
      "rev_gn_apply",
      ["xs", "gamma", "beta", "mean", "rstd"],
      x.shape,
      NORM_UNIFORMS,
      `${PRE_ACTIVATION}
          var out = pre;
          if (uniforms.act >= 1) { out = max(out, 0.0); }
          if (uniforms.act == 2) { out = min(out, 6.0); }
          result[index] = out;`,
    ),
    [x, gamma, beta, mean, rstd],
    "float32",
    ints(dims.c, dims.groups, dims.voxels, dims.act),
  );
  return [y, mean, rstd];
}

/**
 * The analytic gradient, as the native kernel: with g = dy masked by the activation and sums over
 * a group's voxels and channels (N values), dbeta = Σ g, dgamma = Σ g·x̂ (over samples too), and
 * dx = rstd·(γ·g − A/N − x̂·B/N) with A = Σ γ·g, B = Σ γ·g·x̂.
 */
function groupNormActGrad(args: KernelArgs): tf.TensorInfo[] {
  const kernel = REV_GROUP_NORM_ACT_GRAD;
  const dims = groupNormCall(shapesOf(args), args.attrs, kernel);
  const { dy, x, gamma, beta, mean, rstd } = args.inputs;
  const { backend } = args;
  const { n, c, groups, voxels } = dims;
  if (dy.shape.join() !== x.shape.join()) {
    throw new TypeError(`${kernel}: dy [${dy.shape}] must have the shape of x [${x.shape}]`);
  }
  for (const [name, t] of [["mean", mean], ["rstd", rstd]] as const) {
    if (t.shape.join() !== `${n},${groups}`) {
      throw new TypeError(`${kernel}: ${name} must be [${n},${groups}], found [${t.shape}]`);
    }
  }
  const normInputs = [x, gamma, beta, mean, rstd];
  const normUniforms = ints(c, groups, voxels, dims.act);
  const [parts, per] = partition(voxels, n * c);
  // [2, n, parts, c]: Σ g and Σ g·x̂ over each part's voxels
  const partial = backend.runWebGPUProgram(
    new Program(
      "rev_gn_grad_partial",
      ["dys", "xs", "gamma", "beta", "mean", "rstd"],
      [2, n, parts, c],
      `${NORM_UNIFORMS} parts : i32, per : i32, samples : i32,`,
      `
          let c = uniforms.c;
          let ch = index % c;
          let p = (index / c) % uniforms.parts;
          let i = (index / (c * uniforms.parts)) % uniforms.samples;
          let which = index / (c * uniforms.parts * uniforms.samples);
          let g = i * uniforms.groups + ch / (c / uniforms.groups);
          let scale = gamma[ch] * rstd[g];
          let shift = beta[ch] - mean[g] * scale;
          let first = p * uniforms.per;
          let last = min(first + uniforms.per, uniforms.voxels);
          var acc = 0.0;
          for (var v = first; v < last; v++) {
            let at = (i * uniforms.voxels + v) * c + ch;
            let xv = xs[at];
            let pre = xv * scale + shift;
            ${MASK}
            let gv = dys[at] * mask;
            if (which == 0) { acc = acc + gv; } else { acc = acc + gv * (xv - mean[g]) * rstd[g]; }
          }
          result[index] = acc;`,
    ),
    [dy, ...normInputs],
    "float32",
    [...normUniforms, ...ints(parts, per, n)],
  );
  // [2, n, c]: the partials summed over the parts
  const sums = reduceRuns(backend, partial, [2, n, c], {
    cols: c,
    count: parts,
    span: 1,
    width: c,
  }, null);
  backend.disposeData(partial.dataId);
  // dbeta, dgamma [c]: the sums over the samples
  const paramGrad = (which: number) =>
    backend.runWebGPUProgram(
      new Program(
        "rev_gn_param_grad",
        ["sums"],
        [c],
        "c : i32, samples : i32, which : i32,",
        `
          var acc = 0.0;
          for (var i = 0; i < uniforms.samples; i++) {
            acc = acc + sums[(uniforms.which * uniforms.samples + i) * uniforms.c + index];
          }
          result[index] = acc;`,
      ),
      [sums],
      "float32",
      ints(c, n, which),
    );
  const dBeta = paramGrad(0);
  const dGamma = paramGrad(1);
  // [2, n, groups]: A = Σ γ·g and B = Σ γ·g·x̂ over each group's channels
  const ab = backend.runWebGPUProgram(
    new Program(
      "rev_gn_group_grad",
      ["sums", "gamma"],
      [2, n, groups],
      "c : i32, groups : i32,",
      `
          let g = index % uniforms.groups;
          let row = index / uniforms.groups;
          let cpg = uniforms.c / uniforms.groups;
          var acc = 0.0;
          for (var k = 0; k < cpg; k++) {
            let ch = g * cpg + k;
            acc = acc + gamma[ch] * sums[row * uniforms.c + ch];
          }
          result[index] = acc;`,
    ),
    [sums, gamma],
    "float32",
    ints(c, groups),
  );
  backend.disposeData(sums.dataId);
  const dx = backend.runWebGPUProgram(
    new Program(
      "rev_gn_input_grad",
      ["xs", "gamma", "beta", "mean", "rstd", "dys", "ab"],
      x.shape,
      `${NORM_UNIFORMS} samples : i32, total : f32,`,
      `${PRE_ACTIVATION}
          ${MASK}
          let gv = dys[index] * mask;
          let a = ab[g];
          let b = ab[uniforms.samples * uniforms.groups + g];
          result[index] = rstd[g] * (gamma[ch] * gv - a / uniforms.total - xhat * b / uniforms.total);`,
    ),
    [...normInputs, dy, ab],
    "float32",
    [...normUniforms, ...ints(n), ...floats(voxels * (c / groups))],
  );
  backend.disposeData(ab.dataId);
  return [dx, dGamma, dBeta];
}

// ---- Adam ---------------------------------------------------------------------------------------

/**
 * An optimizer kernel's call checked: every input in `others` has the shape of `w`, and each
 * attribute in `keys` is a finite number (returned in that order).
 */
function updateCall(kernel: string, args: KernelArgs, others: string[], keys: string[]): number[] {
  const w = args.inputs.w;
  for (const name of others) {
    const t = args.inputs[name];
    if (t.shape.join() !== w.shape.join()) {
      throw new TypeError(`${kernel}: ${name} [${t.shape}] must have the shape of w [${w.shape}]`);
    }
  }
  const attrs = args.attrs ?? {};
  return keys.map((key) => {
    const value = Number(attrs[key]);
    if (!Number.isFinite(value)) {
      throw new TypeError(`${kernel}: attribute ${key} must be a number, found ${attrs[key]}`);
    }
    return value;
  });
}

/** WGSL: the new first moment `mi` and second moment `vi` of element `index`. */
const NEW_M = "let mi = moment1[index] * uniforms.b1 + grads[index] * uniforms.c1;";
const NEW_V =
  "let vi = moment2[index] * uniforms.b2 + (grads[index] * grads[index]) * uniforms.c2;";

const ADAM_UNIFORMS =
  "b1 : f32, c1 : f32, b2 : f32, c2 : f32, bc1 : f32, bc2 : f32, eps : f32, wd : f32, rate : f32,";

/**
 * Adam(W) for one weight in three dispatches (the new moments, then the weight from the old
 * moments recomputed) where the op-by-op update takes some fifteen, each a full pass with its own
 * intermediate: with the reference network's 270 weights that is some 4,000 dispatches a step
 * fewer. Same float32 operations in the same order as model/optimizer.ts's op-by-op update.
 */
function adamUpdate(args: KernelArgs): tf.TensorInfo[] {
  const { w, g, m, v } = args.inputs;
  const [beta1, beta2, step, epsilon, weightDecay, lr] = updateCall(
    REV_ADAM_UPDATE,
    args,
    ["g", "m", "v"],
    ["beta1", "beta2", "step", "epsilon", "weightDecay", "lr"],
  );
  const uniforms = floats(
    beta1,
    1 - beta1,
    beta2,
    1 - beta2,
    1 - Math.pow(beta1, step),
    1 - Math.pow(beta2, step),
    epsilon,
    weightDecay,
    lr,
  );
  // Each program binds only the inputs it reads: WebGPU's automatic layout drops unread bindings.
  const inputs = { weights: w, grads: g, moment1: m, moment2: v };
  const run = (key: string, names: (keyof typeof inputs)[], body: string) =>
    args.backend.runWebGPUProgram(
      new Program(key, names, w.shape, ADAM_UNIFORMS, body),
      names.map((n) => inputs[n]),
      "float32",
      uniforms,
    );
  const m2 = run("rev_adam_m", ["grads", "moment1"], `${NEW_M}\n          result[index] = mi;`);
  const v2 = run("rev_adam_v", ["grads", "moment2"], `${NEW_V}\n          result[index] = vi;`);
  const w2 = run(
    "rev_adam_w",
    ["weights", "grads", "moment1", "moment2"],
    `${NEW_M}
          ${NEW_V}
          var update = (mi / uniforms.bc1) / (sqrt(vi / uniforms.bc2) + uniforms.eps);
          if (uniforms.wd > 0.0) { update = update + weights[index] * uniforms.wd; }
          result[index] = weights[index] - update * uniforms.rate;`,
  );
  return [w2, m2, v2];
}

/**
 * SGD with Nesterov momentum for one weight in two dispatches (the new velocity, then the weight
 * from the old velocity recomputed) instead of some eight. `grad` = g + w·wd as in
 * model/optimizer.ts (with wd = 0, g + w·0 is g exactly for finite weights).
 */
function sgdUpdate(args: KernelArgs): tf.TensorInfo[] {
  const { w, g, vel } = args.inputs;
  const values = updateCall(REV_SGD_UPDATE, args, ["g", "vel"], ["momentum", "weightDecay", "lr"]);
  const velocity = `
          let grad = grads[index] + weights[index] * uniforms.wd;
          let vi = velocity[index] * uniforms.momentum + grad;`;
  const run = (key: string, body: string) =>
    args.backend.runWebGPUProgram(
      new Program(
        key,
        ["weights", "grads", "velocity"],
        w.shape,
        "momentum : f32, wd : f32, rate : f32,",
        body,
      ),
      [w, g, vel],
      "float32",
      floats(...values),
    );
  const vel2 = run("rev_sgd_v", `${velocity}\n          result[index] = vi;`);
  const w2 = run(
    "rev_sgd_w",
    `${velocity}
          result[index] = weights[index] - (grad + vi * uniforms.momentum) * uniforms.rate;`,
  );
  return [w2, vel2];
}

// ---- registration --------------------------------------------------------------------------------

const KERNELS: [string, (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[]][] = [
  [REV_DEPTHWISE_CONV3D, (args) => depthwise(args, "x", REV_DEPTHWISE_CONV3D)],
  [
    REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
    (args) => depthwise(args, "dy", REV_DEPTHWISE_CONV3D_BACKPROP_INPUT),
  ],
  [REV_DEPTHWISE_CONV3D_BACKPROP_FILTER, depthwiseFilterGrad],
  [REV_GROUP_NORM_ACT, groupNormAct],
  [REV_GROUP_NORM_ACT_GRAD, groupNormActGrad],
  [REV_ADAM_UPDATE, adamUpdate],
  [REV_SGD_UPDATE, sgdUpdate],
];

/**
 * Registers the WGSL kernels for the `webgpu` backend (idempotent). The layers then use them
 * whenever webgpu is the active backend; {@linkcode disableWebGpuKernels} puts the composite
 * paths back.
 */
export function enableWebGpuKernels(): void {
  for (const [name, fn] of KERNELS) {
    if (tf.getKernel(name, BACKEND)) continue;
    tf.registerKernel({
      kernelName: name,
      backendName: BACKEND,
      kernelFunc: fn as unknown as tf.KernelFunc,
    });
  }
}

/** Unregisters the WGSL kernels (idempotent). */
export function disableWebGpuKernels(): void {
  for (const [name] of KERNELS) {
    if (tf.getKernel(name, BACKEND)) tf.unregisterKernel(name, BACKEND);
  }
}

/** Whether the WGSL kernels are registered. */
export function webGpuKernelsEnabled(): boolean {
  return KERNELS.every(([name]) => tf.getKernel(name, BACKEND) !== undefined);
}
