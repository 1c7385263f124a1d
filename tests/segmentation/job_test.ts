/**
 * pipeline/segmentation/job.ts: one case id in two input folders (sourceConflict).
 * @module
 */
import { assertEquals, assertStringIncludes } from "@std/assert";
import { putObject } from "../../pipeline/storage/objects.ts";
import { startS3rver } from "../_s3rver.ts";
import {
  awsRecord,
  fakeRunner,
  job,
  placeholderCase,
  post,
  startTestService,
} from "./_service_fixtures.ts";

Deno.test("service: one case id in two input folders is segmented from one; the other is refused with an error record", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const id = "BraTS2021_00001";
  for (const f of ["a", "b", "c"]) {
    await placeholderCase(`s3://brats/in/${f}/`, id, ["flair", "t1", "t1ce", "t2"]);
  }
  const ev = (f: string) => ({ Records: [awsRecord("brats", `in/${f}/${id}/${id}_t2.nii.gz`)] });
  const runner = fakeRunner();
  const service = await startTestService(runner, {
    concurrency: 2,
    queue: 8,
  });
  try {
    // While folder a's case runs, folder b's is refused, naming both folders.
    const a = await post(service.url, ev("a"), undefined);
    await runner.started(1);
    const b = await post(service.url, ev("b"), undefined);
    assertEquals(b.status, 202);
    const fb = await job(service.url, String(b.body.id), "");
    assertEquals(fb.status, "failed", JSON.stringify(fb));
    assertStringIncludes(fb.error!, `case "${id}" of s3://brats/in/b/${id}/ is refused`);
    assertStringIncludes(fb.error!, `from s3://brats/in/a/${id}/`);
    assertEquals(fb.outputs, [`s3://brats/seg/${id}.error.json`]);
    assertEquals(runner.calls.length, 1, "folder b's case never ran");
    runner.calls[0].finish();
    assertEquals((await job(service.url, String(a.body.id), "")).status, "done");
    // Once folder a's output record exists (segment writes its inputs there), c is refused too.
    await putObject(
      `s3://brats/seg/${id}.json`,
      JSON.stringify({ images: { flair: `s3://brats/in/a/${id}/${id}_flair.nii.gz` } }),
    );
    const c = await post(service.url, ev("c"), undefined);
    const fc = await job(service.url, String(c.body.id), "");
    assertEquals(fc.status, "failed");
    assertStringIncludes(
      fc.error!,
      `s3://brats/seg/${id}.nii.gz was segmented from s3://brats/in/a/`,
    );
    assertEquals(runner.calls.length, 1);
    // Folder a's own case is not refused.
    const a2 = await post(service.url, {
      Records: [awsRecord("brats", `in/a/${id}/${id}_t1.nii.gz`)],
    }, undefined);
    await runner.started(2);
    runner.calls[1].finish();
    assertEquals((await job(service.url, String(a2.body.id), "")).status, "done");
  } finally {
    await service.abort();
  }
});
