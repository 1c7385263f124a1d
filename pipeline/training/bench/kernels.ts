/**
 * `bench kernels`: the project's own kernels one by one — depthwise 3D convolution, its input and
 * filter gradients, GroupNorm with its activation and its gradient — at the shapes the reference
 * network gives them at a crop (one shape per level: the expanded channels of that level's
 * bottlenecks), and the filter gradients of the stem and the first down-sampling convolution, on
 * the active backend. On webgpu each of those is also timed against what it replaces — the
 * depthwise kernels' untiled WGSL programs (one thread per output), tfjs's convolution-filter
 * gradient (one thread per filter value) against the project's tap-by-tap one — alternately in
 * the same run, so the ratio is the figure to trust.
 * @module
 */
import * as tf from "../../../model/tf.ts";
import { type NetworkConfig, REFERENCE_CONFIG, resolveConfig } from "../../../model/mod.ts";
import {
  hasKernel,
  REV_DEPTHWISE_CONV3D,
  REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
  REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
  REV_GROUP_NORM_ACT,
  REV_GROUP_NORM_ACT_GRAD,
} from "../../../model/native/names.ts";
import { setWgslTiles } from "../../../model/webgpu/kernels.ts";
import { conv3dFilterGradByTaps } from "../../../model/conv_grad.ts";
import { median, round, timeRuns } from "./_timing.ts";

/** One kernel at one shape. */
export interface KernelTiming {
  kernel: string;
  /** The input's shape, [n, d, h, w, c]. */
  shape: number[];
  /** Median milliseconds per call, the result read back: the project's way (on webgpu the tiled
   * depthwise programs, the convolution-filter gradient by taps). */
  ms: number;
  /** webgpu: what it replaces, "untiled WGSL" or "tfjs Conv3DBackpropFilterV2". */
  baseline?: string;
  /** webgpu: the baseline's median milliseconds. */
  ms_baseline?: number;
  /** webgpu: ms_baseline / ms. */
  ratio?: number;
}

/** Options of {@linkcode benchKernels}. */
export interface BenchKernelsOptions {
  /** The cubic crop whose per-level shapes are timed. @default 32 */
  crop?: number;
  /** Timed calls per kernel and variant after one warm-up; the median is reported. @default 3 */
  steps?: number;
  /** The device string of the backend, for the report. @default the tfjs backend's name */
  device?: string;
  /** Progress messages. */
  log?: (message: string) => void;
}

type Shape5 = [number, number, number, number, number];
type Call = () => tf.Tensor | tf.Tensor[];

/** The depthwise layers' input shapes of the reference network at `crop`, one per level. */
export function depthwiseShapes(crop: number): Shape5[] {
  const config = resolveConfig(REFERENCE_CONFIG);
  const shapes: Shape5[] = [];
  for (let level = 0; level < config.levels; level++) {
    const edge = crop >> level;
    if (edge < 1) break;
    const channels = config.baseChannels << level;
    shapes.push([1, edge, edge, edge, config.expansion * (channels / 2)]);
  }
  return shapes;
}

/** The median milliseconds of `steps` calls after one warm-up, each result read back. */
async function medianMs(fn: Call, steps: number): Promise<number> {
  const times = await timeRuns(
    async () => {
      const out = fn();
      const outs = Array.isArray(out) ? out : [out];
      for (const t of outs) await t.data();
      tf.dispose(outs);
    },
    1,
    steps,
  );
  return median(times);
}

/** The project's kernels, refused with their names when the backend lacks any. */
function checkKernels(backend: string): void {
  const missing = [
    REV_DEPTHWISE_CONV3D,
    REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
    REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
    REV_GROUP_NORM_ACT,
    REV_GROUP_NORM_ACT_GRAD,
  ].filter((name) => !hasKernel(name));
  if (missing.length > 0) {
    throw new Error(
      `bench kernels: the ${backend} backend has none of the project's kernels ${
        missing.join(", ")
      } (they exist on cpu with gcc and OpenBLAS, and on webgpu; REVUNET_NATIVE=0 turns them off)`,
    );
  }
}

