/**
 * Training-step memory: measured peaks, the analytic lower bound of the reversible step, and the
 * search for the largest crop, depth or width that fits a budget.
 *
 * Peak memory of a training step is linear in the number of voxels for a fixed network (every
 * activation is a fixed number of channels per voxel; weights and optimizer state are constant), so
 * two or three measured small crops determine it at any crop. Measurements use tf.profile's
 * peakBytes: the most bytes held by live tensors after any kernel, weights and optimizer state
 * included, which is deterministic and backend-independent.
 * @module
 */
import * as tf from "./tf.ts";
import {
  countParams,
  cropMultiple,
  levelChannels,
  type NetworkConfig,
  resolveConfig,
} from "./config.ts";
import { Optimizer } from "./optimizer.ts";
import { trainStepAsync } from "./train_step.ts";
import { randomTarget } from "./loss.ts";
import { createUNet, disposeUNet, predictLogits } from "./unet.ts";

/**
 * Peak bytes of one full training step (forward, loss, backward, Adam update) at batch `batch` on
 * a cubic crop, in steady state (the optimizer's state already exists, as after the first step).
 */
export async function measureStepPeak(
  config: NetworkConfig,
  crop: number,
  batch = 1,
): Promise<number> {
  const net = createUNet(config, { seed: 1 });
  const opt = new Optimizer({ kind: "adam" });
  const x = tf.randomNormal(
    [batch, crop, crop, crop, config.inChannels],
    0,
    1,
    "float32",
    2,
  ) as tf.Tensor5D;
  const target = randomTarget([batch, crop, crop, crop, config.outChannels], 3, 0.8);
  try {
    // Asynchronous reads, which every backend has (WebGPU's synchronous one needs a canvas).
    await trainStepAsync(net, opt, x, target, 1e-4);
    const info = await tf.profile(async () => {
      await trainStepAsync(net, opt, x, target, 1e-4);
    });
    // tf.profile returns one shared object: copy the number before profiling again.
    return Number(info.peakBytes);
  } finally {
    opt.dispose();
    tf.dispose([x, target]);
    disposeUNet(net);
  }
}

/** A straight line y = intercept + slope·x fitted by least squares, and its worst residual. */
export interface LinearFit {
  intercept: number;
  slope: number;
  maxRelResidual: number;
}

/** Least-squares line through (xs, ys). */
export function fitLine(xs: number[], ys: number[]): LinearFit {
  const n = xs.length;
  if (n < 2 || ys.length !== n) {
    throw new RangeError(`fitLine needs >= 2 matching points, found ${n}`);
  }
  const mx = xs.reduce((a, b) => a + b) / n;
  const my = ys.reduce((a, b) => a + b) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  const slope = sxy / sxx;
  const intercept = my - slope * mx;
  const maxRelResidual = Math.max(
    ...xs.map((x, i) => Math.abs(intercept + slope * x - ys[i]) / ys[i]),
  );
  return { intercept, slope, maxRelResidual };
}

/** Peak memory as a function of crop edge for one configuration, from measured crops. */
export interface CropModel {
  config: NetworkConfig;
  batch: number;
  /** Bytes = intercept + slope · voxels (voxels = batch · edge³). */
  fit: LinearFit;
  measured: { crop: number; peakBytes: number }[];
}

/** Measures `crops` and fits peak bytes against voxels. */
export async function cropModel(
  config: NetworkConfig,
  crops: number[],
  batch = 1,
): Promise<CropModel> {
  const measured: { crop: number; peakBytes: number }[] = [];
  for (const crop of crops) {
    measured.push({ crop, peakBytes: await measureStepPeak(config, crop, batch) });
  }
  const fit = fitLine(measured.map((m) => batch * m.crop ** 3), measured.map((m) => m.peakBytes));
  return { config, batch, fit, measured };
}

