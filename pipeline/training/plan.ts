/**
 * Memory planning of training: the largest crop whose training step fits a memory budget, from the
 * step's peak memory measured at two small crops on the active backend (model/memory.ts) — for
 * `plan`, which compares the reversible network with its standard twin, and for `train --crop
 * auto`.
 * @module
 */
import {
  type BackendName,
  cropModel,
  cropMultiple,
  fitCrops,
  inferenceFitEdges,
  inferenceModel,
  maxCropEdge,
  type NetworkConfig,
  predictPeak,
  resolveConfig,
  selectBackend,
} from "../../model/mod.ts";
import { datasetShape } from "../cases/mod.ts";
import { defaultSettings, networkConfig, SettingsError, type TrainSettings } from "./settings.ts";

const GIB = 2 ** 30;

/** Options of {@linkcode planCrop}. */
export interface PlanOptions {
  /** Memory budget, bytes. */
  budget: number;
  /** The network, reference values for fields not given. */
  config?: Partial<NetworkConfig>;
  /** Batch size. @default 1 */
  batch?: number;
  /**
   * Crops measured to fit peak memory against voxels.
   * @default {@linkcode fitCrops} of each variant: [4m, 6m] reversible, [2m, 3m] standard,
   *   m = max(8, crop multiple)
   */
  measureCrops?: number[];
}

/** Measures and plans on the active backend; returns the plan as a JSON-ready object. */
export async function planCrop(o: PlanOptions) {
  const base = resolveConfig(o.config ?? {});
  const batch = o.batch ?? 1;
  const m = cropMultiple(base);
  for (const c of o.measureCrops ?? []) {
    if (c % m !== 0) {
      throw new RangeError(`Measured crop ${c} is not a multiple of ${m} (${base.levels} levels)`);
    }
  }
  const variant = async (reversible: boolean) => {
    const config = resolveConfig({ ...base, reversible });
    const model = await cropModel(config, o.measureCrops ?? fitCrops(config), batch);
    const maxCrop = maxCropEdge(model, o.budget, m, batch);
    // The largest sliding window `segment --window auto` may use under the same budget.
    const inference = await inferenceModel(config, inferenceFitEdges(config));
    return {
      max_window: maxCropEdge(inference, o.budget, m),
      inference_bytes_per_voxel: Math.round(inference.fit.slope),
      max_crop: maxCrop,
      peak_bytes_at_max_crop: maxCrop > 0 ? Math.round(predictPeak(model, maxCrop, batch)) : null,
      bytes_per_voxel: Math.round(model.fit.slope),
      fixed_bytes: Math.round(model.fit.intercept),
      measured: model.measured,
    };
  };
  return {
    budget_bytes: o.budget,
    batch,
    crop_multiple: m,
    config: base,
    reversible: await variant(true),
    standard: await variant(false),
  };
}

/** What {@linkcode autoCrop} chose and from what. */
export interface AutoCrop {
  crop: number;
  /** Predicted peak bytes of the step at `crop`. */
  peakBytes: number;
  /** The fitted bytes per voxel. */
  bytesPerVoxel: number;
  /** The two crops measured. */
  measured: [number, number];
  /** The choice in words: `44 (predicted peak 0.05 GiB of 0.05 GiB; 584 bytes/voxel ...)`. */
  summary: string;
}

/**
 * The largest crop (a multiple of the network's crop multiple) whose training step fits `budget`
 * bytes: peak memory measured at two crops on `backend` (made active) and fitted linearly in
 * voxels, as `plan` does.
 * @throws {SettingsError} of `--budget` when not even the smallest crop fits
 */
export async function autoCrop(
  config: NetworkConfig,
  batch: number,
  budget: number,
  backend: BackendName,
): Promise<AutoCrop> {
  await selectBackend(backend);
  const m = cropMultiple(config);
  const crops = fitCrops(config);
  const model = await cropModel(config, crops, batch);
  const crop = maxCropEdge(model, budget, m, batch);
  if (crop < m) {
    throw new SettingsError(
      "--budget",
      `--budget ${(budget / GIB).toFixed(2)} GiB is too small: even a ${m}³ crop needs ${
        (predictPeak(model, m, batch) / GIB).toFixed(2)
      } GiB`,
    );
  }
  const peakBytes = predictPeak(model, crop, batch);
  const summary = `${crop} (predicted peak ${(peakBytes / GIB).toFixed(2)} GiB of ${
    (budget / GIB).toFixed(2)
  } GiB; ${Math.round(model.fit.slope)} bytes/voxel measured at ${crops[0]}³ and ${crops[1]}³)`;
  return { crop, peakBytes, bytesPerVoxel: model.fit.slope, measured: crops, summary };
}

/**
 * The network `plan --config <json> --data <uri>` names: the fields over the reference, checked
 * (limits included) before a backend loads, with the dataset's channels in and regions out, as
 * train makes it.
 * @throws {SettingsError} of `--config` for JSON that is no object of valid network fields, or a
 *   field disagreeing with the data
 * @throws {Error} naming `data` when it holds no cases
 */
export async function planNetworkConfig(
  configJson: string | undefined,
  data: string | undefined,
): Promise<Partial<NetworkConfig>> {
  let config: Partial<NetworkConfig> = {};
  if (configJson !== undefined) {
    try {
      config = JSON.parse(configJson);
    } catch (e) {
      throw new SettingsError("--config", `--config is not JSON: ${(e as Error).message}`);
    }
    if (typeof config !== "object" || config === null || Array.isArray(config)) {
      throw new SettingsError(
        "--config",
        `--config must be a JSON object of network fields, got ${configJson}`,
      );
    }
    networkConfig(config);
  }
  if (data !== undefined) {
    const io = await datasetShape(data);
    for (const k of ["inChannels", "outChannels"] as const) {
      if (config[k] !== undefined && config[k] !== io[k]) {
        throw new SettingsError(
          "--config",
          `--config ${k} ${config[k]} disagrees with --data ${data}, which has ${io[k]}`,
        );
      }
    }
    config = { ...config, inChannels: io.inChannels, outChannels: io.outChannels };
  }
  return config;
}

/** What {@linkcode autoCropSetting} made of `--crop auto`. */
export interface AutoCropSetting {
  /** The crop chosen, or undefined for a resumed run (which keeps the crop it started with). */
  crop?: number;
  /** What was done, for the log: the choice and its figures, or why nothing was chosen. */
  note: string;
}

/**
 * `train --crop auto --budget`: the largest crop whose measured training step fits `budget`
 * bytes on `backend` for the network and batch `given` (defaults for those not given); a resumed
 * run keeps its crop and nothing is measured.
 * @throws {SettingsError} of `--budget` when not even the smallest crop fits
 */
export async function autoCropSetting(
  given: Partial<TrainSettings>,
  budget: number,
  backend: BackendName,
  resume: boolean,
): Promise<AutoCropSetting> {
  if (resume) return { note: "--crop auto with --resume: the run keeps the crop it started with" };
  const d = defaultSettings("");
  const auto = await autoCrop(given.config ?? d.config, given.batch ?? d.batch, budget, backend);
  return { crop: auto.crop, note: `--crop auto: ${auto.summary}` };
}
