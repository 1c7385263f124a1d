/**
 * `bench memory`: the seed paper's experiment — what a fixed memory budget buys the reversible
 * network over its standard twin — measured with tf.profile on this machine's backend.
 * `bench speed`: training and inference throughput and whole-case seconds, with a PyTorch peer
 * (tasks/bench_speed.ts).
 * @module
 */
import * as tf from "../model/tf.ts";
import {
  compareGradMapsAsync,
  countParams,
  createUNet,
  cropModel,
  diceBceLoss,
  disposeUNet,
  fieldModel,
  maxCropEdge,
  maxFieldValue,
  measureStepPeak,
  predictPeak,
  randomTarget,
  REFERENCE_CONFIG,
  resolveConfig,
  reversibleGrads,
  reversibleLowerBound,
  standardGrads,
} from "../model/mod.ts";
import { datasetShape } from "../pipeline/cases/mod.ts";
import { selectBackend } from "../model/backend.ts";
import { benchSpeed, BRATS_DIMS, formatSpeed } from "./bench_speed.ts";
import { benchKernels, formatKernels } from "./bench_kernels.ts";
import {
  backendFlag,
  type Command,
  intFlag,
  numberFlag,
  parseFlags,
  printJson,
  UsageError,
} from "./_cli.ts";

const GiB = 1024 ** 3;

/** Options of {@linkcode benchMemory}. */
export interface BenchMemoryOptions {
  /** Memory budget for the searches, bytes. @default 16 GiB */
  budget?: number;
  /** Crop at which peak bytes are reported. @default 32 */
  crop?: number;
  /** Crop at which the depth and width searches are made. @default 96 */
  searchCrop?: number;
  /** Progress messages. */
  log?: (msg: string) => void;
  /** A dataset's input channels and output regions (see `--data`). @default 4 and 3 (BraTS) */
  io?: { inChannels: number; outChannels: number };
}

