/**
 * `bench speed`: how fast the reference network trains and segments on this machine's backend,
 * with the same network in PyTorch (./peer_torch.py) as a peer run in the same invocation.
 *
 * Measured at batch 1: the median of several timed training steps (reversible backward, Dice+BCE,
 * Adam) and inference passes at a cubic crop after warm-up, and the wall time of sliding-window
 * inference (overlap 0.5, no mirroring) over whole synthetic cases at several sizes, so that the
 * cost per voxel can be seen to stay constant.
 * @module
 */
import * as tf from "../../../model/tf.ts";
import {
  countParams,
  createUNet,
  cropMultiple,
  disposeUNet,
  nativeKernelStatus,
  Optimizer,
  paramCount,
  predictLogits,
  randomTarget,
  REFERENCE_CONFIG,
  resolveConfig,
  trainStepAsync,
  type UNet,
  unetPredictor,
} from "../../../model/mod.ts";
import { slidingWindowProbabilities, windowShape, windowStarts } from "../../inference/mod.ts";
import { seededRandom } from "../../cases/mod.ts";
import { type LinearFit, linearFit, median, round, timeRuns } from "./_timing.ts";
import { type PeerArgs, runPeer } from "./peer.ts";

/** A BraTS case's grid, x, y, z. */
export const BRATS_DIMS: readonly [number, number, number] = Object.freeze([240, 240, 155]);

type Dims = [number, number, number];

/** Whether the backend computes on a GPU: webgpu, or tensorflow on a CUDA device. */
export function isGpuBackend(backend: string, device: string): boolean {
  return backend === "webgpu" || /CUDA GPU/.test(device);
}

/** Options of {@linkcode benchSpeed}. */
export interface BenchSpeedOptions {
  /** Cubic crop edge for the training and inference timings, a multiple of 8. @default 32 */
  crop?: number;
  /** Timed training steps and inference passes; the median is reported. @default 3 */
  steps?: number;
  /** Untimed steps and passes first (the first ones allocate the optimizer state, JIT, ...). @default 1 */
  warmup?: number;
  /**
   * Case sizes (x, y, z) for sliding-window inference. The figure `case_seconds` is the one at
   * 240×240×155 when it is in the list, else extrapolated from the others: seconds fitted
   * linearly in the voxels the windows cover (known exactly for any size) and evaluated at
   * 240×240×155's.
   * @default w×w×w, w×w×2w and w×w×4w for the window w (1, 3 and 7 windows at overlap 0.5: the
   *   cost doubles with the voxels), plus 240×240×155 on a GPU backend
   */
  caseSizes?: Dims[];
  /** Sliding-window edge. @default the crop */
  window?: number;
  /** Sliding-window overlap, a fraction of the window. @default 0.5 */
  overlap?: number;
  /** Run the PyTorch peer. @default true */
  peer?: boolean;
  /** Threads for the peer (torch.set_num_threads). @default the number of cores */
  threads?: number;
  /** The device in words, from selectBackend. @default the tfjs backend's name */
  device?: string;
  /** Progress messages. */
  log?: (msg: string) => void;
}

/** One sliding-window run over a whole case. */
export interface CaseTiming {
  dims: Dims;
  voxels: number;
  windows: number;
  /** Voxels the network ran on: windows × the window's voxels. */
  window_voxels: number;
  seconds: number;
  voxels_per_s: number;
}

/** Windows and the voxels they cover for a sliding window over `dims`, as pipeline/inference. */
function windowPlan(dims: Dims, window: number, overlap: number, m: number) {
  const shape = windowShape(dims, window, m);
  const windows = dims.map((d, a) => windowStarts(d, shape[a], overlap).length)
    .reduce((a, b) => a * b, 1);
  return { windows, windowVoxels: windows * shape[0] * shape[1] * shape[2] };
}

/** A seeded synthetic case: four channels of noise, [z, y, x, 4] channel-last. */
function syntheticImage(dims: Dims, seed: number): Float32Array {
  const rand = seededRandom(seed);
  const image = new Float32Array(dims[0] * dims[1] * dims[2] * 4);
  for (let i = 0; i < image.length; i++) image[i] = 2 * rand() - 1;
  return image;
}

/** What model/native has switched on (the C and OpenBLAS kernels, the typed-array loops). */
function nativeStatus(): Record<string, unknown> {
  const status = nativeKernelStatus();
  return {
    active: status.matMul || status.layers,
    REVUNET_NATIVE: Deno.env.get("REVUNET_NATIVE") ?? null,
    ...status,
  };
}

