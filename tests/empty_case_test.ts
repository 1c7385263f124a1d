/**
 * A case with no brain voxel (every modality 0 everywhere) is an error for that case: in batch
 * `segment`, in the service's path through the shared Segmenter, and in training's preparation.
 * @module
 */
import * as tf from "../model/tf.ts";
import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { createUNet, disposeUNet } from "../model/mod.ts";
import { findCases, MODALITIES, SUFFIXES } from "../pipeline/cases/cases.ts";
import { saveModel } from "../pipeline/training/model_store.ts";
import { createNiftiHeader, encodeNifti } from "../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../pipeline/synth/phantom.ts";
import { loadCase, preprocessCase } from "../pipeline/cases/preprocess.ts";
import { exists, getObject, joinUri, putObject } from "../pipeline/storage/objects.ts";
import { segment, Segmenter } from "../pipeline/segmentation/mod.ts";
import { InProcessRunner, type JobView } from "../pipeline/segmentation/mod.ts";
import { train } from "../pipeline/training/mod.ts";
import { startS3rver } from "./_s3rver.ts";
import { startTestService } from "./segmentation/_service_fixtures.ts";
import { pathMissing, TINY, tinySettings } from "./_train_fixtures.ts";

await tf.setBackend("cpu");

const EMPTY_ID = "BraTS2021_00009";
const DIMS: [number, number, number] = [24, 28, 20];

/** Writes case `EMPTY_ID` under `root`: four all-zero int16 modalities and an empty reference. */
async function writeEmptyCase(root: string): Promise<void> {
  const n = DIMS[0] * DIMS[1] * DIMS[2];
  const affine = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]];
  const header = createNiftiHeader(DIMS, affine, "int16");
  for (const part of [...MODALITIES, "seg"] as const) {
    const uri = joinUri(root, EMPTY_ID, `${EMPTY_ID}_${SUFFIXES.brats2021[part]}.nii.gz`);
    await putObject(uri, encodeNifti(new Int16Array(n), "int16", header, { name: uri }));
  }
}

/** A tiny random network saved under `dir`. */
async function tinyModel(dir: string): Promise<string> {
  const net = createUNet(TINY, { seed: 2, zeroInitResidual: false });
  await saveModel(`${dir}/model`, net, undefined, { train_crop: "16" });
  disposeUNet(net);
  return `${dir}/model`;
}

Deno.test("preprocessCase and loadCase refuse a case with no brain voxel, naming it and its files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-empty-" });
  try {
    await writeEmptyCase(`${dir}/data`);
    const [c] = (await findCases(`${dir}/data`)).cases;
    for (const load of [preprocessCase, loadCase]) {
      const e = await assertRejects(
        () => load(c),
        RangeError,
        `case "${EMPTY_ID}": no brain voxel`,
      );
      assertStringIncludes((e as Error).message, c.images.flair);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("segment: a case with no brain voxel fails with an error record naming it, nothing else written; the others are segmented", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-empty-" });
  try {
    const [good] = await writePhantomDataset(`${dir}/data`, { cases: 1, dims: DIMS, seed: 5 });
    await writeEmptyCase(`${dir}/data`);
    const model = await tinyModel(dir);
    const r = await segment({ model, input: `${dir}/data`, out: `${dir}/seg` });
    assertEquals(r.cases.map((c) => [c.id, c.status]), [[good, "done"]]);
    assertEquals(r.failed.map((f) => f.id), [EMPTY_ID]);
    assertStringIncludes(r.failed[0].error, `case "${EMPTY_ID}": no brain voxel`);
    const record = JSON.parse(await Deno.readTextFile(`${dir}/seg/${EMPTY_ID}.error.json`));
    assertEquals(record.case, EMPTY_ID);
    assertStringIncludes(record.error, "no brain voxel");
    for (const f of [".nii.gz", ".json", ".metrics.json"]) {
      assert(await pathMissing(`${dir}/seg/${EMPTY_ID}${f}`), `no ${EMPTY_ID}${f}`);
    }
    assert(await exists(`${dir}/seg/${good}.nii.gz`));

    // The Segmenter that `serve` shares refuses it the same way.
    const segmenter = await Segmenter.load(model, {});
    try {
      const c = (await findCases(`${dir}/data`)).cases.find((c) => c.id === EMPTY_ID)!;
      await assertRejects(
        () => segmenter.segmentCase(c, `${dir}/seg2`),
        RangeError,
        `case "${EMPTY_ID}": no brain voxel`,
      );
      assert(await pathMissing(`${dir}/seg2`), "nothing written");
    } finally {
      segmenter.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve: an event completing a case with no brain voxel is a failed job with an error record naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-empty-" });
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  try {
    await writeEmptyCase("s3://brats/in");
    const model = await tinyModel(dir);
    const runner = await InProcessRunner.load(model, "cpu");
    const out = join(dir, "seg");
    const service = await startTestService(runner, { out, model });
    try {
      const key = `in/${EMPTY_ID}/${EMPTY_ID}_t1.nii.gz`;
      const res = await fetch(service.url, {
        method: "POST",
        body: JSON.stringify({
          Records: [{
            eventVersion: "2.1",
            eventSource: "aws:s3",
            eventTime: "2026-12-03T10:11:12.345Z",
            eventName: "ObjectCreated:Put",
            s3: { bucket: { name: "brats" }, object: { key, size: 1, sequencer: "01" } },
          }],
        }),
      });
      const accepted = await res.json();
      assertEquals(res.status, 202, JSON.stringify(accepted));
      let view: JobView;
      const deadline = Date.now() + 60_000;
      for (;;) {
        view = await (await fetch(`${service.url}/jobs/${accepted.id}`)).json();
        if (view.status !== "queued" && view.status !== "running") break;
        assert(Date.now() < deadline, `job did not finish: ${JSON.stringify(view)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      assertEquals(view.status, "failed", JSON.stringify(view));
      assertStringIncludes(String(view.error), `case "${EMPTY_ID}": no brain voxel`);
      const record = JSON.parse(new TextDecoder().decode(
        await getObject(join(out, `${EMPTY_ID}.error.json`)),
      ));
      assertEquals(record.case, EMPTY_ID);
      assert(await pathMissing(join(out, `${EMPTY_ID}.nii.gz`)), "no segmentation");
    } finally {
      await service.drain();
    }
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
