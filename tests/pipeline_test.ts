import * as tf from "../model/tf.ts";
import { assert, assertAlmostEquals, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { findCases } from "../pipeline/cases/cases.ts";
import { decodeNifti, scaledData } from "../pipeline/nifti/mod.ts";
import { phantomCase, writePhantomDataset } from "../pipeline/synth/phantom.ts";
import { labelsToRegions, regionChannels } from "../pipeline/labels.ts";
import { loadCase } from "../pipeline/cases/preprocess.ts";
import { loadModel, loadOptimizer, saveModel } from "../pipeline/training/model_store.ts";
import { getObject } from "../pipeline/storage/objects.ts";
import { createUNet, disposeUNet, Optimizer, resolveConfig, trainStep } from "../model/mod.ts";
import { startS3rver } from "./_s3rver.ts";
import { cropCube } from "../pipeline/volume/mod.ts";

Deno.test("phantomCase is deterministic for a seed and holds all three tumor labels", () => {
  const a = phantomCase([24, 24, 20], 5);
  const b = phantomCase([24, 24, 20], 5);
  const c = phantomCase([24, 24, 20], 6);
  assertEquals(a.images.t1ce, b.images.t1ce);
  assertEquals(a.seg, b.seg);
  assert(a.seg.some((v, i) => v !== c.seg[i]), "another seed moves the tumor");
  assertEquals([...new Set(a.seg)].sort(), [0, 1, 2, 4]);
  assertEquals([...new Set(phantomCase([24, 24, 20], 5, 3).seg)].sort(), [0, 1, 2, 3]);
  // Tumor only inside the head, where the images are nonzero.
  assert(a.seg.every((v, i) => v === 0 || a.images.flair[i] > 0));
});

Deno.test("labelsToRegions + regionChannels nest WT ⊇ TC ⊇ ET for both label conventions and name bad labels", () => {
  const targets = (l: number[], e: 3 | 4) => [...regionChannels(labelsToRegions(l, e))];
  assertEquals(targets([0, 1, 2, 4], 4), [0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1]);
  assertEquals(targets([3, 2], 3), [1, 1, 1, 1, 0, 0]);
  assertThrows(
    () => labelsToRegions([0, 3], 4, "x_seg.nii.gz"),
    RangeError,
    "x_seg.nii.gz: voxel 1 has label 3",
  );
});

Deno.test("cropCube copies the cube and zero-pads outside the volume: dims [3,2,2], 2 channels", () => {
  const dims: [number, number, number] = [3, 2, 2];
  const data = Float32Array.from({ length: 12 * 2 }, (_, i) => i + 1);
  const inside = cropCube(data, dims, 2, [1, 0, 0], 2);
  // voxel (x=1,y=0,z=0) is index 1 → channels 3, 4
  assertEquals([...inside.subarray(0, 2)], [3, 4]);
  const outside = cropCube(data, dims, 2, [-1, -1, -1], 2);
  assertEquals([...outside.subarray(0, 14)], new Array(14).fill(0));
  assertEquals([...outside.subarray(14, 16)], [1, 2]); // (1,1,1) of the cube is voxel (0,0,0)
});

Deno.test("writePhantomDataset + findCases + loadCase: z-scored over the brain, targets from seg", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ids = await writePhantomDataset(dir, {
      cases: 2,
      dims: [20, 18, 16],
      seed: 3,
      naming: "brats2023",
    });
    assertEquals(ids, ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]);
    const { cases, problems } = await findCases(dir);
    assertEquals(problems, []);
    assertEquals(
      cases.map((c) => [c.id, c.enhancingLabel as number, c.shape]),
      ids.map((id) => [id, 3 as number, [20, 18, 16]]),
    );
    const loaded = await loadCase(cases[0]);
    const seg = scaledData(decodeNifti(await getObject(cases[0].seg!), "seg"));
    const n = 20 * 18 * 16;
    for (let k = 0; k < 4; k++) {
      let s = 0, s2 = 0, count = 0;
      for (let i = 0; i < n; i++) {
        const v = loaded.image[4 * i + k];
        if (v !== 0) {
          s += v;
          s2 += v * v;
          count++;
        }
      }
      assertAlmostEquals(s / count, 0, 1e-3);
      assertAlmostEquals(Math.sqrt(s2 / count), 1, 1e-2);
    }
    for (let i = 0; i < n; i++) assertEquals(loaded.target![3 * i + 2], seg[i] === 3 ? 1 : 0);
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
