/**
 * What a training run is: its settings, their defaults, the limits they are checked against, and
 * which of them a resumed run may change. The settings are stored in every checkpoint
 * (`state.json`), so a run is continued, or its model read, with the settings it started with.
 *
 * Every check of a setting is here and throws {@linkcode SettingsError}, which names the
 * command-line flag of the setting: the command line turns it into its usage error, with the same
 * message; a library caller reads `flag`.
 * @module
 */
import { cropMultiple, type NetworkConfig, resolveConfig } from "../../model/mod.ts";

/** What a run is: everything that decides its result, stored in every checkpoint. */
export interface TrainSettings {
  /** The cases: a folder or `s3://` prefix (any naming convention `findCases` reads). */
  data: string;
  /** Epochs. @default 10 */
  epochs: number;
  /** Training steps per epoch. @default 25 */
  stepsPerEpoch: number;
  /** Edge of the cubic training crop, in voxels: a multiple of the network's crop multiple. @default 32 */
  crop: number;
  /** Crops per step. @default 1 */
  batch: number;
  /** Initial learning rate, decayed as (1 - step/total)^0.9. @default 3e-3 */
  lr: number;
  /** Adam, or SGD with Nesterov momentum 0.99. @default "adam" */
  optimizer: "adam" | "sgd";
  /** Decoupled (AdamW) for adam, L2 for sgd. @default 0 */
  weightDecay: number;
  /** Validation cases split off the labelled cases (seeded). @default 1 */
  valCases: number;
  /** Validate every this many epochs (and after the last). @default 1 */
  valEvery: number;
  /** Sliding-window edge for validation, a multiple of the crop multiple. @default the crop (32) */
  valWindow: number;
  /**
   * The network. Its `inChannels` and `outChannels` are set from the dataset when a run starts.
   * @default the reference network, `resolveConfig({})`
   */
  config: NetworkConfig;
  /** Seed of the split, the weights, the crops and the augmentation. @default 0 */
  seed: number;
  /** Data augmentation (flips, rotations, intensity). @default true */
  augment: boolean;
  /** Fraction of crops forced to hold tumour. @default 1/3 */
  foregroundFraction: number;
}

/**
 * The default settings, documented field by field on {@linkcode TrainSettings}: they work on the
 * embedded default (a few small synthetic cases).
 */
export function defaultSettings(data: string): TrainSettings {
  return {
    data,
    epochs: 10,
    stepsPerEpoch: 25,
    crop: 32,
    batch: 1,
    lr: 3e-3,
    optimizer: "adam",
    weightDecay: 0,
    valCases: 1,
    valEvery: 1,
    valWindow: 32,
    config: resolveConfig({}),
    seed: 0,
    augment: true,
    foregroundFraction: 1 / 3,
  };
}

/**
 * A setting that cannot be used: out of range, not a multiple of the network's crop multiple, in
 * conflict with the run being resumed, or with the data. `flag` is the setting's command-line
 * flag (`--crop`); the message names it too.
 */
