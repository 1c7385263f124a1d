/**
 * `bench speed`: how fast the reference network trains and segments on this machine's backend,
 * with the same network in PyTorch (tasks/peer_torch.py) as a peer run in the same invocation.
 *
 * Measured at batch 1: the median of several timed training steps (reversible backward, Dice+BCE,
 * Adam) and inference passes at a cubic crop after warm-up, and the wall time of sliding-window
 * inference (overlap 0.5, no mirroring) over whole synthetic cases at several sizes, so that the
 * cost per voxel can be seen to stay constant.
 * @module
 */
import * as tf from "../model/tf.ts";
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
} from "../model/mod.ts";
import {
  slidingWindowProbabilities,
  windowShape,
  windowStarts,
} from "../pipeline/inference/mod.ts";
import { seededRandom } from "../pipeline/cases/mod.ts";
import { envVar } from "../model/env.ts";
import { unetPredictor } from "../model/mod.ts";

/** A BraTS case's grid, x, y, z. */
export const BRATS_DIMS: readonly [number, number, number] = Object.freeze([240, 240, 155]);

/** The Python that has Debian's python3-torch (the PATH python3 may be a pyenv without it). */
export const PEER_PYTHON = "/usr/bin/python3";

/** The environment variable naming another Python for the peer (e.g. a venv with CUDA torch). */
export const PEER_PYTHON_ENV = "REVUNET_PEER_PYTHON";

/**
 * The Python the peer runs with: `$REVUNET_PEER_PYTHON` when set and not empty, else
 * {@linkcode PEER_PYTHON}.
 */
export function peerPython(): string {
  return envVar(PEER_PYTHON_ENV)?.trim() || PEER_PYTHON;
}

const PEER_SCRIPT = new URL("./peer_torch.py", import.meta.url);

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
  caseSizes?: [number, number, number][];
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
  dims: [number, number, number];
  voxels: number;
  windows: number;
  /** Voxels the network ran on: windows × the window's voxels. */
  window_voxels: number;
  seconds: number;
  voxels_per_s: number;
}

/** The median of `xs` (the mean of the middle two for an even count). */
export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
/** `x` to `digits` decimals. */
export const round = (x: number, digits = 3) => Number(x.toFixed(digits));

/** Times `fn` `warmup + steps` times and returns the timed milliseconds. */
export async function timeRuns(
  fn: () => Promise<void> | void,
  warmup: number,
  steps: number,
): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn();
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const start = performance.now();
    await fn();
    times.push(performance.now() - start);
  }
  return times;
}

/** Windows and the voxels they cover for a sliding window over `dims`, as pipeline/inference.ts. */
function windowPlan(dims: [number, number, number], window: number, overlap: number, m: number) {
  const shape = windowShape(dims, window, m);
  const windows = dims.map((d, a) => windowStarts(d, shape[a], overlap).length)
    .reduce((a, b) => a * b, 1);
  return { windows, windowVoxels: windows * shape[0] * shape[1] * shape[2] };
}

