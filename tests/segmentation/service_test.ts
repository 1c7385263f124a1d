/**
 * pipeline/segmentation/service.ts (with http.ts and intake.ts): the event service in-process with a
 * fake runner: refused buckets, one listing per folder, 413/503, coalescing, drain, abort, 502; with
 * the in-process runner, a case with no brain voxel is a failed job with an error record.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import {
  casesFromEvent,
  InProcessRunner,
  type JobView,
  MalformedEventError,
} from "../../pipeline/segmentation/mod.ts";
import { exists, getObject, putObject } from "../../pipeline/storage/objects.ts";
import { startS3rver } from "../_s3rver.ts";
import {
  awsRecord,
  fakeRunner,
  placeholderCase,
  post,
  startTestService,
} from "./_service_fixtures.ts";
import { tinyModel } from "./_segment_fixtures.ts";
import { pathMissing } from "../_train_fixtures.ts";
import { EMPTY_ID, writeEmptyCase } from "../_empty_case.ts";

await tf.setBackend("cpu");

Deno.test('service: an event naming bucket "brats/seg" is refused (400), nothing is listed or queued', async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  await placeholderCase("s3://brats/seg/", "BraTS2021_00001", ["flair", "t1", "t1ce", "t2"]);
  const runner = fakeRunner();
  const service = await startTestService(runner);
  try {
    const before = s3.requests.length;
    // Resolves to s3://brats/seg/BraTS2021_00001/..., under --out: it must never start a case.
    const r = await post(service.url, {
      Records: [awsRecord("brats/seg", "BraTS2021_00001/BraTS2021_00001_t1.nii.gz")],
    }, undefined);
    assertEquals(r.status, 400, JSON.stringify(r));
    assertStringIncludes(String(r.body.error), '"brats/seg" is not a valid S3 bucket name');
    assertEquals(s3.requests.length, before, "nothing was listed");
    assertEquals(runner.calls.length, 0);
  } finally {
    await service.abort();
  }
});

Deno.test("service: one event naming 40 cases of a flat folder lists it once; over 100 records is 413", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const ids = Array.from({ length: 40 }, (_, i) => `BraTS2021_${String(i).padStart(5, "0")}`);
  for (const id of ids) {
    for (const p of ["flair", "t1", "t1ce", "t2"]) {
      await putObject(`s3://brats/flat/${id}_${p}.nii.gz`, `fake ${p}`);
    }
  }
  const runner = fakeRunner();
  const service = await startTestService(runner, {
    queue: 64,
  });
  const lists = () => s3.requests.filter((r) => r.query["list-type"] === "2").length;
  try {
    const before = lists();
    const r = await post(service.url, {
      Records: ids.flatMap((id) => [
        awsRecord("brats", `flat/${id}_t2.nii.gz`),
        awsRecord("brats", `flat/${id}_t1.nii.gz`),
      ]),
    }, undefined);
    assertEquals(r.status, 202, JSON.stringify(r).slice(0, 300));
    assertEquals((r.body.jobs as unknown[]).length, 40, "one job per case");
    assertEquals(lists() - before, 1, "the folder is listed once for the whole event");

    const atCap = lists();
    const many = await post(service.url, {
      Records: Array.from(
        { length: 101 },
        (_, i) =>
          awsRecord("brats", `flat/BraTS2021_${String(1000 + i).padStart(5, "0")}_t1.nii.gz`),
      ),
    }, undefined);
    assertEquals(many.status, 413, JSON.stringify(many).slice(0, 300));
    assertStringIncludes(String(many.body.error), "101 records; at most 100");
    assertEquals(lists(), atCap, "nothing listed for a refused event");
    // casesFromEvent (segment --event) shares the rules.
    const found = await casesFromEvent({
      Records: ids.slice(0, 10).map((id) => awsRecord("brats", `flat/${id}_t2.nii.gz`)),
    });
    assertEquals(found.cases.length, 10);
    assertEquals(lists(), atCap + 1);
    await assertRejects(
      () => casesFromEvent({ Records: Array(101).fill(awsRecord("brats", "flat/x_t1.nii.gz")) }),
      MalformedEventError,
      "at most 100",
    );
  } finally {
    await service.abort();
  }
});

Deno.test("service: queue bound (503), body cap (413), coalescing, drain finishes then closes", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const ids = ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"];
  for (const id of ids) {
    await placeholderCase("s3://brats/in/", id, ["flair", "t1", "t1ce", "t2"]);
  }
  const ev = (id: string, p: string, seq = "01") => ({
    Records: [awsRecord("brats", `in/${id}/${id}_${p}.nii.gz`, { sequencer: seq })],
  });
  const runner = fakeRunner();
  const logs: Record<string, unknown>[] = [];
  const service = await startTestService(runner, {
    queue: 1,
    token: "t0ken",
    maxBodyBytes: 4096,
    log: (e) => logs.push(e),
  });
  try {
    const a = await post(service.url, ev(ids[0], "t1"));
    assertEquals(a.status, 202);
    await runner.started(1); // case 1 running
    const b = await post(service.url, ev(ids[1], "t1"));
    assertEquals(b.status, 202); // case 2 queued
    // Another modality's event for queued case 2 joins its job instead of adding one.
    const b2 = await post(service.url, ev(ids[1], "t2"));
    assertEquals([b2.status, b2.body.id], [202, b.body.id]);
    const c = await post(service.url, ev(ids[2], "t1"));
    assertEquals(c.status, 503);
    assertStringIncludes(String(c.body.error), "queue full");
    // Refused events are not remembered: the sender's retry is processed.
    const big = await post(service.url, { Records: [], pad: "x".repeat(5000) });
    assertEquals(big.status, 413);
    const jobsBefore = (await (await fetch(`${service.url}/jobs`, {
      headers: { authorization: "Bearer t0ken" },
    })).json()).jobs as JobView[];
    assertEquals(jobsBefore.length, 2);

    const drained = service.drain();
    const refused = await post(service.url, ev(ids[2], "t2"));
    assertEquals(refused.status, 503);
    const health = await fetch(`${service.url}/healthz`);
    assertEquals([health.status, (await health.json()).status], [503, "draining"]);
    runner.calls[0].finish();
    await runner.started(2);
    runner.calls[1].finish(new Error(`Cannot read "s3://brats/in/x_t1.nii.gz": truncated`));
    await drained;
    await service.closed;
    const done = logs.filter((l) => l.event === "job" && l.status !== "running");
    assertEquals(done.map((l) => [l.case, l.status]), [[ids[0], "done"], [ids[1], "failed"]]);
    // The failure is recorded beside the outputs.
    const record = JSON.parse(
      new TextDecoder().decode(await getObject(`s3://brats/seg/${ids[1]}.error.json`)),
    );
    assertEquals(record.case, ids[1]);
    assertStringIncludes(record.error, "truncated");
    assertEquals(record.trigger.length, 2);
    assertEquals(logs.at(-1)?.event, "stopped");
  } finally {
    await service.abort();
  }
});

Deno.test("service: abort abandons the running case without an error record, drops the queue", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const ids = ["BraTS2021_00001", "BraTS2021_00002"];
  for (const id of ids) {
    await placeholderCase("s3://brats/in/", id, ["flair", "t1", "t1ce", "t2"]);
  }
  const runner = fakeRunner();
  const logs: Record<string, unknown>[] = [];
  const service = await startTestService(runner, {
    log: (e) => logs.push(e),
  });
  for (const id of ids) {
    const r = await post(service.url, {
      Records: [awsRecord("brats", `in/${id}/${id}_t2.nii.gz`)],
    }, undefined);
    assertEquals(r.status, 202);
  }
  await runner.started(1);
  await service.abort();
  await service.closed;
  const jobs = logs.filter((l) => l.event === "job" && l.status === "failed");
  assertEquals(jobs.map((j) => [j.case, j.error]), [[ids[0], "abandoned at shutdown"]]);
  assertEquals(await exists(`s3://brats/seg/${ids[0]}.error.json`), false);
  assertEquals(runner.calls.length, 1, "the queued case never started");
});

Deno.test("service errors: an unreachable store is 502 and the event can be retried", async () => {
  const runner = fakeRunner();
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const service = await startTestService(runner);
  try {
    const ev = { Records: [awsRecord("nobucket", "in/BraTS2021_00001_t1.nii.gz")] };
    const first = await post(service.url, ev, undefined);
    assertEquals(first.status, 502, JSON.stringify(first));
    assertStringIncludes(String(first.body.error), "nobucket");
    await s3.createBucket("nobucket");
    await placeholderCase("s3://nobucket/in/", "BraTS2021_00001", ["flair", "t1", "t1ce", "t2"]);
    const ev2 = {
      Records: [awsRecord("nobucket", "in/BraTS2021_00001/BraTS2021_00001_t1.nii.gz")],
    };
    assertEquals((await post(service.url, ev2, undefined)).status, 202);
    await runner.started(1);
    runner.calls[0].finish();
  } finally {
    await service.drain();
  }
  await assertRejects(() => fetch(`${service.url}/healthz`));
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