export class SettingsError extends Error {
  override name = "SettingsError";
  constructor(readonly flag: string, message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/** The command-line flag of each setting, for messages. */
export const SETTING_FLAGS: Readonly<Record<keyof TrainSettings, string>> = {
  data: "--data",
  epochs: "--epochs",
  stepsPerEpoch: "--steps-per-epoch",
  crop: "--crop",
  batch: "--batch",
  lr: "--lr",
  optimizer: "--optimizer",
  weightDecay: "--weight-decay",
  valCases: "--val-cases",
  valEvery: "--val-every",
  valWindow: "--val-window",
  config: "--config",
  seed: "--seed",
  augment: "--no-augment",
  foregroundFraction: "foregroundFraction",
};

/** The numeric settings. */
export type NumericSetting = {
  [K in keyof TrainSettings]: TrainSettings[K] extends number ? K : never;
}[keyof TrainSettings];

/** The range of a numeric setting. */
export interface SettingLimit {
  integer: boolean;
  min: number;
  /** The largest value, when there is one. */
  max?: number;
  /**
   * The command line's bound on the flag, a guard against typos; not checked by
   * {@linkcode checkSettings}, since `--crop auto` may pick a larger crop on a large device.
   */
  flagMax?: number;
}

/** The range of each numeric setting. */
export const SETTING_LIMITS: Readonly<Record<NumericSetting, SettingLimit>> = {
  epochs: { integer: true, min: 1 },
  stepsPerEpoch: { integer: true, min: 1 },
  crop: { integer: true, min: 8, flagMax: 512 },
  batch: { integer: true, min: 1, flagMax: 256 },
  lr: { integer: false, min: 0 },
  weightDecay: { integer: false, min: 0 },
  valCases: { integer: true, min: 0 },
  valEvery: { integer: true, min: 1 },
  valWindow: { integer: true, min: 8, flagMax: 512 },
  seed: { integer: true, min: 0 },
  foregroundFraction: { integer: false, min: 0, max: 1 },
};

/** Checks a crop or window edge against the network's crop multiple. */
function checkMultiple(key: "crop" | "valWindow", value: number, config: NetworkConfig): void {
  const m = cropMultiple(config);
  if (value % m === 0) return;
  const flag = SETTING_FLAGS[key];
  throw new SettingsError(
    flag,
    `${flag} ${value} must be a multiple of ${m}${
      key === "crop" ? ` (${config.levels} levels)` : ""
    }`,
  );
}

/**
 * Checks the settings of a new run: each number in its range ({@linkcode SETTING_LIMITS}, the
 * fraction at most 1), the optimizer's name, and the crop and validation window multiples of the
 * network's crop multiple (the command line checks the same before it loads a backend).
 * @throws {SettingsError} naming the first setting that cannot be used
 */
export function checkSettings(s: TrainSettings): void {
  for (const [key, limit] of Object.entries(SETTING_LIMITS) as [NumericSetting, SettingLimit][]) {
    const v = s[key];
    const max = limit.max ?? Infinity;
    if (
      typeof v !== "number" || !Number.isFinite(v) || (limit.integer && !Number.isInteger(v)) ||
      v < limit.min || v > max
    ) {
      const flag = SETTING_FLAGS[key];
      throw new SettingsError(
        flag,
        `${flag} must be ${limit.integer ? "an integer" : "a number"} >= ${limit.min}${
          max < Infinity ? ` <= ${max}` : ""
        }, got ${typeof v === "number" ? v : JSON.stringify(v)}`,
      );
    }
  }
  if (s.optimizer !== "adam" && s.optimizer !== "sgd") {
    throw new SettingsError("--optimizer", `--optimizer must be adam or sgd, got "${s.optimizer}"`);
  }
  checkMultiple("crop", s.crop, s.config);
  checkMultiple("valWindow", s.valWindow, s.config);
}

/**
 * The settings of a new run: the defaults ({@linkcode defaultSettings}) under `given`, the
 * validation window the crop unless given, checked ({@linkcode checkSettings}).
 * @throws {SettingsError} naming the first setting that cannot be used
 * @example
 * ```ts
 * import { assertEquals, assertThrows } from "@std/assert";
 * import { newRunSettings, SettingsError } from "./settings.ts";
 * const s = newRunSettings("s3://bucket/brats", { crop: 48 });
 * assertEquals([s.epochs, s.crop, s.valWindow], [10, 48, 48]);
 * const e = assertThrows(() => newRunSettings("data", { crop: 36 }), SettingsError);
 * assertEquals([e.flag, e.message], ["--crop", "--crop 36 must be a multiple of 8 (4 levels)"]);
 * ```
 */
export function newRunSettings(data: string, given: Partial<TrainSettings>): TrainSettings {
  const d = defaultSettings(data);
  const settings = { ...d, ...given, valWindow: given.valWindow ?? given.crop ?? d.crop };
  checkSettings(settings);
  return settings;
}

/**
 * The network of `fields` over the reference network.
 * @throws {SettingsError} of `--config`, its message the configuration's own after `--config: `
 */
export function networkConfig(fields: Partial<NetworkConfig>): NetworkConfig {
  try {
    return resolveConfig(fields);
  } catch (e) {
    throw new SettingsError("--config", `--config: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The network of `--config <json>|<file>`: inline JSON (starting with `{`) or a file holding it,
 * fields over the reference network.
 * @throws {SettingsError} of `--config` naming what is wrong: an unreadable file, JSON that does
 *   not parse, or a field out of range
 */
export function networkConfigFlag(value: string): NetworkConfig {
  let text = value.trim();
  if (!text.startsWith("{")) {
    try {
      text = Deno.readTextFileSync(value);
    } catch (e) {
      throw new SettingsError(
        "--config",
        `--config ${value}: neither inline JSON nor a readable file (${(e as Error).message})`,
        { cause: e },
      );
    }
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new SettingsError("--config", `--config: not valid JSON (${(e as Error).message})`, {
      cause: e,
    });
  }
  return networkConfig(parsed as Partial<NetworkConfig>);
}

/**
 * Settings a resumed run may change: how long it runs, how it validates and where its cases are
 * read from. The others decide what every step computes, so changing them would not continue the
 * run but start another one from its weights.
 */
const RESUMABLE: ReadonlySet<keyof TrainSettings> = new Set([
  "data",
  "epochs",
  "valEvery",
  "valWindow",
]);

/** JSON with object keys sorted, to compare settings read back from a checkpoint. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(
    value,
    (_key, v) =>
      v && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
        : v,
  );
}

function conflictText(key: keyof TrainSettings, want: unknown, stored: unknown): string {
  if (key === "augment") {
    return want === false
      ? "--no-augment (the run trains with augmentation)"
      : "augmentation on (the run trains with --no-augment)";
  }
  if (key === "config") {
    const w = want as Record<string, unknown>, s = stored as Record<string, unknown>;
    const fields = [...new Set([...Object.keys(w), ...Object.keys(s)])].sort()
      .filter((f) => canonicalJson(w[f]) !== canonicalJson(s[f]))
      .map((f) => `${f} ${JSON.stringify(w[f])} (the run has ${JSON.stringify(s[f])})`);
    return `--config: ${fields.join(", ")}`;
  }
  return `${SETTING_FLAGS[key]} ${JSON.stringify(want)} (the run has ${JSON.stringify(stored)})`;
}

/** The line saying what a resumed run's changed setting does, after checking it. */
function changeText(
  key: keyof TrainSettings,
  want: unknown,
  stored: TrainSettings,
  progress: { epoch: number; stepInEpoch: number },
): string {
  if (key === "epochs") {
    const epochs = want as number;
    const started = progress.epoch + (progress.stepInEpoch > 0 ? 1 : 0);
    if (!Number.isInteger(epochs) || epochs < Math.max(1, started)) {
      throw new SettingsError(
        "--epochs",
        `--epochs ${epochs} with --resume: the run has ${
          progress.stepInEpoch > 0
            ? `started epoch ${started}`
            : `completed ${progress.epoch} epochs`
        }, so it can end after epoch ${Math.max(1, started)} at the earliest`,
      );
    }
    return `--epochs ${epochs}: the run now ends after epoch ${epochs} (it was ${stored.epochs}); ` +
      `the learning rate decays over ${epochs * stored.stepsPerEpoch} steps from here on`;
  }
  if (key === "valWindow") {
    checkMultiple("valWindow", want as number, stored.config);
    return `--val-window ${want} (it was ${stored.valWindow})`;
  }
  if (key === "valEvery") return `--val-every ${want} (it was ${stored.valEvery})`;
  return `--data ${want}: the run's cases are read from there (it was ${stored.data})`;
}

/**
 * The settings of a resumed run: the stored ones, with `epochs` (longer or shorter, but not before
 * the epoch in progress), `valEvery`, `valWindow` and `data` (the run's cases, found by id, moved
 * elsewhere) taken from `requested`. Any other requested setting must equal the stored one.
 * @param progress where the run being resumed is: epochs completed, steps into the next one
 * @returns the settings, and a line for each change
 * @throws {SettingsError} naming every flag that conflicts with the stored settings (its `flag`
 *   `--resume`), or the `--epochs` or `--val-window` the run cannot take
 */
export function resumedSettings(
  stored: TrainSettings,
  requested: Partial<TrainSettings>,
  progress: { epoch: number; stepInEpoch: number },
): { settings: TrainSettings; changes: string[] } {
  const settings = { ...stored };
  const changes: string[] = [];
  const conflicts: string[] = [];
  for (const key of Object.keys(requested) as (keyof TrainSettings)[]) {
    const want = requested[key];
    if (want === undefined || canonicalJson(want) === canonicalJson(stored[key])) continue;
    if (!RESUMABLE.has(key)) {
      conflicts.push(conflictText(key, want, stored[key]));
      continue;
    }
    changes.push(changeText(key, want, stored, progress));
    (settings as Record<string, unknown>)[key] = want;
  }
  if (conflicts.length > 0) {
    throw new SettingsError(
      "--resume",
      `--resume keeps the settings the run started with, and these differ: ${
        conflicts.join("; ")
      }. Drop them (only --epochs, --val-every, --val-window and --data may change), or start a new run under another --out`,
    );
  }
  return { settings, changes };
}
