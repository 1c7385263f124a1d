/**
 * `demo`: the embedded default run — no data, storage or GPU needed. It generates BraTS-like cases
 * (`synth`), trains the reversible U-Net on CPU (`train`), segments the held-out cases (`segment`),
 * scores them (`evaluate`) and writes an HTML report, all under one output folder.
 * @module
 */
import { findCases } from "../pipeline/cases/mod.ts";
import {
  deleteObject,
  exists,
  getObject,
  joinUri,
  listObjects,
  putObject,
} from "../pipeline/storage/mod.ts";
import { writeSynthDataset } from "../pipeline/synth/mod.ts";
import { summarize, writeEvaluation } from "../pipeline/evaluation/mod.ts";
import { segment, segmentationReport } from "../pipeline/segmentation/mod.ts";
import { defaultSettings, train, trainEventPrinter } from "../pipeline/training/mod.ts";
import { Progress } from "../pipeline/report/mod.ts";
import { backendFlag, type Command, intFlag, parseFlags, printJson, UsageError } from "./_cli.ts";

/** The file that marks a folder as the demo's own, so a re-run may clear it. */
const MARKER = "demo.json";
const STAGES = ["data", "run", "seg", "eval", "report"];

function sizeFlag(value: string | undefined): [number, number, number] {
  if (value === undefined) return [64, 64, 48];
  const parts = value.split(",").map(Number);
  if (parts.length !== 3 || !parts.every((p) => Number.isInteger(p) && p >= 32 && p <= 256)) {
    throw new UsageError(
      `--size must be three integers in [32, 256] like 64,64,48, got "${value}"`,
    );
  }
  return parts as [number, number, number];
}

/** Removes what an earlier demo run wrote under `out`; refuses a folder the demo did not make. */
async function clearDemoOutput(out: string): Promise<void> {
  const existing = await listObjects(out).catch(() => []);
  if (existing.length === 0) return;
  if (!(await exists(joinUri(out, MARKER)))) {
    throw new UsageError(
      `${out} is not empty and was not written by demo (no ${MARKER}); choose another --out`,
    );
  }
  for (const o of existing) {
    if (STAGES.includes(o.key.split("/")[0]) || o.key === MARKER) await deleteObject(o.uri);
  }
}

export const demoCommand: Command = {
  name: "demo",
  summary: "The embedded default end to end: synth → train → segment → evaluate → report",
  help: `Usage: deno task demo [--out <uri>] [--cases <n>] [--size <x,y,z>] [--epochs <n>]
                        [--steps-per-epoch <n>] [--crop <n>] [--seed <n>] [--backend <backend>]

Generates N BraTS-like cases (synth: the real ch2bet brain when mricron-data is installed) under
<out>/data, trains the reversible U-Net (reference configuration) on all but the validation cases
(<out>/run: checkpoints, best/, metrics.jsonl, curves.svg), segments the held-out cases with the
best weights (<out>/seg), evaluates them against their labels (<out>/eval) and writes an HTML
report (<out>/report/index.html). Prints one JSON summary line. Needs nothing but this repository:
local storage, generated data, CPU. A re-run replaces the previous demo output in the same folder.

Options:
  --out <uri>            output folder or s3:// prefix (default out/demo)
  --cases <n>            cases to generate (default 6, at least 2); 2 are held out
  --size <x,y,z>         grid of the generated cases (default 64,64,48)
  --epochs <n>           training epochs (default 3)
  --steps-per-epoch <n>  training steps per epoch (default 25)
  --crop <n>             training crop edge, a multiple of 8 (default 32)
  --seed <n>             seed of the data, the split, the weights and the crops (default 0)
  --backend <backend>    auto|tensorflow|webgpu|wasm|cpu (default cpu)

Example:
  deno task demo --epochs 6`,
  async run(args) {
    const { values } = parseFlags("demo", args, {
      out: { type: "string" },
      cases: { type: "string" },
      size: { type: "string" },
      epochs: { type: "string" },
      "steps-per-epoch": { type: "string" },
      crop: { type: "string" },
      seed: { type: "string" },
      backend: { type: "string" },
    });
    const out = values.out ?? "out/demo";
    const nCases = intFlag("cases", values.cases, 6, 2, 1000);
    const dims = sizeFlag(values.size);
    const epochs = intFlag("epochs", values.epochs, 3, 1);
    const stepsPerEpoch = intFlag("steps-per-epoch", values["steps-per-epoch"], 25, 1);
    const crop = intFlag("crop", values.crop, 32, 8, 256);
    const seed = intFlag("seed", values.seed, 0, 0);
    const backend = backendFlag(values.backend);
    if (crop % 8 !== 0) throw new UsageError(`--crop must be a multiple of 8, got ${crop}`);
    const log = (m: string) => console.error(`demo: ${m}`);
    const t0 = performance.now();
    await clearDemoOutput(out);

    const data = joinUri(out, "data");
    const synth = await writeSynthDataset(data, { cases: nCases, seed, dims });
    log(`${nCases} synthetic cases (${dims.join("×")}, ${synth.template}) → ${data}`);

    const valCases = Math.min(2, nCases - 1);
    const run = joinUri(out, "run");
    const trained = await train({
      ...defaultSettings(data),
      epochs,
      stepsPerEpoch,
      crop,
      valWindow: crop,
      valCases,
      seed,
    }, { out: run, backend, onProgress: trainEventPrinter(new Progress()) });

    const state = JSON.parse(
      new TextDecoder().decode(await getObject(joinUri(run, `${trained.checkpoint}/state.json`))),
    );
    const heldOut: string[] = state.split?.val ?? [];
    const bestValDice = (state.history as { epoch: number; val_dice?: unknown }[])
      .find((h) => h.epoch === trained.best?.epoch)?.val_dice ?? trained.lastValDice;
    const { cases } = await findCases(data);
    const seg = joinUri(out, "seg");
    const segmented = await segment({
      model: joinUri(run, "best"),
      input: data,
      out: seg,
      backend,
      only: (c) => heldOut.includes(c.id) || heldOut.length === 0 && c === cases.at(-1),
    });
    log(`segmented ${segmented.cases.map((c) => c.id).join(", ")} → ${seg}`);

    const curvesSvg = new TextDecoder().decode(await getObject(joinUri(run, "curves.svg")));
    const { uri: report, metrics } = await segmentationReport(cases, segmented.cases, out, {
      title: "RevUNet-Deno demo: held-out synthetic cases",
      curvesSvg,
      notes: [
        `${nCases} synthetic cases ${dims.join("×")}; trained ${trained.steps} steps at ${crop}³ ` +
        `(${trained.seconds.toFixed(0)} s, ${trained.backend}); model ${joinUri(run, "best")}`,
      ],
    });
    const evaluation = { cases: metrics, summary: summarize(metrics), missing: [], extra: [] };
    const evalOut = joinUri(out, "eval");
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
        crop,
        seconds: Number(trained.seconds.toFixed(1)),
        last_loss: trained.lastLoss,
        best: trained.best,
        // Of the best epoch, whose weights are segmented below: validation scores what
        // segment writes, so these equal the held-out Dice of the evaluation.
        validation_dice: bestValDice,
      },
      model: joinUri(run, "best/model.safetensors"),
      held_out: heldOut,
      segmentations: segmented.cases.map((c) => c.output),
      evaluation: { metrics: joinUri(evalOut, "metrics.json"), mean_dice: meanDice },
      report,
    };
    await putObject(joinUri(out, MARKER), new TextEncoder().encode(JSON.stringify(summary) + "\n"));
    printJson(summary);
  },
};