/** Runs the memory benchmark and returns its JSON object. */
export async function benchMemory(options: BenchMemoryOptions = {}) {
  const { budget = 16 * GiB, crop = 32, searchCrop = 96, log = () => {} } = options;
  const ref = resolveConfig({ ...REFERENCE_CONFIG, ...options.io });
  const variants = { reversible: true, standard: false } as const;

  log("gradient check: reversible vs standard, reference network, 16^3");
  const x = tf.randomNormal([1, 16, 16, 16, ref.inChannels], 0, 1, "float32", 5) as tf.Tensor5D;
  const target = randomTarget([1, 16, 16, 16, ref.outChannels], 6, 0.7);
  const net = createUNet(ref, { seed: 7, zeroInitResidual: false });
  const loss = (logits: tf.Tensor5D) => diceBceLoss(logits, target);
  const rev = reversibleGrads(net, x, loss, true);
  const std = standardGrads(net, x, loss, true);
  const cmp = await compareGradMapsAsync(
    new Map([...rev.grads, ["input", rev.inputGrad!]]),
    new Map([...std.grads, ["input", std.inputGrad!]]),
  );
  tf.dispose([
    x,
    target,
    rev.loss,
    std.loss,
    rev.inputGrad!,
    std.inputGrad!,
    ...rev.grads.values(),
    ...std.grads.values(),
  ]);
  disposeUNet(net);

  // The reversible step's fixed costs (weights, optimizer state, the small bottom levels) still
  // bend its curve below 32³, so it is fitted from 32³ up, where it is a straight line (measured
  // 2026-12-01: 997 bytes per voxel from 32 to 64 and from 64 to 96). The standard step is
  // straight from 16³ and costs 20× more per voxel, so it stays at small crops.
  const fitCrops = {
    reversible: [crop, 48, 64],
    standard: [16, 24, crop],
  };
  const fieldCrops = { reversible: [32, 48], standard: [16, 24] };
  const models: Record<string, Awaited<ReturnType<typeof cropModel>>> = {};
  const depth: Record<string, ReturnType<typeof fieldModel>> = {};
  const width: Record<string, ReturnType<typeof fieldModel>> = {};
  for (const [name, reversible] of Object.entries(variants)) {
    const cfg = resolveConfig({ ...ref, reversible });
    const crops = [...new Set(fitCrops[name as keyof typeof variants])].sort((a, b) => a - b);
    const fc = fieldCrops[name as keyof typeof variants];
    log(`${name}: peak bytes at crops ${crops.join(", ")}`);
    models[name] = await cropModel(cfg, crops);
    log(`${name}: depth model (blocksPerLevel 1 and 2 at crops ${fc.join(", ")})`);
    const b1 = await cropModel(resolveConfig({ ...cfg, blocksPerLevel: 1 }), fc);
    const b2 = await cropModel(cfg, fc);
    depth[name] = fieldModel("blocksPerLevel", [b1, b2]);
    log(`${name}: width model (baseChannels 8 and 16 at crops ${fc.join(", ")})`);
    const w8 = await cropModel(resolveConfig({ ...cfg, baseChannels: 8 }), fc);
    width[name] = fieldModel("baseChannels", [w8, b2]);
  }
  // The fit checked where the searches use it: the reversible step measured at the search crop.
  log(`reversible: peak bytes at the search crop ${searchCrop} (checks the fit)`);
  const checkMeasured = await measureStepPeak(resolveConfig(ref), searchCrop);
  const checkPredicted = predictPeak(models.reversible, searchCrop);
  const per = <T>(f: (name: keyof typeof variants) => T) => ({
    reversible: f("reversible"),
    standard: f("standard"),
  });
  const peakAt = per((n) => models[n].measured.find((m) => m.crop === crop)!.peakBytes);
  const maxCrop = per((n) => maxCropEdge(models[n], budget, 16));
  // The depth and width searches differ only in the fitted model and the step of the field.
  const searchMax = (fms: typeof depth, step: number) =>
    per((n) =>
      maxFieldValue(
        fms[n],
        resolveConfig({ ...ref, reversible: n === "reversible" }),
        budget,
        searchCrop,
        step,
        1 << 16,
      )
    );
  const maxBlocks = searchMax(depth, 1);
  const maxBase = searchMax(width, 8);
  const lower = reversibleLowerBound(ref, crop);
  const ratio = (r: { reversible: number; standard: number }, pow = 1) =>
    r.standard > 0 ? Number(((r.reversible / r.standard) ** pow).toFixed(3)) : null;
  return {
    backend: tf.getBackend(),
    param_count: countParams(ref),
    grad_check: { global_rel_err: cmp.globalRelErr, worst_tensor_rel_err: cmp.worstTensorRelErr },
    peak_bytes: { crop, ...peakAt },
    budget_bytes: budget,
    max_crop_edge: maxCrop,
    max_blocks_per_level: maxBlocks,
    max_base_channels: maxBase,
    lower_bound_bytes: { crop, reversible: lower },
    fit_check: {
      crop: searchCrop,
      reversible_measured: checkMeasured,
      reversible_predicted: Math.round(checkPredicted),
      rel_err: Number(((checkPredicted - checkMeasured) / checkMeasured).toFixed(4)),
      reversible_over_lower_bound: Number(
        (checkMeasured / reversibleLowerBound(ref, searchCrop)).toFixed(3),
      ),
    },
    ratios: {
      peak_standard_over_reversible: Number((peakAt.standard / peakAt.reversible).toFixed(3)),
      volume: ratio(maxCrop, 3),
      depth: ratio(maxBlocks),
      channels: ratio(maxBase),
      reversible_over_lower_bound: Number((peakAt.reversible / lower).toFixed(3)),
    },
    fits: per((n) => ({
      bytes_per_voxel: Math.round(models[n].fit.slope),
      fixed_bytes: Math.round(models[n].fit.intercept),
      max_rel_residual: Number(models[n].fit.maxRelResidual.toExponential(2)),
      measured: models[n].measured,
      predicted_at_search_crop: Math.round(predictPeak(models[n], searchCrop)),
      depth_bytes_per_voxel_per_block: Math.round(depth[n].perVoxel.slope),
      width_bytes_per_voxel_per_channel: Math.round(width[n].perVoxel.slope),
    })),
  };
}

/** Parses `--case-sizes`: comma-separated XxYxZ sizes, or "none". */
function caseSizesFlag(value: string | undefined): [number, number, number][] | undefined {
  if (value === undefined) return undefined;
  if (value === "none") return [];
  return value.split(",").map((part) => {
    const dims = part.trim().split("x").map(Number);
    if (dims.length !== 3 || dims.some((d) => !Number.isInteger(d) || d < 1)) {
      throw new UsageError(
        `--case-sizes must be comma-separated XxYxZ sizes (e.g. 60x60x39,240x240x155) or "none", ` +
          `got "${part}"`,
      );
    }
    return dims as [number, number, number];
  });
}

