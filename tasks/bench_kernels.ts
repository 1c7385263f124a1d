/**
 * `bench kernels`: the project's own kernels one by one — depthwise 3D convolution, its input and
 * filter gradients, GroupNorm with its activation and its gradient — at the shapes the reference
 * network gives them at a crop (one shape per level: the expanded channels of that level's
 * bottlenecks), on the active backend. On webgpu the depthwise kernels are timed with the tiled
 * WGSL programs and with the untiled ones (one thread per output), alternately in the same run, so
 * the ratio is the figure to trust.
 * @module
 */
import * as tf from "../model/tf.ts";
import { REFERENCE_CONFIG, resolveConfig } from "../model/mod.ts";
import {
  hasKernel,
  REV_DEPTHWISE_CONV3D,
  REV_DEPTHWISE_CONV3D_BACKPROP_FILTER,
  REV_DEPTHWISE_CONV3D_BACKPROP_INPUT,
  REV_GROUP_NORM_ACT,
  REV_GROUP_NORM_ACT_GRAD,
} from "../model/native/names.ts";
import { setWgslTiles } from "../model/webgpu/kernels.ts";

/** One kernel at one shape. */
export interface KernelTiming {
  kernel: string;
  /** The input's shape, [n, d, h, w, c]. */
  shape: number[];
  /** Median milliseconds per call, the result read back (tiled programs on webgpu). */
  ms: number;
  /** webgpu: the same with the untiled programs. */
  ms_untiled?: number;
  /** webgpu: ms_untiled / ms. */
  ratio?: number;
}

export interface BenchKernelsOptions {
  /** The cubic crop whose per-level shapes are timed. @default 32 */
  crop?: number;
  /** Timed calls per kernel and variant after one warm-up; the median is reported. @default 3 */
  steps?: number;
  /** The device string of the backend, for the report. */
  device?: string;
  log?: (message: string) => void;
}

/** The depthwise layers' input shapes of the reference network at `crop`, one per level. */
export function depthwiseShapes(crop: number): [number, number, number, number, number][] {
  const config = resolveConfig(REFERENCE_CONFIG);
  const shapes: [number, number, number, number, number][] = [];
  for (let level = 0; level < config.levels; level++) {
    const edge = crop >> level;
    if (edge < 1) break;
    const channels = config.baseChannels << level;
    shapes.push([1, edge, edge, edge, config.expansion * (channels / 2)]);
  }
  return shapes;
}

async function median(fn: () => tf.Tensor | tf.Tensor[], steps: number): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i <= steps; i++) {
    const start = performance.now();
    const out = fn();
    const outs = Array.isArray(out) ? out : [out];
    for (const t of outs) await t.data();
    const ms = performance.now() - start;
    tf.dispose(outs);
    if (i > 0) times.push(ms);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

const round = (ms: number) => Math.round(ms * 1000) / 1000;

/** Runs the kernel benchmark on the active backend and returns its JSON object. */
export async function benchKernels(options: BenchKernelsOptions = {}) {
  const { crop = 32, steps = 3, device = tf.getBackend(), log = () => {} } = options;
  const backend = tf.getBackend();
  const config = resolveConfig(REFERENCE_CONFIG);
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
  const compare = backend === "webgpu";
  const engine = tf.engine();
  const kernels: KernelTiming[] = [];
  const before = compare ? setWgslTiles(true) : true;
  try {
    for (const shape of depthwiseShapes(crop)) {
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
      const calls: [string, () => tf.Tensor | tf.Tensor[]][] = [
        [
          "depthwise_conv3d",
          () => engine.runKernel(REV_DEPTHWISE_CONV3D, { x, filter }) as tf.Tensor,
        ],
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
      try {
        for (const [kernel, call] of calls) {
          log(`${kernel} [${shape}]`);
          // Tiling is the depthwise kernels' alone: GroupNorm has one set of programs.
          if (!compare || !kernel.startsWith("depthwise")) {
            kernels.push({ kernel, shape, ms: round(await median(call, steps)) });
            continue;
          }
          // Alternate the two variants twice and keep each one's better median: the machine's
          // noise then falls on both alike.
          const tiled: number[] = [];
          const untiled: number[] = [];
          for (let pass = 0; pass < 2; pass++) {
            for (const on of [true, false]) {
              setWgslTiles(on);
              (on ? tiled : untiled).push(await median(call, steps));
            }
          }
          const ms = Math.min(...tiled);
          const msUntiled = Math.min(...untiled);
          kernels.push({
            kernel,
            shape,
            ms: round(ms),
            ms_untiled: round(msUntiled),
            ratio: Math.round((msUntiled / ms) * 100) / 100,
          });
        }
      } finally {
        tf.dispose([x, dy, filter, gamma, beta, mean, rstd]);
      }
    }
  } finally {
    if (compare) setWgslTiles(before);
  }
  return { backend, device, crop, steps, kernels };
}

/** A table of {@linkcode benchKernels}'s result for people. */
export function formatKernels(result: Awaited<ReturnType<typeof benchKernels>>): string {
  const lines = [`${result.device}, crop ${result.crop}, median of ${result.steps}`];
  for (const k of result.kernels) {
    const compare = k.ms_untiled === undefined
      ? ""
      : `  untiled ${k.ms_untiled.toFixed(2)} ms  (${k.ratio}×)`;
    lines.push(
      `${k.kernel.padEnd(30)} [${k.shape.join(",")}]`.padEnd(56) +
        `${k.ms.toFixed(2)} ms${compare}`,
    );
  }
  return lines.join("\n");
}