/** The timed training steps and inference passes at the crop, milliseconds each. */
async function timeSteps(net: UNet, crop: number, warmup: number, steps: number, log: Log) {
  const optimizer = new Optimizer({ kind: "adam" });
  const x = tf.randomNormal([1, crop, crop, crop, 4], 0, 1, "float32", 1) as tf.Tensor5D;
  const target = randomTarget([1, crop, crop, crop, 3], 2, 0.7);
  try {
    log(`train: ${warmup} warm-up + ${steps} timed steps at ${crop}^3`);
    // trainStepAsync reads the loss back, so each step is finished when it returns; the async
    // read because WebGPU's synchronous one needs a canvas that Deno lacks.
    const train = await timeRuns(
      async () => {
        await trainStepAsync(net, optimizer, x, target, 1e-4);
      },
      warmup,
      steps,
    );
    log(`infer: ${warmup} warm-up + ${steps} timed passes at ${crop}^3`);
    const infer = await timeRuns(
      async () => {
        const logits = predictLogits(net, x);
        await logits.data(); // a GPU backend is done only when the values are read back
        logits.dispose();
      },
      warmup,
      steps,
    );
    return { train, infer };
  } finally {
    tf.dispose([x, target]);
    optimizer.dispose();
  }
}

type Log = (msg: string) => void;

/** Sliding-window inference over one synthetic case of each size, timed. */
async function timeCases(
  net: UNet,
  caseSizes: Dims[],
  window: number,
  overlap: number,
  log: Log,
): Promise<CaseTiming[]> {
  const m = cropMultiple(net.config);
  const timings: CaseTiming[] = [];
  for (const dims of caseSizes) {
    const image = syntheticImage(dims, 3);
    const plan = windowPlan(dims, window, overlap, m);
    log(`case ${dims.join("x")}: sliding window ${window}^3, overlap ${overlap}`);
    const start = performance.now();
    const probs = await slidingWindowProbabilities(unetPredictor(net), image, dims, {
      window,
      overlap,
      mirror: false,
      onWindow: (done, total) => {
        if (done % 10 === 0) log(`case ${dims.join("x")}: window ${done}/${total}`);
      },
    });
    const seconds = (performance.now() - start) / 1000;
    const n = dims[0] * dims[1] * dims[2];
    if (probs.length !== n * net.config.outChannels) {
      throw new Error(
        `slidingWindowProbabilities returned ${probs.length} values for ${dims.join("x")}, ` +
          `expected ${n * net.config.outChannels}`,
      );
    }
    timings.push({
      dims: [...dims],
      voxels: n,
      windows: plan.windows,
      window_voxels: plan.windowVoxels,
      seconds: round(seconds),
      voxels_per_s: round(n / seconds, 1),
    });
    log(`case ${dims.join("x")}: ${seconds.toFixed(2)} s, ${plan.windows} windows`);
  }
  return timings;
}

/** A fit's figures as the JSON reports them. */
const fitJson = (fit: LinearFit) => ({
  seconds_per_megavoxel: round(fit.slope * 1e6, 4),
  fixed_seconds: round(fit.intercept, 4),
  max_rel_residual: round(fit.residual, 4),
});

/**
 * The whole-case figure: the 240×240×155 timing when measured, else seconds fitted linearly in
 * the windows' voxels (or scaled from the one size) and evaluated at 240×240×155's.
 */
function caseSummary(
  timings: CaseTiming[],
  window: number,
  overlap: number,
  m: number,
  skipped: string | undefined,
) {
  const full = timings.find((c) => c.dims.join() === BRATS_DIMS.join());
  const seconds = timings.map((c) => c.seconds);
  const fit = timings.length >= 2 ? linearFit(timings.map((c) => c.voxels), seconds) : null;
  const windowFit = timings.length >= 2
    ? linearFit(timings.map((c) => c.window_voxels), seconds)
    : null;
  const bratsPlan = windowPlan([...BRATS_DIMS], window, overlap, m);
  const caseSeconds = full
    ? full.seconds
    : windowFit
    ? round(windowFit.intercept + windowFit.slope * bratsPlan.windowVoxels)
    : timings.length === 1
    ? round(timings[0].seconds * bratsPlan.windowVoxels / timings[0].window_voxels)
    : null;
  const summary = {
    dims: [...BRATS_DIMS],
    window,
    overlap,
    mirror: false,
    windows: bratsPlan.windows,
    window_voxels: bratsPlan.windowVoxels,
    measured: full !== undefined,
    ...(full || caseSeconds === null ? {} : {
      extrapolated_from: "seconds fitted linearly in window_voxels over the sizes measured",
    }),
    ...(skipped ? { skipped } : {}),
    sizes: timings,
    ...(fit && windowFit
      ? { fit_voxels: fitJson(fit), fit_window_voxels: fitJson(windowFit) }
      : {}),
  };
  return { caseSeconds, summary };
}

/** The peer's result, or null with the reason there is none (also logged). */
async function peerRun(args: PeerArgs, log: Log) {
  const r = await runPeer(args, log);
  if (r.reason) log(`peer: none: ${r.reason}`);
  return r;
}