/** Flags every benchmark takes. */
const COMMON_FLAGS = ["json", "crop", "backend"];
/** Each benchmark's own flags. */
const OWN_FLAGS: Record<"memory" | "speed" | "kernels", string[]> = {
  memory: ["budget", "search-crop", "data"],
  speed: ["steps", "case-sizes", "window", "threads", "no-peer"],
  kernels: ["steps"],
};

export const benchCommand: Command = {
  name: "bench",
  summary: "Benchmarks: memory (reversible vs standard), speed (vs PyTorch), the project's kernels",
  help: `Usage: deno task bench memory [--json] [--budget <gib>] [--crop <n>] [--search-crop <n>]
                              [--backend <backend>]
       deno task bench speed [--json] [--crop <n>] [--steps <n>] [--case-sizes <x>x<y>x<z>,...]
                             [--window <n>] [--threads <n>] [--no-peer] [--backend <backend>]
       deno task bench kernels [--json] [--crop <n>] [--steps <n>] [--backend <backend>]

memory: measures the peak bytes of one full training step (forward, loss, backward, Adam update)
at batch 1 with tf.profile, for the reversible network and its standard twin, and reproduces the
seed paper's experiment under a fixed budget: the largest cubic crop (multiple of 16), the most
blocks per level and the widest base (multiple of 8) whose training step fits, each variant, the
rest at the reference configuration (crop 96 for the depth and width searches). Peak memory is
linear in voxels for a fixed network, so each figure is fitted from measured crops (reversible 32,
48, 64; standard 16, 24, 32) and the fit's worst residual is printed with it; the reversible step
is also measured at the search crop to check the fit ("fit_check").

speed: times the reference network at batch 1 on the backend: the median of --steps training
steps (reversible backward, Dice+BCE, Adam) and inference passes at a cubic crop, after one
warm-up each, and sliding-window inference (overlap 0.5, no mirroring) over synthetic whole cases
of each --case-sizes size; case_seconds is the one at ${BRATS_DIMS.join("x")} when measured, else
extrapolated from the sizes measured (seconds are linear in the voxels the windows cover, which
are known for any size). Then runs the same network in PyTorch
(tasks/peer_torch.py with /usr/bin/python3; \`deno task setup --peer\` installs it) at the same crop
and steps and reports it as "peer" with the ratios ours/peer of voxels per second; without PyTorch,
"peer" is null and "peer_reason" says why.

kernels: times the project's own kernels one by one — depthwise conv3d, its input and filter
gradients, GroupNorm+activation and its gradient — at the reference network's depthwise shapes at
the crop (one per level), and the filter gradients of the stem and the first down-sampling
convolution, the median of --steps calls each with the result read back. On webgpu each is also
timed against what it replaces ("baseline", "ms_baseline", "ratio" = baseline / ours): the
depthwise kernels untiled (one thread per output, as REVUNET_WGSL_TILES=0 runs them), the filter
gradient by tfjs's kernel instead of by taps; alternately, in the same run. The backend must have
the kernels: cpu with the native library, or webgpu.

Options:
  --json                print only the JSON object (default: progress on stderr; memory prints its
                        JSON on stdout, speed a summary)
  --budget <gib>        memory: budget for the searches (default 16)
  --crop <n>            memory: crop for the reported peak bytes (default 32); speed: the timed
                        crop, a multiple of 8 (default 32 on cpu and wasm, 128 on a GPU backend);
                        kernels: the network's crop whose layer shapes are timed (default 32 on cpu,
                        64 on a GPU backend)
  --search-crop <n>     memory: crop for the depth and width searches (default 96)
  --data <uri>          memory: the reference network with this dataset's channels in and regions
                        out (as train makes it; BraTS: 4 and 3)
  --steps <n>           speed, kernels: timed steps, passes or calls; the median is reported
                        (default 3)
  --case-sizes <sizes>  speed: XxYxZ sizes for sliding-window inference, comma-separated, or "none"
                        (default WxWxW,WxWx2W,WxWx4W for the window W, plus ${BRATS_DIMS.join("x")}
                        on a GPU backend: a whole case takes hours on the cpu backend)
  --window <n>          speed: sliding-window edge, a multiple of 8 (default the crop)
  --threads <n>         speed: the peer's torch threads (default the number of cores)
  --no-peer             speed: skip the PyTorch peer
  --backend <backend>   auto|tensorflow|webgpu|wasm|cpu (default cpu)

Examples:
  deno task bench memory --json
  deno task bench speed
  deno task bench speed --json --crop 16 --case-sizes 64x64x40 --no-peer
  deno task bench kernels --backend webgpu`,
  async run(args) {
    const { values, positionals } = parseFlags("bench", args, {
      json: { type: "boolean" },
      budget: { type: "string" },
      crop: { type: "string" },
      "search-crop": { type: "string" },
      data: { type: "string" },
      steps: { type: "string" },
      "case-sizes": { type: "string" },
      window: { type: "string" },
      threads: { type: "string" },
      "no-peer": { type: "boolean" },
      backend: { type: "string" },
    }, true);
    const [which, ...extra] = positionals;
    if (which !== "memory" && which !== "speed" && which !== "kernels") {
      throw new UsageError(
        `bench: expected a benchmark name (memory, speed or kernels), got ${which ?? "none"}`,
      );
    }
    if (extra.length > 0) throw new UsageError(`bench: unexpected arguments: ${extra.join(" ")}`);
    const own = OWN_FLAGS[which];
    const given = Object.keys(values).filter((k) =>
      (values as Record<string, unknown>)[k] !== undefined
    );
    const misplaced = given.find((k) => !COMMON_FLAGS.includes(k) && !own.includes(k));
    if (misplaced) {
      const owners = Object.entries(OWN_FLAGS).filter(([, flags]) => flags.includes(misplaced));
      throw new UsageError(
        `bench ${which}: --${misplaced} belongs to bench ${
          owners.map(([name]) => name).join(" and ")
        } (bench ${which} takes ${[...COMMON_FLAGS, ...own].map((k) => `--${k}`).join(", ")})`,
      );
    }
    const log = values.json ? () => {} : (m: string) => console.error(`bench: ${m}`);
    const choice = await selectBackend(backendFlag(values.backend), log);
    if (which === "kernels") {
      const gpu = choice.name === "webgpu" || /CUDA GPU/.test(choice.device);
      const crop = intFlag("crop", values.crop, gpu ? 64 : 32, 8);
      if (crop % 8 !== 0) throw new UsageError(`--crop must be a multiple of 8, got ${crop}`);
      const result = await benchKernels({
        crop,
        steps: intFlag("steps", values.steps, 3, 1),
        device: choice.device,
        log,
      });
      if (values.json) printJson(result);
      else console.log(`${formatKernels(result)}\n${JSON.stringify(result)}`);
      return;
    }
    if (which === "speed") {
      const gpu = choice.name === "webgpu" || /CUDA GPU/.test(choice.device);
      const crop = intFlag("crop", values.crop, gpu ? 128 : 32, 8);
      if (crop % 8 !== 0) throw new UsageError(`--crop must be a multiple of 8, got ${crop}`);
      const window = intFlag("window", values.window, crop, 8);
      if (window % 8 !== 0) throw new UsageError(`--window must be a multiple of 8, got ${window}`);
      const result = await benchSpeed({
        crop,
        steps: intFlag("steps", values.steps, 3, 1),
        caseSizes: caseSizesFlag(values["case-sizes"]),
        window,
        threads: intFlag("threads", values.threads, navigator.hardwareConcurrency ?? 1, 1),
        peer: !values["no-peer"],
        device: choice.device,
        log,
      });
      if (values.json) printJson(result);
      else console.log(`${formatSpeed(result)}\n${JSON.stringify(result)}`);
      return;
    }
    const crop = intFlag("crop", values.crop, 32, 8);
    if (crop % 8 !== 0) throw new UsageError(`--crop must be a multiple of 8, got ${crop}`);
    const io = values.data === undefined ? undefined : await datasetShape(values.data);
    printJson(
      await benchMemory({
        budget: numberFlag("budget", values.budget, 16, 0.001) * GiB,
        crop,
        searchCrop: intFlag("search-crop", values["search-crop"], 96, 8),
        log,
        ...(io ? { io: { inChannels: io.inChannels, outChannels: io.outChannels } } : {}),
      }),
    );
  },
};