/** The depthwise and GroupNorm kernels at one level's shape. */
async function depthwiseTimings(
  config: NetworkConfig,
  shape: Shape5,
  steps: number,
  compare: boolean,
  log: (message: string) => void,
): Promise<KernelTiming[]> {
  const engine = tf.engine();
  const c = shape[4];
  const attrs = {
    groups: Math.min(config.maxGroups, c),
    epsilon: config.epsilon,
    activation: config.activation,
  };
  const [x, dy, filter, gamma, beta] = [
    tf.randomNormal(shape, 0, 1, "float32", 1),
    tf.randomNormal(shape, 0, 1, "float32", 2),
    tf.randomNormal([3, 3, 3, c, 1], 0, 0.2, "float32", 3),
    tf.randomNormal([c], 1, 0.1, "float32", 4),
    tf.randomNormal([c], 0, 0.1, "float32", 5),
  ];
  const [, mean, rstd] = engine.runKernel(
    REV_GROUP_NORM_ACT,
    { x, gamma, beta },
    attrs,
  ) as tf.Tensor[];
  const calls: [string, Call][] = [
    ["depthwise_conv3d", () => engine.runKernel(REV_DEPTHWISE_CONV3D, { x, filter }) as tf.Tensor],
    [
      "depthwise_conv3d_input_grad",
      () => engine.runKernel(REV_DEPTHWISE_CONV3D_BACKPROP_INPUT, { dy, filter }) as tf.Tensor,
    ],
    [
      "depthwise_conv3d_filter_grad",
      () =>
        engine.runKernel(REV_DEPTHWISE_CONV3D_BACKPROP_FILTER, { x, dy }, {
          filterShape: filter.shape,
        }) as tf.Tensor,
    ],
    [
      "group_norm_act",
      () => engine.runKernel(REV_GROUP_NORM_ACT, { x, gamma, beta }, attrs) as tf.Tensor[],
    ],
    [
      "group_norm_act_grad",
      () =>
        engine.runKernel(
          REV_GROUP_NORM_ACT_GRAD,
          { dy, x, gamma, beta, mean, rstd },
          attrs,
        ) as tf.Tensor[],
    ],
  ];
  const timings: KernelTiming[] = [];
  try {
    for (const [kernel, call] of calls) {
      log(`${kernel} [${shape}]`);
      // Tiling is the depthwise kernels' alone: GroupNorm has one set of programs.
      timings.push(
        compare && kernel.startsWith("depthwise")
          ? await compareTimes(kernel, shape, call, steps, "untiled WGSL", setWgslTiles)
          : { kernel, shape, ms: round(await medianMs(call, steps)) },
      );
    }
  } finally {
    tf.dispose([x, dy, filter, gamma, beta, mean, rstd]);
  }
  return timings;
}

