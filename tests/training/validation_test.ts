/**
 * Validation during training scores what `segment` writes: the Dice in `metrics.jsonl` (and so
 * the choice of `best/`) equals `evaluate`'s Dice of the labels `segment` writes with the saved
 * weights.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import { decodeCachedCase, encodeCachedCase } from "../../pipeline/cases/case_cache.ts";
import { findCases } from "../../pipeline/cases/cases.ts";
import { labelsToRegions, probabilitiesToLabels, regionsToLabels } from "../../pipeline/labels.ts";
import { preprocessCase } from "../../pipeline/cases/preprocess.ts";
import { evaluateCases } from "../../pipeline/evaluation/evaluation.ts";
import { decodeNifti, encodeNifti, scaledData } from "../../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { REGIONS } from "../../pipeline/evaluation/metrics.ts";
import { segment } from "../../pipeline/segmentation/mod.ts";
import { train } from "../../pipeline/training/mod.ts";
import { tinySettings } from "../_train_fixtures.ts";

await tf.setBackend("cpu");

/** Sets `label` at voxel 0 (a corner, outside the phantom's head) of each case's reference. */
async function labelCorner(data: string, label: number): Promise<void> {
  for (const c of (await findCases(data)).cases) {
    const seg = decodeNifti(await Deno.readFile(c.seg!), c.seg!);
    const labels = Uint8Array.from(scaledData(seg));
    labels[0] = label;
    await Deno.writeFile(c.seg!, encodeNifti(labels, "uint8", seg.header, { name: c.seg! }));
  }
}

Deno.test("labels: region bits back to labels by the overwriting rule; probabilities → labels → regions nests them", () => {
  // Bits 2 (TC alone), 4 (ET alone), 6: not nested, converted as segment converts probabilities.
  assertEquals([...regionsToLabels([0, 1, 2, 3, 4, 6, 7], 4)], [0, 2, 1, 1, 4, 4, 4]);
  assertEquals([...regionsToLabels([7, 3, 1], 3)], [3, 1, 2]);
  // WT, TC, ET: TC without WT is tumour (WT | TC), ET alone is all three.
  const probs = Float32Array.from([0.2, 0.7, 0.1, 0.4, 0.4, 0.6, 0.5, 0.1, 0.1]);
  assertEquals([...labelsToRegions(probabilitiesToLabels(probs, 4), 4)], [3, 7, 0]);
  assertThrows(() => probabilitiesToLabels(new Float32Array(4), 4), RangeError, "3 per voxel");
});

Deno.test("preprocessCase counts the reference's region voxels outside the brain's box; the cache keeps them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-validation-" });
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [20, 20, 16], seed: 9 });
    await labelCorner(`${dir}/data`, 4);
    const [c] = (await findCases(`${dir}/data`)).cases;
    const p = await preprocessCase(c);
    assertEquals(p.regionsOutside, [1, 1, 1], "the enhancing corner voxel is WT, TC and ET");
    const decoded = decodeCachedCase(encodeCachedCase(p, "k"), "x.rvcase");
    assertEquals(decoded.regionsOutside, [1, 1, 1]);
    // An entry whose header lost the counts is not trusted (the cache rebuilds it).
    const bytes = encodeCachedCase(p, "k");
    const text = new TextDecoder().decode(bytes.subarray(0, 1000));
    const at = text.indexOf('"regionsOutside":[1,1,1]');
    bytes.set(new TextEncoder().encode('"regionsOutsidX":[1,1,1]'), at);
    assertThrows(() => decodeCachedCase(bytes, "x.rvcase"), RangeError, "x.rvcase");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train's validation Dice (metrics.jsonl) equals evaluate's Dice of segment's output with best/ to 1e-9", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-validation-" });
  try {
    const data = `${dir}/data`;
    await writePhantomDataset(data, { cases: 4, dims: [24, 28, 20], seed: 11 });
    // Necrosis at a corner of each reference, where no modality has signal: outside the brain's
    // box, which validation works on, but inside the grid that `segment` writes and `evaluate`
    // scores (a tumour voxel nothing can predict, so a miss for WT and TC).
    await labelCorner(data, 1);
    // The validation window (16) differs from the training crop (8).
    const settings = tinySettings(data, { epochs: 2, valCases: 2, valEvery: 1, seed: 4 });
    const run = await train(settings, { out: `${dir}/run`, workers: 0, cache: "" });
    const history = (await Deno.readTextFile(`${dir}/run/metrics.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l));
    const best = history.find((h) => h.epoch === run.best!.epoch);
    const state = JSON.parse(
      await Deno.readTextFile(`${dir}/run/${run.checkpoint}/state.json`),
    );
    const val: string[] = state.split.val;
    assertEquals(val.length, 2);

    const seg = await segment({
      model: `${dir}/run/best`,
      input: data,
      out: `${dir}/seg`,
      only: (c) => val.includes(c.id),
    });
    assertEquals(seg.failed, []);
    const evaluation = await evaluateCases(`${dir}/seg`, data);
    assertEquals(evaluation.cases.map((c) => c.case).sort(), [...val].sort());
    const scored = Object.fromEntries(REGIONS.map((r) => [r, evaluation.summary[r].dice.mean]));
    for (const r of REGIONS) {
      assertAlmostEquals(
        best.val_dice[r],
        scored[r]!,
        1e-9,
        `${r}: metrics.jsonl ${best.val_dice[r]}, evaluate ${scored[r]}`,
      );
    }
    assertAlmostEquals(best.val_mean_dice, (scored.WT! + scored.TC! + scored.ET!) / 3, 1e-9);
    console.log(
      `epoch ${best.epoch}: metrics.jsonl ${JSON.stringify(best.val_dice)}, evaluate ${
        JSON.stringify(scored)
      }`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
