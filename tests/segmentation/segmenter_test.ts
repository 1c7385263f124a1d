/**
 * pipeline/segmentation/segmenter.ts: probabilities to labels as the Segmenter converts them
 * (pipeline/labels.ts) and the auto window it resolves.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { inferenceFitEdges, inferenceModel, predictPeak, resolveConfig } from "../../model/mod.ts";
import { findCases } from "../../pipeline/cases/cases.ts";
import { decodeNifti, scaledData } from "../../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { getObject } from "../../pipeline/storage/objects.ts";
import { probabilitiesToLabels } from "../../pipeline/labels.ts";
import { segment } from "../../pipeline/segmentation/mod.ts";
import { readJson, TINY, tinyModel } from "./_segment_fixtures.ts";

await tf.setBackend("cpu");

Deno.test("probabilitiesToLabels: WT→2, TC→1, ET→4 or 3, each overwriting; small ET becomes necrosis", () => {
  const probs = Float32Array.from([
    0.1,
    0.1,
    0.1, // background
    0.9,
    0.1,
    0.1, // edema
    0.9,
    0.9,
    0.1, // necrosis
    0.9,
    0.9,
    0.9, // enhancing
    0.2,
    0.2,
    0.9, // ET alone still counts as ET (nnU-Net order)
  ]);
  assertEquals([...probabilitiesToLabels(probs, 4)], [0, 2, 1, 4, 4]);
  assertEquals([...probabilitiesToLabels(probs, 3)], [0, 2, 1, 3, 3]);
  assertEquals(
    [...probabilitiesToLabels(probs, 4, 3)],
    [0, 2, 1, 1, 1],
    "2 ET voxels < 3 → necrosis",
  );
  assertEquals([...probabilitiesToLabels(probs, 4, 2)], [0, 2, 1, 4, 4]);
});

Deno.test("segment --window auto (the default) is the fixed window it resolves to: same grid, same labels; a small budget caps it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [24, 28, 20], seed: 5 });
    const model = await tinyModel(dir);
    const base = { model, input: `${dir}/data` };
    await segment({ ...base, out: `${dir}/auto` });
    await segment({ ...base, out: `${dir}/fixed`, window: 16 });
    const plan = await inferenceModel(resolveConfig(TINY), inferenceFitEdges(resolveConfig(TINY)));
    // Room for 8³ windows, not 16³ (the native kernels segment loads shift the peaks a little).
    const budget = Math.sqrt(predictPeak(plan, 8) * predictPeak(plan, 16));
    await segment({ ...base, out: `${dir}/small`, window: "auto", memoryBudget: budget });
    const none = await segment({ ...base, out: `${dir}/none`, memoryBudget: 1 });
    assertEquals(none.failed.length, 1);
    assertStringIncludes(none.failed[0].error, "fits the memory budget");
    const { cases: [c] } = await findCases(`${dir}/data`);
    const read = async (o: string) => decodeNifti(await getObject(`${dir}/${o}/${c.id}.nii.gz`), o);
    const [auto, fixed] = [await read("auto"), await read("fixed")];
    assertEquals(auto.header.dims, fixed.header.dims);
    assertEquals(auto.header.affine, fixed.header.affine);
    assertEquals(scaledData(auto), scaledData(fixed));
    assertEquals((await readJson(`${dir}/auto/${c.id}.json`)).options.window, 16);
    const small = await read("small");
    assertEquals(small.header.dims, fixed.header.dims);
    const capped = (await readJson(`${dir}/small/${c.id}.json`)).options.window;
    assert(capped >= 8 && capped < 16 && capped % 2 === 0, `window ${capped}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
