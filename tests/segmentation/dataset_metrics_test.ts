/**
 * pipeline/segmentation/dataset_metrics.ts: `segment` of a labelled case of an nnU-Net v2 or MSD
 * dataset writes `<case>.metrics.json` in the dataset's own regions, the very entry `evaluate`
 * computes from the written file against that dataset, and the report returns the same metrics.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals } from "@std/assert";
import { findCases } from "../../pipeline/cases/cases.ts";
import { evaluateCases, METRICS } from "../../pipeline/evaluation/evaluation.ts";
import { segment, segmentationReport } from "../../pipeline/segmentation/mod.ts";
import { readJson } from "./_segment_fixtures.ts";
import {
  datasetModel,
  MSD_DATASET,
  NNUNET_DATASET,
  writeMsd,
  writeNnunet,
} from "./_dataset_fixtures.ts";

await tf.setBackend("cpu");

async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "dataset-metrics-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Segments `<root>/imagesTr` and checks each case's metrics file against `evaluate`'s entry. */
async function checkScored(root: string, model: string, out: string, regions: string[]) {
  const r = await segment({ model, input: `${root}/imagesTr`, out });
  assertEquals(r.failed, []);
  assert(r.cases.length > 0);
  const evaluation = await evaluateCases(out, root);
  assertEquals(evaluation.dataset?.regions.map((x) => x.name), regions);
  for (const [i, o] of r.cases.entries()) {
    // Before: no metrics for labels other than BraTS ones.
    assertEquals(o.metrics, `${out}/${o.id}.metrics.json`);
    assertEquals(o.regions, regions);
    const m = await readJson(o.metrics!);
    assertEquals(Object.keys(m), ["case", ...regions, "prediction", "reference"]);
    assertEquals(m.reference, `${root}/labelsTr/${o.id}.nii.gz`);
    assertEquals(m.prediction, o.output);
    const { prediction: _p, reference: _r, ...entry } = m;
    assertEquals(entry, evaluation.cases[i], "evaluate's entry for the case");
    for (const region of regions) {
      for (const k of METRICS) assert(Number.isFinite(m[region][k]), `${o.id} ${region} ${k}`);
    }
  }
  return r;
}

Deno.test("segment: an nnU-Net case with a labelsTr reference is scored in the dataset's regions, as evaluate scores it; the report returns them", async () => {
  await using tmp = await tempDir();
  const root = `${tmp.path}/Dataset900_Phantom`;
  await writeNnunet(root, 2, 1);
  const model = await datasetModel(tmp.path, NNUNET_DATASET, 1);
  const out = `${tmp.path}/seg`;
  const r = await checkScored(root, model, out, ["whole_tumor"]);
  const { cases } = await findCases(`${root}/imagesTr`);
  const report = await segmentationReport(cases, r.cases, out);
  assertEquals(report.metrics, (await evaluateCases(out, root)).cases);
  // Done: skipped the second time, its metrics file still named.
  const again = await segment({ model, input: `${root}/imagesTr`, out });
  assertEquals(
    again.cases.map((c) => [c.status, c.metrics]),
    r.cases.map((c) => ["skipped", c.metrics]),
  );
});

Deno.test("segment: an MSD case is scored in its task's labels, one region per label", async () => {
  await using tmp = await tempDir();
  const root = `${tmp.path}/Task01_BrainTumour`;
  await writeMsd(root, 2, 0);
  const model = await datasetModel(tmp.path, MSD_DATASET, 3);
  await checkScored(root, model, `${tmp.path}/seg`, [
    "edema",
    "non-enhancing tumor",
    "enhancing tumour",
  ]);
});