/** Runs the speed benchmark on the active backend and returns its JSON object. */
export async function benchSpeed(options: BenchSpeedOptions = {}) {
  const {
    crop = 32,
    steps = 3,
    warmup = 1,
    window = crop,
    overlap = 0.5,
    peer = true,
    threads = navigator.hardwareConcurrency ?? 1,
    device = tf.getBackend(),
    log = () => {},
  } = options;
  const config = resolveConfig(REFERENCE_CONFIG);
  const backend = tf.getBackend();
  const gpuBackend = isGpuBackend(backend, device);
  const caseSizes: Dims[] = options.caseSizes ?? [
    [window, window, window],
    [window, window, 2 * window],
    [window, window, 4 * window],
    ...(gpuBackend ? [[...BRATS_DIMS] as Dims] : []),
  ];
  const voxels = crop ** 3;
  const tensorsBefore = tf.memory().numTensors;

  const net = createUNet(config, { seed: 0 });
  let times: { train: number[]; infer: number[] };
  let caseTimings: CaseTiming[] = [];
  try {
    times = await timeSteps(net, crop, warmup, steps, log);
    if (caseSizes.length > 0) caseTimings = await timeCases(net, caseSizes, window, overlap, log);
  } finally {
    disposeUNet(net);
  }
  const leaked = tf.memory().numTensors - tensorsBefore;
  if (leaked !== 0) log(`warning: ${leaked} tensors left alive`);

  const trainMs = median(times.train);
  const inferMs = median(times.infer);
  const trainVps = voxels / (trainMs / 1000);
  const inferVps = voxels / (inferMs / 1000);
  caseTimings = caseTimings.sort((a, b) => a.voxels - b.voxels);
  const skipped = caseSizes.length === 0 ? "no case sizes asked for" : undefined;
  const cases = caseSummary(caseTimings, window, overlap, cropMultiple(config), skipped);

  // A peer on the GPU against our cpu backend (or the reverse) would compare devices, not code.
  const { peer: peerResult, reason: peerReason } = peer
    ? await peerRun({ crop, steps, warmup, threads, device: gpuBackend ? "auto" : "cpu" }, log)
    : { peer: null, reason: "not asked for (--no-peer)" };
  const ratio = (ours: number, theirs: unknown) =>
    typeof theirs === "number" && theirs > 0 ? round(ours / theirs, 4) : null;

  return {
    backend,
    device,
    param_count: paramCountOf(config),
    crop,
    batch: 1,
    steps,
    warmup,
    train_step_ms: round(trainMs),
    train_step_ms_all: times.train.map((t) => round(t)),
    train_voxels_per_s: round(trainVps, 1),
    infer_ms: round(inferMs),
    infer_ms_all: times.infer.map((t) => round(t)),
    infer_voxels_per_s: round(inferVps, 1),
    case_seconds: cases.caseSeconds,
    case: cases.summary,
    native: nativeStatus(),
    versions: { deno: Deno.version.deno, tfjs: tf.version_core },
    peer: peerResult,
    ...(peerResult ? {} : { peer_reason: peerReason }),
    ratio: peerResult
      ? {
        train: ratio(trainVps, peerResult.train_voxels_per_s),
        infer: ratio(inferVps, peerResult.infer_voxels_per_s),
      }
      : null,
  };
}

/** What {@linkcode benchSpeed} returns. */
export type SpeedResult = Awaited<ReturnType<typeof benchSpeed>>;

/** The parameter count, from the configuration, cross-checked against a built network. */
function paramCountOf(config: ReturnType<typeof resolveConfig>): number {
  const n = countParams(config);
  const net = createUNet(config, { variables: false });
  try {
    const built = paramCount(net);
    if (built !== n) {
      throw new Error(`The built network has ${built} parameters, its configuration says ${n}`);
    }
  } finally {
    disposeUNet(net);
  }
  return n;
}

/** One human-readable summary of a {@linkcode benchSpeed} result. */
export function formatSpeed(r: SpeedResult): string {
  const num = (x: number | null | undefined, d = 0) =>
    x == null ? "-" : x.toLocaleString("en-US", { maximumFractionDigits: d });
  const lines = [
    `speed: reference network (${num(r.param_count)} parameters), batch 1, crop ${r.crop}^3`,
    `  backend ${r.backend} on ${r.device}`,
    `  train step  ${num(r.train_step_ms, 1)} ms  (${num(r.train_voxels_per_s)} voxels/s)`,
    `  inference   ${num(r.infer_ms, 1)} ms  (${num(r.infer_voxels_per_s)} voxels/s)`,
  ];
  for (const c of r.case.sizes) {
    lines.push(
      `  case ${c.dims.join("x").padEnd(11)} ${
        num(c.seconds, 2)
      } s  (${c.windows} windows of ${r.case.window}^3, ${num(c.voxels_per_s)} voxels/s)`,
    );
  }
  if (r.case.skipped) lines.push(`  cases skipped: ${r.case.skipped}`);
  lines.push(
    `  case_seconds (240x240x155, ${r.case.windows} windows, overlap ${r.case.overlap}, no TTA): ${
      num(r.case_seconds, 2)
    }${r.case.measured ? "" : " (extrapolated)"}`,
  );
  if (r.peer) {
    const p = r.peer as Record<string, number | string>;
    lines.push(
      `  peer ${p.device}: train ${num(p.train_voxels_per_s as number)} voxels/s, ` +
        `infer ${num(p.infer_voxels_per_s as number)} voxels/s`,
      `  ours/peer: train ${r.ratio?.train}, infer ${r.ratio?.infer}`,
    );
  } else {
    lines.push(`  peer: none (${r.peer_reason})`);
  }
  return lines.join("\n");
}
