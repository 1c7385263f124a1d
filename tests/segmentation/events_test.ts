/**
 * pipeline/segmentation/events.ts: which records can start a case (triageRecord) and which cases an
 * event completes (casesFromEvent, listing folders on s3rver).
 * @module
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import {
  casesFromEvent,
  parseS3Event,
  type S3ObjectEvent,
  triageRecord,
} from "../../pipeline/segmentation/mod.ts";
import { putObject } from "../../pipeline/storage/objects.ts";
import { startS3rver } from "../_s3rver.ts";
import { awsRecord, placeholderCase, snsWrap, TEST_EVENT } from "./_service_fixtures.ts";

Deno.test("triageRecord() lets only new case files outside the output prefix through", () => {
  const rec = (key: string, eventName = "ObjectCreated:Put"): S3ObjectEvent => {
    const e = parseS3Event({ Records: [{ ...awsRecord("brats", key), eventName }] });
    assert(e.kind === "records");
    return e.records[0];
  };
  const opts = { out: "s3://brats/seg", input: "s3://brats/incoming/" };
  const ok = triageRecord(rec("incoming/X/BraTS2021_00007_t1.nii.gz"), opts);
  assertEquals("id" in ok && [ok.id, ok.naming, ok.part, ok.folder], [
    "BraTS2021_00007",
    "brats2021",
    "t1",
    "s3://brats/incoming/X/",
  ]);
  const flat = triageRecord(rec("incoming/BraTS-GLI-00002-000-seg.nii"), opts);
  assertEquals("id" in flat && [flat.id, flat.part, flat.folder], [
    "BraTS-GLI-00002-000",
    "seg",
    "s3://brats/incoming/",
  ]);
  const reasons = [
    rec("seg/BraTS2021_00007.nii.gz"),
    rec("seg/BraTS2021_00007_t1.nii.gz"), // even a case-like name under the output prefix
    rec("incoming/X/BraTS2021_00007.json"),
    rec("incoming/X/._BraTS2021_00007_t1.nii.gz"),
    rec("other/BraTS2021_00007_t1.nii.gz"),
    rec("incoming/X/BraTS2021_00007_t1.nii.gz", "ObjectRemoved:Delete"),
  ].map((r) => {
    const t = triageRecord(r, opts);
    return "reason" in t ? t.reason : "accepted";
  });
  assertStringIncludes(reasons[0], "output prefix");
  assertStringIncludes(reasons[1], "output prefix");
  assertStringIncludes(reasons[2], "not a BraTS case file");
  assertStringIncludes(reasons[3], "not a BraTS case file");
  assertStringIncludes(reasons[4], "outside the input prefix");
  assertStringIncludes(reasons[5], "not an object-created event (ObjectRemoved:Delete)");
  // Another bucket with the same prefix is not the output.
  const e = parseS3Event({ Records: [awsRecord("other", "seg/BraTS2021_00007_t1.nii.gz")] });
  assert(e.kind === "records");
  assert("id" in triageRecord(e.records[0], { out: "s3://brats/seg/" }));
});

Deno.test("casesFromEvent() lists the case's folder: waiting, ready, grouped, ignored", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  await placeholderCase("s3://brats/in/", "BraTS2021_00001", ["flair", "t1", "t1ce"]);
  const key = (p: string) => `in/BraTS2021_00001/BraTS2021_00001_${p}.nii.gz`;
  const first = await casesFromEvent({ Records: [awsRecord("brats", key("flair"))] });
  assertEquals(first.cases, []);
  assertEquals(first.waiting.length, 1);
  assertStringIncludes(first.waiting[0].reason, "missing modality t2");

  await placeholderCase("s3://brats/in/", "BraTS2021_00001", ["t2"]);
  await putObject("s3://brats/seg/BraTS2021_00001.nii.gz", "output");
  const r = await casesFromEvent(
    snsWrap({
      Records: [
        awsRecord("brats", key("t2")),
        awsRecord("brats", key("t1")),
        awsRecord("brats", "seg/BraTS2021_00001.nii.gz"),
      ],
    }),
    { out: "s3://brats/seg/" },
  );
  assertEquals(r.cases.length, 1);
  assertEquals(r.cases[0].id, "BraTS2021_00001");
  assertEquals(r.cases[0].caseUri, "s3://brats/in/BraTS2021_00001/");
  assertEquals(r.cases[0].records.length, 2);
  assertEquals(
    r.cases[0].case.images.t2,
    "s3://brats/in/BraTS2021_00001/BraTS2021_00001_t2.nii.gz",
  );
  assertEquals(r.ignored.map((i) => i.key), ["s3://brats/seg/BraTS2021_00001.nii.gz"]);
  assertEquals((await casesFromEvent(TEST_EVENT)).kind, "test");
});
