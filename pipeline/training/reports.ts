/**
 * What a training run writes besides its checkpoints: `metrics.jsonl` and `curves.svg` after every
 * epoch, and on request the end-of-training report (`report/index.html`).
 * @module
 */
import { type UNet, unetPredictor } from "../../model/mod.ts";
import { type Case, caseAt, type Cases } from "../cases/mod.ts";
import { caseMetrics } from "../evaluation/mod.ts";
import { slidingWindowProbabilities } from "../inference/mod.ts";
import {
  bratsEnhancingLabel,
  type Labels,
  probabilitiesToLabels,
  regionsToLabels,
} from "../labels.ts";
import { renderCaseSlices, renderCurves, reportMetrics, writeReport } from "../report/mod.ts";
import { getObject, joinUri, putObject } from "../storage/mod.ts";
import type { EpochMetrics } from "./checkpoint.ts";
import type { TrainSettings } from "./settings.ts";

/** Colours of the validation Dice curves, one per region. */
const REGION_COLORS = ["#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/** `metrics.jsonl` and `curves.svg`, rewritten whole (object storage has no append). */
export async function writeReports(
  out: string,
  history: EpochMetrics[],
  regions: readonly string[] = ["WT", "TC", "ET"],
): Promise<void> {
  const lines = history.map((h) => JSON.stringify(h)).join("\n") + "\n";
  await putObject(joinUri(out, "metrics.jsonl"), new TextEncoder().encode(lines));
  const val = history.filter((h) => h.val_dice);
  const svg = renderCurves([
    {
      title: "Training loss",
      xLabel: "epoch",
      yLabel: "soft Dice + BCE",
      series: [{ name: "loss", color: "#1f77b4", points: history.map((h) => [h.epoch, h.loss]) }],
    },
    {
      title: "Validation Dice",
      xLabel: "epoch",
      yLabel: "Dice",
      yRange: [0, 1],
      series: regions.map((r, i) => ({
        name: r,
        color: REGION_COLORS[i % REGION_COLORS.length],
        points: val.map((h) => [h.epoch, h.val_dice![r]] as [number, number]),
      })),
    },
  ]);
  await putObject(joinUri(out, "curves.svg"), new TextEncoder().encode(svg));
}

/** One validation case of the report: its slices with reference and prediction, its metrics. */
async function reportCase(
  net: UNet,
  c: Case,
  cases: Cases,
  i: number,
  window: number,
  labels: Labels,
) {
  const p = caseAt(cases, i);
  const probs = await slidingWindowProbabilities(unetPredictor(net), p.image, p.box.size, {
    window,
  });
  // BraTS cases in their own convention; other datasets' labels are scored by `evaluate` only
  // as BraTS regions, so their report shows slices without metrics.
  const own = c.enhancingLabel ?? labels;
  const prediction = probabilitiesToLabels(probs, own);
  const truth = regionsToLabels(p.regions!, own);
  const ch = net.config.inChannels;
  const flair = new Float32Array(p.image.length / ch).map((_, j) => p.image[ch * j]);
  const spacing = (c.spacing ?? [1, 1, 1]) as [number, number, number];
  const e = bratsEnhancingLabel(own);
  const m = e ? caseMetrics(prediction, truth, p.box.size, spacing, e) : undefined;
  return {
    id: c.id,
    slices: renderCaseSlices({ flair, dims: p.box.size, spacing, truth, prediction }),
    ...(m ? { metrics: reportMetrics(m) } : {}),
  };
}

/**
 * The end-of-training report: each validation case's FLAIR (z-scored, on its brain box) with the
 * reference and the final network's prediction, their metrics, and the training curves.
 * @param cases the validation cases, and `preprocessed` the same cases preprocessed
 * @returns the report's URI
 */
export async function trainingReport(
  out: string,
  net: UNet,
  cases: Case[],
  preprocessed: Cases,
  s: TrainSettings,
  history: EpochMetrics[],
  labels: Labels,
): Promise<string> {
  const entries = [];
  for (let i = 0; i < preprocessed.length; i++) {
    entries.push(await reportCase(net, cases[i], preprocessed, i, s.valWindow, labels));
  }
  const curves = new TextDecoder().decode(await getObject(joinUri(out, "curves.svg")));
  const last = history.at(-1);
  return await writeReport(out, {
    title: "Training run",
    cases: entries,
    curvesSvg: curves,
    notes: [
      `data ${s.data}; ${history.length} epochs of ${s.stepsPerEpoch} steps, crop ${s.crop}, batch ${s.batch}, lr ${s.lr} (${s.optimizer}), seed ${s.seed}`,
      `final loss ${
        last?.loss.toFixed(4) ?? "–"
      }; validation cases shown on their brain box with the final weights`,
    ],
  });
}
