/**
 * pipeline/training/run.ts: train() with the same seed gives the same weights, N+M epochs equal N,
 * resume and M, its outputs are written; a case with no brain voxel stops it before any checkpoint.
 * The command line: tests/tasks/train_test.ts.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertRejects } from "@std/assert";
import { loadModel } from "../../pipeline/training/model_store.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { listObjects } from "../../pipeline/storage/objects.ts";
import { disposeUNet } from "../../model/mod.ts";
import { train } from "../../pipeline/training/mod.ts";
import { pathMissing, phantomDataset, tinySettings, weightsOf } from "../_train_fixtures.ts";
import { DIMS, EMPTY_ID, writeEmptyCase } from "../_empty_case.ts";

await tf.setBackend("cpu");

/** The phantom dataset of this file's tests. */
const dataset = () => phantomDataset("revunet-train-");

Deno.test("train: same seed, same weights; N+M epochs equal N, resume, M; outputs written", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    const settings = tinySettings(data, { epochs: 3, valEvery: 2 });
    const oneWorker = { workers: 1 };
    const a = await train(settings, { out: `${dir}/a`, ...oneWorker, report: true });
    assertEquals(a.report, `${dir}/a/report/index.html`);
    const html = await Deno.readTextFile(a.report!);
    const state = JSON.parse(await Deno.readTextFile(`${dir}/a/${a.checkpoint}/state.json`));
    for (const id of state.split.val) assert(html.includes(id), `report shows ${id}`);
    assert(html.includes("<svg") && html.includes("data:image/png"), "curves and slices");
    assertEquals(a.epochs, 3);
    assertEquals(a.steps, 6);
    assert(!a.interrupted);
    await train(settings, { out: `${dir}/b`, ...oneWorker, workers: 0 });
    const partial = await train(settings, { out: `${dir}/c`, ...oneWorker, stopAfterEpoch: 1 });
    assertEquals(partial.epochs, 1);
    const resumed = await train(settings, { out: `${dir}/c`, ...oneWorker, resume: true });
    assertEquals(resumed.epochs, 3);

    const wa = await weightsOf(`${dir}/a/${a.checkpoint}`);
    const wb = await weightsOf(`${dir}/b/${a.checkpoint}`);
    const wc = await weightsOf(`${dir}/c/${resumed.checkpoint}`);
    for (const [name, v] of wa) {
      assertEquals(wb.get(name), v, `${name}: same seed, same weights (workers 1 vs 0)`);
      assertEquals(wc.get(name), v, `${name}: resumed run equals the uninterrupted one`);
    }
    const metrics = (await Deno.readTextFile(`${dir}/a/metrics.jsonl`)).trim().split("\n").map((
      l,
    ) => JSON.parse(l));
    assertEquals(metrics.map((m) => m.epoch), [1, 2, 3]);
    assert(metrics[1].val_dice && metrics[2].val_dice && !metrics[0].val_dice);
    assertEquals(
      (await Deno.readTextFile(`${dir}/c/metrics.jsonl`)).trim().split("\n").length,
      3,
      "the resumed run's history continues the first one's",
    );
    assert((await Deno.readTextFile(`${dir}/a/curves.svg`)).startsWith("<svg"));
    await loadModel(`${dir}/a/best`).then(({ net }) => disposeUNet(net));
    const kept = [
      ...new Set((await listObjects(`${dir}/a/checkpoints`)).map((o) => o.key.split("/")[0])),
    ]
      .sort();
    assertEquals(kept, ["epoch-0002-step-0000004", "epoch-0003-step-0000006"]);
    await assertRejects(
      () => train(settings, { out: `${dir}/a`, ...oneWorker }),
      Error,
      "already holds a training run",
    );
    await assertRejects(
      () => train(settings, { out: `${dir}/empty`, ...oneWorker, resume: true }),
      Error,
      "no run to resume",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train: a labelled case with no brain voxel stops the run before any checkpoint, naming the case", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-empty-" });
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 2, dims: DIMS, seed: 6 });
    await writeEmptyCase(`${dir}/data`);
    // Whichever split it falls in, training or validation, it is prepared before the first step.
    await assertRejects(
      () =>
        train(tinySettings(`${dir}/data`, { valCases: 1 }), {
          out: `${dir}/run`,
          workers: 0,
          cache: "",
        }),
      RangeError,
      `case "${EMPTY_ID}": no brain voxel`,
    );
    assert(await pathMissing(`${dir}/run/latest.json`), "no checkpoint");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
