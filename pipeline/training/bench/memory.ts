/**
 * `bench memory`: the seed paper's experiment — what a fixed memory budget buys the reversible
 * network over its standard twin — measured with tf.profile on this machine's backend.
 * @module
 */
import * as tf from "../../../model/tf.ts";
import {
  compareGradMapsAsync,
  countParams,
  createUNet,
  type CropModel,
  cropModel,
  diceBceLoss,
  disposeUNet,
  type FieldModel,
  fieldModel,
  maxCropEdge,
  maxFieldValue,
  measureStepPeak,
  type NetworkConfig,
  predictPeak,
  randomTarget,
  REFERENCE_CONFIG,
  resolveConfig,
  reversibleGrads,
  reversibleLowerBound,
  standardGrads,
} from "../../../model/mod.ts";

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

const VARIANTS = { reversible: true, standard: false } as const;
type Variant = keyof typeof VARIANTS;

/** `f` of each variant, as `{ reversible, standard }`. */
const perVariant = <T>(f: (name: Variant) => T) => ({
  reversible: f("reversible"),
  standard: f("standard"),
});

/** The reversible backward's gradients against the standard one's, at 16³. */
async function gradCheck(ref: NetworkConfig) {
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
  return cmp;
}

/** Each variant's peak bytes fitted in crops, and in depth and width at small crops. */
async function fitModels(ref: NetworkConfig, crop: number, log: (msg: string) => void) {
  // The reversible step's fixed costs (weights, optimizer state, the small bottom levels) still
  // bend its curve below 32³, so it is fitted from 32³ up, where it is a straight line (measured
  // 2026-12-01: 997 bytes per voxel from 32 to 64 and from 64 to 96). The standard step is
  // straight from 16³ and costs 20× more per voxel, so it stays at small crops.
  const fitCrops = { reversible: [crop, 48, 64], standard: [16, 24, crop] };
  const fieldCrops = { reversible: [32, 48], standard: [16, 24] };
  const models = {} as Record<Variant, CropModel>;
  const depth = {} as Record<Variant, FieldModel>;
  const width = {} as Record<Variant, FieldModel>;
  for (const [name, reversible] of Object.entries(VARIANTS) as [Variant, boolean][]) {
    const cfg = resolveConfig({ ...ref, reversible });
    const crops = [...new Set(fitCrops[name])].sort((a, b) => a - b);
    const fc = fieldCrops[name];
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
  return { models, depth, width };
}

/** Runs the memory benchmark and returns its JSON object. */
export async function benchMemory(options: BenchMemoryOptions = {}) {
  const { budget = 16 * GiB, crop = 32, searchCrop = 96, log = () => {} } = options;
  const ref = resolveConfig({ ...REFERENCE_CONFIG, ...options.io });

  log("gradient check: reversible vs standard, reference network, 16^3");
  const cmp = await gradCheck(ref);
  const { models, depth, width } = await fitModels(ref, crop, log);
  // The fit checked where the searches use it: the reversible step measured at the search crop.
  log(`reversible: peak bytes at the search crop ${searchCrop} (checks the fit)`);
  const checkMeasured = await measureStepPeak(resolveConfig(ref), searchCrop);
  const checkPredicted = predictPeak(models.reversible, searchCrop);
  const peakAt = perVariant((n) => models[n].measured.find((m) => m.crop === crop)!.peakBytes);
  const maxCrop = perVariant((n) => maxCropEdge(models[n], budget, 16));
  // The depth and width searches differ only in the fitted model and the step of the field.
  const searchMax = (fms: typeof depth, step: number) =>
    perVariant((n) =>
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
    fits: perVariant((n) => ({
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
