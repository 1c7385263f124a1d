/**
 * pipeline/segmentation/jobs.ts: retries of a transient failure with backoff within the budget.
 * @module
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { type JobView } from "../../pipeline/segmentation/mod.ts";
import { exists } from "../../pipeline/storage/objects.ts";
import { startS3rver } from "../_s3rver.ts";
import {
  awsRecord,
  fakeRunner,
  job,
  placeholderCase,
  post,
  startTestService,
} from "./_service_fixtures.ts";

Deno.test("service: a transient failure is retried with backoff within the budget; a failed version's redelivery runs again", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const ids = ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"];
  for (const id of ids) {
    await placeholderCase("s3://brats/in/", id, ["flair", "t1", "t1ce", "t2"]);
  }
  const ev = (id: string) => ({ Records: [awsRecord("brats", `in/${id}/${id}_t2.nii.gz`)] });
  const unreachable = () =>
    new Error(`Cannot reach S3 endpoint http://127.0.0.1:1 for s3://brats/in/x: connect`, {
      cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }),
    });
  const runner = fakeRunner();
  const logs: Record<string, unknown>[] = [];
  const service = await startTestService(runner, {
    queue: 8,
    retry: { budgetMs: 600, baseDelayMs: 100 },
    log: (e) => logs.push(e),
  });
  try {
    // 1: S3 unreachable once, then back: the same job runs again and is done.
    const a = await post(service.url, ev(ids[0]), undefined);
    assertEquals(a.status, 202);
    await runner.started(1);
    runner.calls[0].finish(unreachable());
    await runner.started(2);
    assertEquals(runner.calls[1].c.id, ids[0]);
    runner.calls[1].finish();
    const done = await job(service.url, String(a.body.id), "");
    assertEquals([done.status, done.attempts], ["done", 2], JSON.stringify(done));
    assert(logs.some((l) => l.status === "retrying" && l.id === a.body.id));
    assertEquals(await exists(`s3://brats/seg/${ids[0]}.error.json`), false);

    // 2: unreachable for longer than the budget: failed for good, saying so, and recorded.
    const b = await post(service.url, ev(ids[1]), undefined);
    assertEquals(b.status, 202);
    for (let n = 3;; n++) {
      await runner.started(n);
      runner.calls[n - 1].finish(unreachable());
      let now: JobView;
      do { // until its next attempt has started, or it has failed for good
        await new Promise((r) => setTimeout(r, 10));
        now = await (await fetch(`${service.url}/jobs/${b.body.id}`)).json() as JobView;
      } while (now.status !== "failed" && runner.calls.length === n);
      if (now.status === "failed") break;
      assert(n < 12, "the budget bounds the attempts");
    }
    const failed = await job(service.url, String(b.body.id), "");
    assertEquals(failed.status, "failed");
    assertStringIncludes(failed.error!, "transient; gave up after");
    assert(failed.attempts >= 2, JSON.stringify(failed));
    assert(await exists(`s3://brats/seg/${ids[1]}.error.json`));

    // 3: the redelivered event of that failed version is run again (not "duplicate").
    const calls = runner.calls.length;
    const again = await post(service.url, ev(ids[1]), undefined);
    assertEquals([again.status, again.body.status], [202, "queued"], JSON.stringify(again));
    await runner.started(calls + 1);
    runner.calls[calls].finish();
    assertEquals((await job(service.url, String(again.body.id), "")).status, "done");
    // A non-transient failure fails at once; its redelivery runs again too.
    const c = await post(service.url, ev(ids[2]), undefined);
    await runner.started(calls + 2);
    runner.calls[calls + 1].finish(new Error(`Cannot read "x_t1.nii.gz": truncated`));
    const cf = await job(service.url, String(c.body.id), "");
    assertEquals([cf.status, cf.attempts], ["failed", 1]);
    const c2 = await post(service.url, ev(ids[2]), undefined);
    assertEquals(c2.status, 202, JSON.stringify(c2));
    await runner.started(calls + 3);
    runner.calls[calls + 2].finish();
    assertEquals((await job(service.url, String(c2.body.id), "")).status, "done");
    // What succeeded stays a duplicate.
    const dup = await post(service.url, ev(ids[2]), undefined);
    assertEquals([dup.status, dup.body.status], [200, "duplicate"]);
  } finally {
    await service.abort();
  }
});