/**
 * The two crops at which to measure a configuration's training step to fit its peak memory:
 * where the peak is a straight line in voxels. The reversible step's fixed costs (weights,
 * optimizer state, the small bottom levels) bend its curve at small crops — on the reference
 * network 877 bytes per voxel between 16³ and 24³, then 997 from 32³ to 96³ — so it is measured
 * at 4 and 6 times the crop step, where a fit from 16³ and 24³ would promise 12% too much room;
 * the standard step is straight from 16³ and costs 20 times more, so it is measured at 2 and 3.
 */
export function fitCrops(config: NetworkConfig): [number, number] {
  const step = Math.max(8, cropMultiple(config));
  return config.reversible ? [4 * step, 6 * step] : [2 * step, 3 * step];
}

/** Predicted peak bytes at a crop edge. */
export function predictPeak(model: CropModel, crop: number, batch = model.batch): number {
  return model.fit.intercept + model.fit.slope * batch * crop ** 3;
}

/** The largest edge, a multiple of `multiple`, whose predicted peak fits `budget` bytes (0 if none). */
export function maxCropEdge(
  model: CropModel,
  budget: number,
  multiple = 16,
  batch = model.batch,
): number {
  if (model.fit.slope <= 0) {
    throw new RangeError("maxCropEdge: the fitted per-voxel slope is not positive");
  }
  const voxels = (budget - model.fit.intercept) / (model.fit.slope * batch);
  if (voxels <= 0) return 0;
  let edge = Math.floor(Math.cbrt(voxels) / multiple) * multiple;
  while (edge > 0 && predictPeak(model, edge, batch) > budget) edge -= multiple;
  return edge;
}

/**
 * The analytic minimum of the reversible training step, in bytes (float32), at batch `batch`:
 * - weights, their gradients and Adam's two moments: 4 copies of every parameter;
 * - the input and the target;
 * - what the reversible backward pass must keep: each block sequence's output (the encoder outputs
 *   double as skips; the decoder outputs feed the transposed convs and the head);
 * - the logits and their gradient;
 * - one block's working set at the widest level, inside the backward pass of its second inverted
 *   bottleneck F (on c = C/2 channels): the halves still needed — y1 (to recompute x1), dy2 (to
 *   add F's input gradient to), F's input x2 and its output gradient (c each: 2C in all; y2 and
 *   dy1 are gone by then) — and the two expanded activations (e = t·c each) that F's backward
 *   pass needs, with their gradient (e).
 */
export function reversibleLowerBound(config: NetworkConfig, crop: number, batch = 1): number {
  const v = batch * crop ** 3;
  const vol = (l: number) => v / 8 ** l;
  let floats = 4 * countParams(config);
  floats += v * (config.inChannels + config.outChannels); // input, target
  for (let l = 0; l < config.levels; l++) {
    floats += levelChannels(config, l) * vol(l); // encoder output
    if (l < config.levels - 1) floats += levelChannels(config, l) * vol(l); // decoder output
  }
  floats += 2 * config.outChannels * v; // logits and their gradient
  let block = 0;
  for (let l = 0; l < config.levels; l++) {
    const c = levelChannels(config, l);
    const e = (c / 2) * config.expansion;
    block = Math.max(block, (2 * c + 3 * e) * vol(l));
  }
  return 4 * (floats + block);
}

/** Parameters of a configuration with another depth or width (for the searches below). */
export function withField(
  config: NetworkConfig,
  field: "blocksPerLevel" | "baseChannels",
  value: number,
) {
  return resolveConfig({ ...config, [field]: value });
}

/**
 * Peak bytes as a function of a structural field (blocks per level or base channels) at a fixed
 * crop: per-voxel bytes are linear in the field (activations scale with depth or width), and the
 * constant part is 16 bytes per parameter (weights, gradients, two Adam moments) plus the
 * measured remainder.
 */
export interface FieldModel {
  field: "blocksPerLevel" | "baseChannels";
  /** Per-voxel bytes = intercept + slope · value. */
  perVoxel: LinearFit;
  /** Bytes not proportional to voxels beyond 16·params, averaged over the measurements. */
  fixedExtra: number;
  models: CropModel[];
}

