/**
 * Events for the cases of nnU-Net v2 and MSD datasets (pipeline/segmentation/event_datasets.ts):
 * their images recognised under imagesTr/imagesTs, a case complete when every channel the model
 * takes is there, its labelsTr reference found; and a case its folder holds in a form that cannot
 * be segmented is a failed job of the service with its error record, as `segment --event` fails it.
 * @module
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import {
  casesFromEvent,
  parseS3Event,
  type S3ObjectEvent,
  triageRecord,
} from "../../pipeline/segmentation/mod.ts";
import { getObject, putObject } from "../../pipeline/storage/objects.ts";
import { startS3rver } from "../_s3rver.ts";
import {
  awsRecord,
  fakeRunner,
  placeholderCase,
  post,
  startTestService,
} from "./_service_fixtures.ts";
import { MSD_DATASET, NNUNET_DATASET } from "./_dataset_fixtures.ts";

const rec = (key: string): S3ObjectEvent => {
  const e = parseS3Event({ Records: [awsRecord("data", key)] });
  assert(e.kind === "records");
  return e.records[0];
};

Deno.test("triageRecord() takes nnU-Net channel files and MSD images under imagesTr/imagesTs", () => {
  const opts = { out: "s3://data/seg/", dataset: NNUNET_DATASET };
  const t = (key: string) => triageRecord(rec(key), opts);
  const nn = t("ds/imagesTs/Phantom_003_0001.nii.gz");
  assertEquals("id" in nn && [nn.id, nn.naming, nn.part, nn.folder, nn.ending], [
    "Phantom_003",
    "nnunet",
    "0001",
    "s3://data/ds/imagesTs/",
    ".nii.gz",
  ]);
  const msd = t("Task01/imagesTr/BRATS_001.nii");
  assertEquals("id" in msd && [msd.id, msd.naming, msd.part, msd.ending], [
    "BRATS_001",
    "msd",
    "image",
    ".nii",
  ]);
  // A reference starts the case of the images beside it.
  const ref = t("ds/labelsTr/Phantom_000.nii.gz");
  assertEquals("id" in ref && [ref.id, ref.naming, ref.part, ref.folder], [
    "Phantom_000",
    "nnunet",
    "seg",
    "s3://data/ds/imagesTr/",
  ]);
  // BraTS names keep their meaning wherever they are.
  const brats = t("ds/imagesTs/BraTS2021_00001_t1.nii.gz");
  assertEquals("id" in brats && [brats.naming, brats.part], ["brats2021", "t1"]);
  const reasons = [
    "ds/labelsTr/notes.txt",
    "ds/dataset.json",
    "ds/imagesTs/._Phantom_003_0000.nii.gz",
    "ds/imagesTs/notes.txt",
    "ds/Phantom_003_0000.nii.gz",
    "seg/imagesTs/Phantom_003_0000.nii.gz",
  ].map((k) => {
    const r = t(k);
    return "reason" in r ? r.reason : "accepted";
  });
  for (const r of reasons.slice(0, 5)) assertStringIncludes(r, "not a");
  assertStringIncludes(reasons[2], "dataset case image");
  assertStringIncludes(reasons[5], "output prefix");
});

Deno.test("casesFromEvent(): an nnU-Net case waits for every channel the model takes, then is ready with its labelsTr reference", async () => {
  await using _s3 = await startS3rver({ buckets: ["data"] });
  const dataset = NNUNET_DATASET;
  const key = (k: number) => `ds/imagesTr/Phantom_000_000${k}.nii.gz`;
  await putObject(`s3://data/${key(0)}`, "flair");
  const first = await casesFromEvent({ Records: [awsRecord("data", key(0))] }, { dataset });
  assertEquals(first.cases, []);
  assertEquals(first.waiting.map((w) => w.id), ["Phantom_000"]);
  assertStringIncludes(
    first.waiting[0].reason,
    "missing channel 0001 (T1): Phantom_000_0001.nii.gz; the model (trained on PhantomWT) takes 2",
  );

  await putObject(`s3://data/${key(1)}`, "t1");
  await putObject("s3://data/ds/labelsTr/Phantom_000.nii.gz", "reference");
  const done = await casesFromEvent({ Records: [awsRecord("data", key(1))] }, { dataset });
  assertEquals(done.waiting, []);
  assertEquals(done.cases.length, 1);
  const c = done.cases[0].case;
  assertEquals(c.naming, "nnunet");
  assertEquals(c.channels, [
    { name: "FLAIR", uri: `s3://data/${key(0)}` },
    { name: "T1", uri: `s3://data/${key(1)}` },
  ]);
  assertEquals(c.seg, "s3://data/ds/labelsTr/Phantom_000.nii.gz");
  assertEquals(c.dataset, dataset);

  // A BraTS model (no description) takes four channels: two are not a case yet.
  const brats = await casesFromEvent({ Records: [awsRecord("data", key(1))] });
  assertStringIncludes(brats.waiting[0].reason, "missing channel 0002 (t1ce)");

  // A channel beyond the model's: unusable, not waiting.
  await putObject(`s3://data/${key(2)}`, "extra");
  const extra = await casesFromEvent({ Records: [awsRecord("data", key(2))] }, { dataset });
  assertEquals(extra.cases, []);
  assertStringIncludes(extra.unusable[0].reason, "channel 0002 beyond the 2 the model");
});

Deno.test("casesFromEvent(): an MSD image is a whole case, its channels the volumes the model takes; two files for it are unusable", async () => {
  await using _s3 = await startS3rver({ buckets: ["data"] });
  const dataset = MSD_DATASET;
  await putObject("s3://data/Task01/imagesTs/BRATS_009.nii.gz", "4-D image");
  const r = await casesFromEvent(
    { Records: [awsRecord("data", "Task01/imagesTs/BRATS_009.nii.gz")] },
    { dataset },
  );
  assertEquals(r.cases.length, 1);
  const c = r.cases[0].case;
  assertEquals(c.id, "BRATS_009");
  assertEquals(
    c.channels,
    dataset.channels.map((name, volume) => ({
      name,
      uri: "s3://data/Task01/imagesTs/BRATS_009.nii.gz",
      volume,
    })),
  );
  assertEquals(c.seg, undefined, "imagesTs holds no reference");

  await putObject("s3://data/Task01/imagesTs/BRATS_009.nii", "again");
  const twice = await casesFromEvent(
    { Records: [awsRecord("data", "Task01/imagesTs/BRATS_009.nii")] },
    { dataset },
  );
  assertEquals(twice.cases, []);
  assertStringIncludes(twice.unusable[0].reason, "more than one file for its image");

  // A reference in labelsTr/ starts the case of its image in imagesTr/ (the layout its image
  // tells, whatever the model's), or nothing while that image is not there.
  const label = (id: string) => ({ Records: [awsRecord("data", `Task01/labelsTr/${id}.nii.gz`)] });
  await putObject("s3://data/Task01/labelsTr/BRATS_002.nii.gz", "reference");
  const early = await casesFromEvent(label("BRATS_002"), { dataset });
  assertEquals(early.cases, []);
  assertStringIncludes(early.ignored[0].reason, 'reference of case "BRATS_002": no image of it');
  await putObject("s3://data/Task01/imagesTr/BRATS_002.nii.gz", "4-D image");
  const scored = await casesFromEvent(label("BRATS_002"));
  assertEquals(scored.cases.map((x) => [x.case.naming, x.case.channels?.length, x.case.seg]), [
    ["msd", 4, "s3://data/Task01/labelsTr/BRATS_002.nii.gz"],
  ]);
});

Deno.test("service: nnU-Net channel events wait, then queue the case; a case with two files for one modality is a failed job with its error record", async () => {
  await using _s3 = await startS3rver({ buckets: ["data"] });
  const runner = fakeRunner();
  const service = await startTestService(runner, {
    out: "s3://data/seg/",
    dataset: NNUNET_DATASET,
  });
  try {
    const key = (k: number) => `ds/imagesTs/Phantom_004_000${k}.nii.gz`;
    await putObject(`s3://data/${key(0)}`, "flair");
    const w = await post(service.url, { Records: [awsRecord("data", key(0))] }, undefined);
    assertEquals([w.status, w.body.status], [202, "waiting"], JSON.stringify(w.body));
    await putObject(`s3://data/${key(1)}`, "t1");
    const q = await post(service.url, { Records: [awsRecord("data", key(1))] }, undefined);
    assertEquals([q.status, q.body.status], [202, "queued"], JSON.stringify(q.body));
    await runner.started(1);
    assertEquals(runner.calls[0].c.channels?.map((ch) => ch.name), ["FLAIR", "T1"]);
    runner.calls[0].finish();

    // Before: 200 "ignored", nothing recorded, while `segment --event` wrote an error record.
    const id = "BraTS2021_00002";
    await placeholderCase("s3://data/in/", id, ["flair", "t1", "t1ce", "t2"]);
    await putObject(`s3://data/in/${id}/${id}_flair.nii`, "second flair");
    const f = await post(
      service.url,
      { Records: [awsRecord("data", `in/${id}/${id}_flair.nii`)] },
      undefined,
    );
    assertEquals([f.status, f.body.status], [200, "failed"], JSON.stringify(f.body));
    const [failed] = f.body.failed as { id: string; case: string; error: string }[];
    assertEquals(failed.case, id);
    assertStringIncludes(failed.error, "more than one file for flair");
    const view = await (await fetch(`${service.url}/jobs/${failed.id}`)).json();
    assertEquals(view.status, "failed");
    assertEquals(view.outputs, [`s3://data/seg/${id}.error.json`]);
    assertEquals(view.trigger, [`s3://data/in/${id}/${id}_flair.nii`]);
    const record = JSON.parse(new TextDecoder().decode(await getObject(view.outputs[0])));
    assertEquals([record.case, record.job], [id, failed.id]);
    assertStringIncludes(record.error, "more than one file for flair");
    assertEquals(runner.calls.length, 1, "nothing run for it");
    // Redelivered: tried again (the folder may have been fixed), failing again meanwhile.
    const again = await post(
      service.url,
      { Records: [awsRecord("data", `in/${id}/${id}_flair.nii`)] },
      undefined,
    );
    assertEquals(again.body.status, "failed");
  } finally {
    await service.drain();
  }
});
