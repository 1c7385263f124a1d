/**
 * pipeline/segmentation/runner.ts: the in-process runner, segmenting a case with a real model.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals } from "@std/assert";
import { createUNet, disposeUNet, resolveConfig } from "../../model/mod.ts";
import { InProcessRunner } from "../../pipeline/segmentation/mod.ts";
import { saveModel } from "../../pipeline/training/model_store.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { exists } from "../../pipeline/storage/objects.ts";
import { startS3rver } from "../_s3rver.ts";
import { awsRecord, job, post, startTestService, tempDir } from "./_service_fixtures.ts";

Deno.test("service: the in-process runner segments a case and skips it when redone", async () => {
  await using tmp = await tempDir();
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const net = createUNet(
    resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
    { seed: 3 },
  );
  await saveModel(join(tmp.path, "model"), net);
  disposeUNet(net);
  const [id] = await writePhantomDataset("s3://brats/in/", {
    cases: 1,
    dims: [32, 32, 32],
    seed: 4,
  });
  const runner = await InProcessRunner.load(join(tmp.path, "model"), "cpu");
  const service = await startTestService(runner, {
    out: join(tmp.path, "seg"),
    model: join(tmp.path, "model"),
  });
  try {
    const statuses: string[] = [];
    for (const seq of ["01", "02"]) { // two PUTs of the same object: two versions, one result
      const r = await post(service.url, {
        Records: [awsRecord("brats", `in/${id}/${id}_t1.nii.gz`, { sequencer: seq })],
      }, undefined);
      assertEquals(r.status, 202, JSON.stringify(r));
      statuses.push((await job(service.url, String(r.body.id), "")).status);
    }
    assertEquals(statuses, ["done", "skipped"]);
    assert(await exists(join(tmp.path, "seg", `${id}.nii.gz`)));
    const record = JSON.parse(await Deno.readTextFile(join(tmp.path, "seg", `${id}.json`)));
    assertEquals(record.images.flair, `s3://brats/in/${id}/${id}_flair.nii.gz`);
  } finally {
    await service.drain();
  }
});
