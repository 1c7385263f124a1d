/**
 * pipeline/training/model_store.ts as segmentation loads models: resolveModel() (local and s3rver)
 * and loadModel() with its typed metadata and SHA-256, as Segmenter.load takes them; saveModel and
 * loadModel round trips on s3rver and locally, with optimizer state.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { createUNet, disposeUNet, Optimizer, resolveConfig, trainStep } from "../../model/mod.ts";
import {
  loadModel,
  loadOptimizer,
  modelMetadataRecord,
  resolveModel,
  saveModel,
  sha256Hex,
} from "../../pipeline/training/model_store.ts";
import { Segmenter } from "../../pipeline/segmentation/mod.ts";
import { startS3rver } from "../_s3rver.ts";
import { joinPath, runLayout, TINY } from "../segmentation/_segment_fixtures.ts";

await tf.setBackend("cpu");

/** resolveModel() over {@linkcode runLayout} at `root` (a local folder or an s3:// prefix). */
async function checkResolveModel(root: string): Promise<void> {
  const at = (rel: string) => joinPath(root, rel);
  const run = await resolveModel(at("run"));
  assertEquals([run.kind, run.uri], ["run", at("run/best/model.safetensors")]);
  assertStringIncludes(run.note!, "training run: using its best/");
  for (const rel of ["run/", "run/best", "run/best/"]) {
    const r = await resolveModel(at(rel));
    assertEquals(r.uri, at("run/best/model.safetensors"), rel);
  }
  const ckpt = await resolveModel(at("run/checkpoints/epoch-0001-step-0000002"));
  assertEquals(
    [ckpt.kind, ckpt.uri],
    ["folder", at("run/checkpoints/epoch-0001-step-0000002/model.safetensors")],
  );
  assertEquals(ckpt.note, undefined);
  for (const rel of ["run/best/model.safetensors", "weights/final.safetensors"]) {
    assertEquals(await resolveModel(at(rel)), { uri: at(rel), kind: "file" });
  }
  for (const rel of ["nothing", "weights", "weights/missing.safetensors", "run/checkpoints"]) {
    const e = await assertRejects(() => resolveModel(at(rel)), Error);
    for (
      const accepted of [
        `No model at "${at(rel)}"`,
        "training run folder",
        "best/",
        "checkpoint folder",
        ".safetensors",
      ]
    ) assertStringIncludes(e.message, accepted, rel);
  }
  if (root.startsWith("s3://")) {
    // A bare bucket is a folder: listed as one, not HEAD-ed as an object.
    const bucket = root.slice(0, root.indexOf("/", 5));
    const e = await assertRejects(() => resolveModel(bucket), Error);
    assertStringIncludes(e.message, `No model at "${bucket}"`);
  }
  const unfinished = await assertRejects(() => resolveModel(at("unfinished")), Error);
  assertStringIncludes(unfinished.message, "a training run with no best/ yet");
}

Deno.test("resolveModel() takes a run folder (its best/), best/, a checkpoint or the file; else lists them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await runLayout(dir);
    await checkResolveModel(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resolveModel() on s3rver: run folder, best/, checkpoint, file, and the error", async () => {
  await using _s3 = await startS3rver({ buckets: ["models"] });
  await runLayout("s3://models/team");
  await checkResolveModel("s3://models/team");
});

Deno.test("loadModel() gives the training crop and validation window as numbers and the file's SHA-256; Segmenter.load takes them from it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const net = createUNet(resolveConfig(TINY), { seed: 2, zeroInitResidual: false });
    // Written as training writes them: strings, through the one encoder.
    const meta = modelMetadataRecord({ trainCrop: 16, valWindow: 24 });
    assertEquals(meta, { train_crop: "16", val_window: "24" });
    await saveModel(`${dir}/model`, net, undefined, meta);
    await saveModel(`${dir}/odd`, net, undefined, { train_crop: "sixteen", val_window: "-8" });
    const brats = JSON.stringify({ layout: "brats2021", channels: ["flair", "t1"], labels: {} });
    await saveModel(`${dir}/wrong`, net, undefined, { dataset: brats });
    disposeUNet(net);

    const loaded = await loadModel(`${dir}/model`, undefined, { trainable: false });
    const bytes = await Deno.readFile(`${dir}/model/model.safetensors`);
    assertEquals(loaded.info, { trainCrop: 16, valWindow: 24 });
    assertEquals(loaded.uri, `${dir}/model/model.safetensors`);
    assertEquals(loaded.sha256, sha256Hex(bytes));
    assertEquals(loaded.metadata.train_crop, "16");
    disposeUNet(loaded.net);
    // Sizes that are not positive integers are unrecorded, not NaN.
    const odd = await loadModel(`${dir}/odd`);
    assertEquals(odd.info, {});
    disposeUNet(odd.net);
    // A dataset whose channels disagree with the network is refused naming the file.
    const wrong = await assertRejects(() => loadModel(`${dir}/wrong`), RangeError);
    assertStringIncludes(
      wrong.message,
      `${dir}/wrong/model.safetensors: its dataset has 2 channels`,
    );

    const segmenter = await Segmenter.load(`${dir}/model`);
    assertEquals(
      [segmenter.trainedCrop, segmenter.validatedWindow, segmenter.modelSha256],
      [16, 24, sha256Hex(bytes)],
    );
    segmenter.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("saveModel/loadModel round trip on s3rver and locally, with optimizer state", async () => {
  await using _s3 = await startS3rver({ buckets: ["models"] });
  const dir = await Deno.makeTempDir();
  const net = createUNet(resolveConfig({ levels: 2, baseChannels: 8, blocksPerLevel: 1 }), {
    seed: 4,
  });
  const opt = new Optimizer();
  const x = tf.randomNormal([1, 8, 8, 8, 4]) as tf.Tensor5D;
  const y = tf.zeros([1, 8, 8, 8, 3]) as tf.Tensor5D;
  trainStep(net, opt, x, y, 1e-3);
  try {
    for (const location of ["s3://models/run1/best", `${dir}/best`]) {
      await saveModel(location, net, opt, { epoch: "3" });
      const { net: back, metadata } = await loadModel(location);
      assertEquals(metadata.epoch, "3");
      assertEquals(back.config, net.config);
      for (const [k, w] of net.named) assertEquals(back.named.get(k)!.dataSync(), w.dataSync());
      const o = await loadOptimizer(location);
      assertEquals(o?.step, 1);
      o?.dispose();
      disposeUNet(back);
    }
    assertEquals(await loadOptimizer(`${dir}/nothing`), undefined);
    await assertRejects(
      () => loadModel("s3://models/missing"),
      Error,
      "s3://models/missing/model.safetensors",
    );
  } finally {
    tf.dispose([x, y]);
    opt.dispose();
    disposeUNet(net);
    await Deno.remove(dir, { recursive: true });
  }
});