/** A seeded synthetic case: four channels of noise, [z, y, x, 4] channel-last. */
function syntheticImage(dims: [number, number, number], seed: number): Float32Array {
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

/** The peer's result, or null with the reason there is none. */
export async function runPeer(
  args: { crop: number; steps: number; warmup: number; threads: number; device: string },
  log: (msg: string) => void = () => {},
): Promise<{ peer: Record<string, unknown> | null; reason?: string }> {
  const script = PEER_SCRIPT.protocol === "file:" ? decodeURIComponent(PEER_SCRIPT.pathname) : "";
  const argv = [
    script,
    "--crop",
    String(args.crop),
    "--steps",
    String(args.steps),
    "--warmup",
    String(args.warmup),
    "--threads",
    String(args.threads),
    "--device",
    args.device,
  ];
  const python = peerPython();
  log(`peer: ${python} ${argv.join(" ")}`);
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(python, {
      args: argv,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    return { peer: null, reason: `cannot run ${python}: ${(e as Error).message}` };
  }
  const dec = new TextDecoder();
  const lines = dec.decode(out.stdout).split("\n").filter((l) => l.trim() !== "");
  let parsed: Record<string, unknown> | null = null;
  try {
    parsed = lines.length > 0 ? JSON.parse(lines[lines.length - 1]) : null;
  } catch {
    parsed = null;
  }
  if (parsed && typeof parsed.error === "string") {
    return { peer: null, reason: `${parsed.error} (install it with \`deno task setup --peer\`)` };
  }
  if (!out.success || !parsed) {
    const err = dec.decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    return { peer: null, reason: `tasks/peer_torch.py failed (exit ${out.code}): ${err}` };
  }
  return { peer: parsed };
}

/**
 * Least squares y = a + b·x, with the fit's worst relative residual (how far from linear).
 */
function linearFit(xs: number[], ys: number[]) {
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  const slope = sxx > 0 ? sxy / sxx : my / mx;
  const intercept = sxx > 0 ? my - slope * mx : 0;
  const residual = Math.max(...xs.map((x, i) => Math.abs(intercept + slope * x - ys[i]) / ys[i]));
  return { slope, intercept, residual };
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
  const gpuBackend = backend === "webgpu" || /CUDA GPU/.test(device);
  const caseSizes: [number, number, number][] = options.caseSizes ?? [
    [window, window, window],
    [window, window, 2 * window],
    [window, window, 4 * window],
    ...(gpuBackend ? [[...BRATS_DIMS] as [number, number, number]] : []),
  ];
  const m = cropMultiple(config);
  const voxels = crop ** 3;
  const tensorsBefore = tf.memory().numTensors;

  const net = createUNet(config, { seed: 0 });
  const optimizer = new Optimizer({ kind: "adam" });
  const x = tf.randomNormal([1, crop, crop, crop, 4], 0, 1, "float32", 1) as tf.Tensor5D;
  const target = randomTarget([1, crop, crop, crop, 3], 2, 0.7);
  let trainTimes: number[];
  let inferTimes: number[];
  let caseTimings: CaseTiming[] = [];
  let caseNote: string | undefined;
  try {
    log(`train: ${warmup} warm-up + ${steps} timed steps at ${crop}^3`);
    // trainStepAsync reads the loss back, so each step is finished when it returns; the async
    // read because WebGPU's synchronous one needs a canvas that Deno lacks.
    trainTimes = await timeRuns(
      async () => {
        await trainStepAsync(net, optimizer, x, target, 1e-4);
      },
      warmup,
      steps,
    );
    log(`infer: ${warmup} warm-up + ${steps} timed passes at ${crop}^3`);
    inferTimes = await timeRuns(
      async () => {
        const logits = predictLogits(net, x);
        await logits.data(); // a GPU backend is done only when the values are read back
        logits.dispose();
      },
      warmup,
      steps,
    );

    if (caseSizes.length === 0) {
      caseNote = "no case sizes asked for";
    } else {
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
        if (probs.length !== n * config.outChannels) {
          throw new Error(
            `slidingWindowProbabilities returned ${probs.length} values for ${dims.join("x")}, ` +
              `expected ${n * config.outChannels}`,
          );
        }
        caseTimings.push({
          dims: [...dims],
          voxels: n,
          windows: plan.windows,
          window_voxels: plan.windowVoxels,
          seconds: round(seconds),
          voxels_per_s: round(n / seconds, 1),
        });
        log(`case ${dims.join("x")}: ${seconds.toFixed(2)} s, ${plan.windows} windows`);
      }
    }
  } finally {
    tf.dispose([x, target]);
    optimizer.dispose();
    disposeUNet(net);
  }
  const leaked = tf.memory().numTensors - tensorsBefore;
  if (leaked !== 0) log(`warning: ${leaked} tensors left alive`);

  const trainMs = median(trainTimes);
  const inferMs = median(inferTimes);
  const trainVps = voxels / (trainMs / 1000);
  const inferVps = voxels / (inferMs / 1000);
  caseTimings = caseTimings.sort((a, b) => a.voxels - b.voxels);
  const full = caseTimings.find((c) => c.dims.join() === BRATS_DIMS.join());
  const seconds = caseTimings.map((c) => c.seconds);
  const fit = caseTimings.length >= 2 ? linearFit(caseTimings.map((c) => c.voxels), seconds) : null;
  const windowFit = caseTimings.length >= 2
    ? linearFit(caseTimings.map((c) => c.window_voxels), seconds)
    : null;
  const bratsPlan = windowPlan([...BRATS_DIMS], window, overlap, m);
  const caseSeconds = full
    ? full.seconds
    : windowFit
    ? round(windowFit.intercept + windowFit.slope * bratsPlan.windowVoxels)
    : caseTimings.length === 1
    ? round(caseTimings[0].seconds * bratsPlan.windowVoxels / caseTimings[0].window_voxels)
    : null;

  let peerResult: Record<string, unknown> | null = null;
  let peerReason: string | undefined;
  if (peer) {
    // A peer on the GPU against our cpu backend (or the reverse) would compare devices, not code.
    const r = await runPeer({
      crop,
      steps,
      warmup,
      threads,
      device: gpuBackend ? "auto" : "cpu",
    }, log);
    peerResult = r.peer;
    peerReason = r.reason;
    if (peerReason) log(`peer: none: ${peerReason}`);
  } else {
    peerReason = "not asked for (--no-peer)";
  }
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
    train_step_ms_all: trainTimes.map((t) => round(t)),
    train_voxels_per_s: round(trainVps, 1),
    infer_ms: round(inferMs),
    infer_ms_all: inferTimes.map((t) => round(t)),
    infer_voxels_per_s: round(inferVps, 1),
    case_seconds: caseSeconds,
    case: {
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
      ...(caseNote ? { skipped: caseNote } : {}),
      sizes: caseTimings,
      ...(fit && windowFit
        ? {
          fit_voxels: {
            seconds_per_megavoxel: round(fit.slope * 1e6, 4),
            fixed_seconds: round(fit.intercept, 4),
            max_rel_residual: round(fit.residual, 4),
          },
          fit_window_voxels: {
            seconds_per_megavoxel: round(windowFit.slope * 1e6, 4),
            fixed_seconds: round(windowFit.intercept, 4),
            max_rel_residual: round(windowFit.residual, 4),
          },
        }
        : {}),
    },
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
export function formatSpeed(r: Awaited<ReturnType<typeof benchSpeed>>): string {
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