/** Fits a {@linkcode FieldModel} from crop models measured at two or more values of the field. */
export function fieldModel(field: FieldModel["field"], models: CropModel[]): FieldModel {
  const values = models.map((m) => m.config[field]);
  const perVoxel = fitLine(values, models.map((m) => m.fit.slope));
  const fixedExtra = models.reduce((a, m) => a + m.fit.intercept - 16 * countParams(m.config), 0) /
    models.length;
  return { field, perVoxel, fixedExtra, models };
}

/** Predicted peak for `value` of the field at a crop edge. */
export function predictFieldPeak(
  fm: FieldModel,
  base: NetworkConfig,
  value: number,
  crop: number,
  batch = 1,
) {
  const cfg = withField(base, fm.field, value);
  return 16 * countParams(cfg) + fm.fixedExtra +
    (fm.perVoxel.intercept + fm.perVoxel.slope * value) * batch * crop ** 3;
}

/** The largest value of the field (in steps of `step`, up to `limit`) that fits the budget at `crop`. */
export function maxFieldValue(
  fm: FieldModel,
  base: NetworkConfig,
  budget: number,
  crop: number,
  step: number,
  limit: number,
): number {
  let best = 0;
  for (let v = step; v <= limit; v += step) {
    let fits: boolean;
    try {
      fits = predictFieldPeak(fm, base, v, crop) <= budget;
    } catch {
      continue; // a width the GroupNorm groups cannot divide
    }
    if (fits) best = v;
    else if (v > best + 8 * step) break;
  }
  return best;
}

/**
 * Peak bytes of one inference window: the sigmoid of the logits of a cubic window, at batch 1
 * (forward only: no gradients, no optimizer state; each block's intermediates are freed as it
 * ends, so the reversible and standard networks differ little here).
 */
export async function measureInferencePeak(config: NetworkConfig, edge: number): Promise<number> {
  const net = createUNet(config, { seed: 1 });
  const x = tf.randomNormal([1, edge, edge, edge, config.inChannels], 0, 1, "float32", 2);
  try {
    const info = await tf.profile(async () => {
      const p = tf.tidy(() => tf.sigmoid(predictLogits(net, x as tf.Tensor5D)));
      await p.data();
      p.dispose();
    });
    return Number(info.peakBytes);
  } finally {
    x.dispose();
    disposeUNet(net);
  }
}

/** Inference peak memory against window voxels, from windows of `edges` measured. */
export async function inferenceModel(config: NetworkConfig, edges: number[]): Promise<CropModel> {
  const measured: { crop: number; peakBytes: number }[] = [];
  for (const crop of edges) {
    measured.push({ crop, peakBytes: await measureInferencePeak(config, crop) });
  }
  const fit = fitLine(measured.map((m) => m.crop ** 3), measured.map((m) => m.peakBytes));
  return { config, batch: 1, fit, measured };
}

/** The windows at which to measure inference memory: 2 and 3 crop steps (small and quick). */
export function inferenceFitEdges(config: NetworkConfig): [number, number] {
  const step = Math.max(8, cropMultiple(config));
  return [2 * step, 3 * step];
}

/**
 * The `--window auto` rule: the window the model was validated with (else its training crop,
 * else 128), the size whose predictions training measured — GroupNorm's statistics are taken over
 * the window, so another size changes what the network sees —, no larger than the largest window
 * that fits the memory budget (`maxEdge`, from {@linkcode inferenceModel}), a multiple of
 * `multiple` (the sliding window shrinks it further on axes where the volume is smaller).
 * @throws {RangeError} when not even one multiple fits the budget
 */
export function autoWindow(o: {
  preferred: number;
  maxEdge: number;
  multiple: number;
}): number {
  const { preferred, maxEdge, multiple: m } = o;
  if (maxEdge < m) {
    throw new RangeError(
      `window auto: not even a ${m}³ window fits the memory budget (largest: ${maxEdge})`,
    );
  }
  return Math.max(m, Math.min(Math.floor(preferred / m) * m, Math.floor(maxEdge / m) * m));
}
