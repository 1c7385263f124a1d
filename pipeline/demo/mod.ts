/**
 * The embedded default run behind `deno task demo`: it generates BraTS-like cases (synth), trains
 * the reversible U-Net on all but the held-out ones, segments those with the best weights, scores
 * them and writes an HTML report, all under one output folder, and returns the summary it records
 * in `<out>/demo.json`. Stages only: the command line (flags, checks, printing) is tasks/demo.ts.
 * @module
 */
import { findCases } from "../cases/mod.ts";
import { summarize, writeEvaluation } from "../evaluation/mod.ts";
import { segment, segmentationReport } from "../segmentation/mod.ts";
import {
  deleteObject,
  exists,
  getObject,
  joinUri,
  listObjects,
  putObject,
} from "../storage/mod.ts";
import { writeSynthDataset } from "../synth/mod.ts";
import {
  type BackendName,
  defaultSettings,
  SettingsError,
  train,
  type TrainRuntime,
} from "../training/mod.ts";

/** The file that marks a folder as the demo's own, so a re-run may clear it. */
export const DEMO_MARKER = "demo.json";
/** The folders the demo writes under its output, one per stage. */
export const DEMO_STAGES = ["data", "run", "seg", "eval", "report"];

/** What one demo run does. */
export interface DemoOptions {
  /** The output folder or s3:// prefix. */
  out: string;
  /** Cases to generate, at least 2. */
  cases: number;
  /** The grid of the generated cases. */
  dims: [number, number, number];
  /** Training epochs. */
  epochs: number;
  /** Training steps per epoch. */
  stepsPerEpoch: number;
  /** Training crop edge (and validation window), a multiple of 8. */
  crop: number;
  /** Seed of the data, the split, the weights and the crops. */
  seed: number;
  /** The backend that trains and segments. */
  backend: BackendName;
  /** Training's progress events. */
  onProgress?: TrainRuntime["onProgress"];
  /** One line per finished stage. */
  log?: (message: string) => void;
}

/** The data set the demo writes: synthetic cases under `<out>/data`. */
async function demoData(o: DemoOptions, log: (m: string) => void): Promise<string> {
  const data = joinUri(o.out, "data");
  const synth = await writeSynthDataset(data, { cases: o.cases, seed: o.seed, dims: o.dims });
  log(`${o.cases} synthetic cases (${o.dims.join("×")}, ${synth.template}) → ${data}`);
  return data;
}

/** Trains under `<out>/run`; returns the result, the held-out case ids and the best epoch's Dice. */
async function demoTrain(o: DemoOptions, data: string) {
  const run = joinUri(o.out, "run");
  const trained = await train({
    ...defaultSettings(data),
    epochs: o.epochs,
    stepsPerEpoch: o.stepsPerEpoch,
    crop: o.crop,
    valWindow: o.crop,
    valCases: Math.min(2, o.cases - 1),
    seed: o.seed,
  }, { out: run, backend: o.backend, ...(o.onProgress ? { onProgress: o.onProgress } : {}) });
  const state = JSON.parse(
    new TextDecoder().decode(await getObject(joinUri(run, `${trained.checkpoint}/state.json`))),
  );
  const heldOut: string[] = state.split?.val ?? [];
  const bestValDice = (state.history as { epoch: number; val_dice?: unknown }[])
    .find((h) => h.epoch === trained.best?.epoch)?.val_dice ?? trained.lastValDice;
  return { run, trained, heldOut, bestValDice };
}

/**
 * Removes what an earlier demo run wrote under `out`.
 * @throws {SettingsError} naming `--out` when `out` holds objects but no {@linkcode DEMO_MARKER}
 */
async function clearDemoOutput(out: string): Promise<void> {
  const existing = await listObjects(out).catch(() => []);
  if (existing.length === 0) return;
  if (!(await exists(joinUri(out, DEMO_MARKER)))) {
    throw new SettingsError(
      "--out",
      `${out} is not empty and was not written by demo (no ${DEMO_MARKER}); choose another --out`,
    );
  }
  for (const o of existing) {
    if (DEMO_STAGES.includes(o.key.split("/")[0]) || o.key === DEMO_MARKER) {
      await deleteObject(o.uri);
    }
  }
}

/**
 * Runs the demo's stages under `o.out`, first clearing an earlier demo's output there (a folder
 * the demo did not write is refused), and writes `<out>/demo.json`, the summary it returns, last.
 */
export async function runDemo(o: DemoOptions) {
  await clearDemoOutput(o.out);
  const log = o.log ?? (() => {});
  const t0 = performance.now();
  const data = await demoData(o, log);
  const { run, trained, heldOut, bestValDice } = await demoTrain(o, data);
  const { cases } = await findCases(data);
  const seg = joinUri(o.out, "seg");
  const segmented = await segment({
    model: joinUri(run, "best"),
    input: data,
    out: seg,
    backend: o.backend,
    only: (c) => heldOut.includes(c.id) || heldOut.length === 0 && c === cases.at(-1),
  });
  log(`segmented ${segmented.cases.map((c) => c.id).join(", ")} → ${seg}`);

  const curvesSvg = new TextDecoder().decode(await getObject(joinUri(run, "curves.svg")));
  const { uri: report, metrics } = await segmentationReport(cases, segmented.cases, o.out, {
    title: "RevUNet-Deno demo: held-out synthetic cases",
    curvesSvg,
    notes: [
      `${o.cases} synthetic cases ${o.dims.join("×")}; trained ${trained.steps} steps at ` +
      `${o.crop}³ (${trained.seconds.toFixed(0)} s, ${trained.backend}); model ${
        joinUri(run, "best")
      }`,
    ],
  });
  const evaluation = { cases: metrics, summary: summarize(metrics), missing: [], extra: [] };
  const evalOut = joinUri(o.out, "eval");
  await writeEvaluation(evalOut, evaluation);
  const meanDice = Object.fromEntries(
    (["WT", "TC", "ET"] as const).map((r) => [r, evaluation.summary[r].dice.mean]),
  );
  log(
    `held-out Dice WT ${meanDice.WT?.toFixed(3)} TC ${meanDice.TC?.toFixed(3)} ET ${
      meanDice.ET?.toFixed(3)
    } → ${joinUri(evalOut, "metrics.json")}`,
  );
  log(`report: ${report}`);

  const summary = {
    backend: trained.backend,
    seconds: Number(((performance.now() - t0) / 1000).toFixed(1)),
    data,
    cases: cases.map((c) => c.id),
    train: {
      out: run,
      epochs: trained.epochs,
      steps: trained.steps,
      crop: o.crop,
      seconds: Number(trained.seconds.toFixed(1)),
      last_loss: trained.lastLoss,
      best: trained.best,
      // Of the best epoch, whose weights are segmented above: validation scores what
      // segment writes, so these equal the held-out Dice of the evaluation.
      validation_dice: bestValDice,
    },
    model: joinUri(run, "best/model.safetensors"),
    held_out: heldOut,
    segmentations: segmented.cases.map((c) => c.output),
    evaluation: { metrics: joinUri(evalOut, "metrics.json"), mean_dice: meanDice },
    report,
  };
  await putObject(
    joinUri(o.out, DEMO_MARKER),
    new TextEncoder().encode(JSON.stringify(summary) + "\n"),
  );
  return summary;
}
