/**
 * pipeline/training/model_store.ts: saveModel and loadModel round trips (what is left of the old
 * pipeline_test; the rest moved to tests/synth/phantom_test.ts, tests/labels_test.ts,
 * tests/volume/geometry_test.ts and tests/cases/preprocess_test.ts).
 * @module
 */
import * as tf from "../model/tf.ts";
import { assertEquals, assertRejects } from "@std/assert";
import { loadModel, loadOptimizer, saveModel } from "../pipeline/training/model_store.ts";
import { createUNet, disposeUNet, Optimizer, resolveConfig, trainStep } from "../model/mod.ts";
import { startS3rver } from "./_s3rver.ts";

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
