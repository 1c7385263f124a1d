/**
 * pipeline/segmentation/segmenter.ts: the auto window the Segmenter resolves (its conversion of
 * probabilities to labels: tests/labels_test.ts).
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { inferenceFitEdges, inferenceModel, predictPeak, resolveConfig } from "../../model/mod.ts";
import { findCases } from "../../pipeline/cases/cases.ts";
import { decodeNifti, scaledData } from "../../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { getObject } from "../../pipeline/storage/objects.ts";
import { segment } from "../../pipeline/segmentation/mod.ts";
import { readJson, TINY, tinyModel } from "./_segment_fixtures.ts";

await tf.setBackend("cpu");

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

Deno.test("segment --overlap auto (the default) is 0.5 on a small case: the same labels as 0.5, recorded as asked and as used", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [24, 28, 20], seed: 5 });
    const model = await tinyModel(dir);
    const base = { model, input: `${dir}/data`, window: 8 };
    const auto = await segment({ ...base, out: `${dir}/auto` });
    await segment({ ...base, out: `${dir}/half`, overlap: 0.5 });
    const quarter = await segment({ ...base, out: `${dir}/quarter`, overlap: 0.25 });
    assertEquals(auto.cases[0].overlap, 0.5);
    assertEquals(quarter.cases[0].overlap, 0.25);
    const { cases: [c] } = await findCases(`${dir}/data`);
    const record = (o: string) => readJson(`${dir}/${o}/${c.id}.json`);
    assertEquals((await record("auto")).options.overlap, "auto");
    assertEquals((await record("auto")).overlap_used, 0.5);
    assertEquals((await record("half")).options.overlap, 0.5);
    assertEquals((await record("quarter")).overlap_used, 0.25);
    const labels = async (o: string) =>
      scaledData(decodeNifti(await getObject(`${dir}/${o}/${c.id}.nii.gz`), o));
    assertEquals(await labels("auto"), await labels("half"));
    // The record keys the asked overlap: "auto" is not redone as "auto", 0.5 is another key.
    const again = await segment({ ...base, out: `${dir}/auto` });
    assertEquals(again.cases[0].status, "skipped");
    const asNumber = await segment({ ...base, out: `${dir}/auto`, overlap: 0.5 });
    assertEquals(asNumber.cases[0].status, "done");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
