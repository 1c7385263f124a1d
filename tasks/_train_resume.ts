/**
 * Which settings a `train --resume` run takes from its checkpoint and which it may change: the
 * stored settings stand, `--epochs N` makes the run longer or shorter (the learning rate then
 * decays over the new total), `--val-every`, `--val-window` and `--data` may change, and any other
 * setting flag that differs from the run's value is a usage error naming it.
 *
 * These are the command line's rules, so they live in tasks/: they throw {@linkcode UsageError}
 * (exit code 2) and name flags, and pipeline/, where the checkpoint that stores the settings is
 * read and written (pipeline/checkpoint.ts), never imports tasks/. They are apart from train.ts so
 * that they can be tested without a run.
 * @module
 */
import { cropMultiple } from "../model/mod.ts";
import type { TrainSettings } from "../pipeline/training/mod.ts";
import { UsageError } from "./_cli.ts";

/** The command-line flag of each setting, for messages. */
const SETTING_FLAGS: Record<keyof TrainSettings, string> = {
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

/**
 * The settings of a resumed run: the stored ones, with `epochs` (longer or shorter, but not before
 * the epoch in progress), `valEvery`, `valWindow` and `data` (the run's cases, found by id, moved
 * elsewhere) taken from `requested`. Any other requested setting must equal the stored one.
 * @param progress where the run being resumed is: epochs completed, steps into the next one
 * @returns the settings, and a line for each change
 * @throws {UsageError} naming every flag that conflicts with the stored settings
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
    if (key === "epochs") {
      const epochs = want as number;
      const started = progress.epoch + (progress.stepInEpoch > 0 ? 1 : 0);
      if (!Number.isInteger(epochs) || epochs < Math.max(1, started)) {
        throw new UsageError(
          `--epochs ${epochs} with --resume: the run has ${
            progress.stepInEpoch > 0
              ? `started epoch ${started}`
              : `completed ${progress.epoch} epochs`
          }, so it can end after epoch ${Math.max(1, started)} at the earliest`,
        );
      }
      changes.push(
        `--epochs ${epochs}: the run now ends after epoch ${epochs} (it was ${stored.epochs}); ` +
          `the learning rate decays over ${epochs * stored.stepsPerEpoch} steps from here on`,
      );
    } else if (key === "valWindow") {
      const m = cropMultiple(stored.config);
      if ((want as number) % m !== 0) {
        throw new UsageError(`--val-window ${want} must be a multiple of ${m}`);
      }
      changes.push(`--val-window ${want} (it was ${stored.valWindow})`);
    } else if (key === "valEvery") {
      changes.push(`--val-every ${want} (it was ${stored.valEvery})`);
    } else {
      changes.push(`--data ${want}: the run's cases are read from there (it was ${stored.data})`);
    }
    (settings as Record<string, unknown>)[key] = want;
  }
  if (conflicts.length > 0) {
    throw new UsageError(
      `--resume keeps the settings the run started with, and these differ: ${
        conflicts.join("; ")
      }. Drop them (only --epochs, --val-every, --val-window and --data may change), or start a new run under another --out`,
    );
  }
  return { settings, changes };
}