/** The dense convolutions' filter gradients: the stem's and the first down-sampling one's. */
async function convFilterGradTimings(
  config: NetworkConfig,
  crop: number,
  steps: number,
  compare: boolean,
  log: (message: string) => void,
): Promise<KernelTiming[]> {
  const engine = tf.engine();
  const channels = config.baseChannels;
  const convs: [string, Shape5, Shape5, number, "same" | "valid"][] = [
    [
      "stem",
      [1, crop, crop, crop, config.inChannels],
      [3, 3, 3, config.inChannels, channels],
      1,
      "same",
    ],
    ["down", [1, crop, crop, crop, channels], [2, 2, 2, channels, 2 * channels], 2, "valid"],
  ];
  const timings: KernelTiming[] = [];
  for (const [which, shape, filterShape, stride, pad] of convs) {
    const kernel = `conv3d_filter_grad_${which}`;
    log(`${kernel} [${shape}]`);
    const x = tf.randomNormal(shape, 0, 1, "float32", 7) as tf.Tensor5D;
    const o = tf.backend_util.computeConv3DInfo(x.shape, filterShape, stride, 1, pad);
    const dy = tf.randomNormal(
      [1, o.outDepth, o.outHeight, o.outWidth, filterShape[4]],
      0,
      1,
      "float32",
      8,
    ) as tf.Tensor5D;
    const byKernel = () =>
      engine.runKernel("Conv3DBackpropFilterV2", { x, dy }, {
        strides: [stride, stride, stride],
        pad,
        filterShape,
      }) as tf.Tensor;
    const byTaps = () => conv3dFilterGradByTaps(x, dy, filterShape, stride, pad);
    let taps = true;
    const useTaps = (on: boolean) => {
      const was = taps;
      taps = on;
      return was;
    };
    try {
      timings.push(
        compare
          ? await compareTimes(
            kernel,
            shape,
            () => (taps ? byTaps() : byKernel()),
            steps,
            "tfjs Conv3DBackpropFilterV2",
            useTaps,
          )
          : { kernel, shape, ms: round(await medianMs(byKernel, steps)) },
      );
    } finally {
      tf.dispose([x, dy]);
    }
  }
  return timings;
}

/** Runs the kernel benchmark on the active backend and returns its JSON object. */
export async function benchKernels(options: BenchKernelsOptions = {}) {
  const { crop = 32, steps = 3, device = tf.getBackend(), log = () => {} } = options;
  const backend = tf.getBackend();
  const config = resolveConfig(REFERENCE_CONFIG);
  checkKernels(backend);
  const compare = backend === "webgpu";
  const kernels: KernelTiming[] = [];
  const before = compare ? setWgslTiles(true) : true;
  try {
    for (const shape of depthwiseShapes(crop)) {
      kernels.push(...await depthwiseTimings(config, shape, steps, compare, log));
    }
    kernels.push(...await convFilterGradTimings(config, crop, steps, compare, log));
  } finally {
    if (compare) setWgslTiles(before);
  }
  return { backend, device, crop, steps, kernels };
}

/** What {@linkcode benchKernels} returns. */
export type KernelsResult = Awaited<ReturnType<typeof benchKernels>>;

/**
 * Times `call` the project's way (`use(true)`) and the baseline's (`use(false)`), alternating
 * twice and keeping each one's better median, so that the machine's noise falls on both alike.
 */
async function compareTimes(
  kernel: string,
  shape: number[],
  call: Call,
  steps: number,
  baseline: string,
  use: (on: boolean) => boolean,
): Promise<KernelTiming> {
  const ours: number[] = [];
  const theirs: number[] = [];
  const before = use(true);
  try {
    for (let pass = 0; pass < 2; pass++) {
      for (const on of [true, false]) {
        use(on);
        (on ? ours : theirs).push(await medianMs(call, steps));
      }
    }
  } finally {
    use(before);
  }
  const ms = Math.min(...ours);
  const msBaseline = Math.min(...theirs);
  return {
    kernel,
    shape,
    ms: round(ms),
    baseline,
    ms_baseline: round(msBaseline),
    ratio: Math.round((msBaseline / ms) * 100) / 100,
  };
}

/** A table of {@linkcode benchKernels}'s result for people. */
export function formatKernels(result: KernelsResult): string {
  const lines = [`${result.device}, crop ${result.crop}, median of ${result.steps}`];
  for (const k of result.kernels) {
    const compare = k.ms_baseline === undefined
      ? ""
      : `  ${k.baseline} ${k.ms_baseline.toFixed(2)} ms  (${k.ratio}×)`;
    lines.push(
      `${k.kernel.padEnd(30)} [${k.shape.join(",")}]`.padEnd(56) +
        `${k.ms.toFixed(2)} ms${compare}`,
    );
  }
  return lines.join("\n");
}
