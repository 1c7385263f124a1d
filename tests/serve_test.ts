/**
 * S3-triggered segmentation: pipeline/events.ts on real-shaped payloads (Amazon S3, SNS, MinIO,
 * EventBridge, s3:TestEvent), the service of tasks/serve.ts in-process with a fake segmenter
 * (queue, 503, 413, drain), and `main.ts serve` as a subprocess against s3rver with a real model:
 * events in, segmentations and metrics out, duplicates once, outputs and malformed or unauthenticated requests
 * ignored, a broken case recorded, SIGTERM finishing the work in flight and exiting 0.
 * @module
 */
import { join } from "node:path";
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { createUNet, disposeUNet, resolveConfig } from "../model/mod.ts";
import type { Case } from "../pipeline/cases/cases.ts";
import {
  casesFromEvent,
  decodeS3Key,
  MalformedEventError,
  parseS3Event,
  type S3ObjectEvent,
  triageRecord,
} from "../pipeline/segmentation/mod.ts";
import { saveModel } from "../pipeline/training/model_store.ts";
import { EVAL_REGIONS, evaluatePair, METRICS } from "../pipeline/evaluation/evaluation.ts";
import { decodeNiftiHeader } from "../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../pipeline/synth/phantom.ts";
import { exists, getObject, listObjects, putObject } from "../pipeline/storage/objects.ts";
import {
  type CaseRunner,
  InProcessRunner,
  type JobView,
  type RunOutcome,
  startEventService,
} from "../pipeline/segmentation/mod.ts";
import { ObjectNotFoundError } from "../pipeline/storage/objects.ts";
import { ROOT, runMain } from "./_cli.ts";
import { closedPort, type S3EventLike, startS3rver, useS3Env } from "./_s3rver.ts";
import { isTransientS3Error } from "../pipeline/storage/s3.ts";

// ---------------------------------------------------------------------------------------------
// Payloads shaped as the services send them

/** An Amazon S3 record for `key` (given raw; encoded here as S3 encodes keys). */
function awsRecord(bucket: string, key: string, extra: Record<string, unknown> = {}) {
  return {
    eventVersion: "2.1",
    eventSource: "aws:s3",
    awsRegion: "eu-west-1",
    eventTime: "2026-11-20T10:11:12.345Z",
    eventName: "ObjectCreated:Put",
    userIdentity: { principalId: "AWS:AIDAEXAMPLEUSER" },
    requestParameters: { sourceIPAddress: "203.0.113.7" },
    responseElements: { "x-amz-request-id": "7D4C2B1A", "x-amz-id-2": "abc/def=" },
    s3: {
      s3SchemaVersion: "1.0",
      configurationId: "brats-incoming",
      bucket: {
        name: bucket,
        ownerIdentity: { principalId: "A1EXAMPLEOWNER" },
        arn: `arn:aws:s3:::${bucket}`,
      },
      object: {
        key: encodeS3Key(key),
        size: 1234,
        eTag: "0123456789abcdef0123456789abcdef",
        versionId: "3HL4kqtJlcpXroDTDmjVBH40Nrjfkd",
        sequencer: "0065A1B2C3D4E5F601",
        ...extra,
      },
    },
  };
}

/** Keys as S3 puts them in events: URL-encoded, '/' kept, spaces as '+'. */
function encodeS3Key(key: string): string {
  return key.split("/").map((s) => encodeURIComponent(s).replace(/%20/g, "+")).join("/");
}

function snsWrap(message: unknown) {
  return {
    Type: "Notification",
    MessageId: "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
    TopicArn: "arn:aws:sns:eu-west-1:123456789012:brats-incoming",
    Subject: "Amazon S3 Notification",
    Message: JSON.stringify(message),
    Timestamp: "2026-11-20T10:11:13.001Z",
    SignatureVersion: "1",
    Signature: "EXAMPLEpH+..",
    SigningCertURL: "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-example.pem",
    UnsubscribeURL: "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
  };
}

/** MinIO's webhook body: its records encode keys with url.QueryEscape ('/' as %2F, ' ' as '+'). */
function minioEvent(bucket: string, key: string) {
  const escaped = encodeURIComponent(key).replace(/%20/g, "+");
  return {
    EventName: "s3:ObjectCreated:Put",
    Key: `${bucket}/${key}`,
    Records: [{
      eventVersion: "2.0",
      eventSource: "minio:s3",
      awsRegion: "",
      eventTime: "2026-11-20T10:11:12.345Z",
      eventName: "s3:ObjectCreated:Put",
      userIdentity: { principalId: "minioadmin" },
      requestParameters: { principalId: "minioadmin", region: "", sourceIPAddress: "10.0.0.5" },
      responseElements: {
        "x-amz-request-id": "17A0",
        "x-minio-origin-endpoint": "http://10.0.0.2",
      },
      s3: {
        s3SchemaVersion: "1.0",
        configurationId: "Config",
        bucket: {
          name: bucket,
          ownerIdentity: { principalId: "minioadmin" },
          arn: `arn:aws:s3:::${bucket}`,
        },
        object: {
          key: escaped,
          size: 4321,
          eTag: "fedcba9876543210fedcba9876543210",
          contentType: "application/gzip",
          userMetadata: { "content-type": "application/gzip" },
          sequencer: "17A0B1C2D3E4F506",
        },
      },
      source: { host: "10.0.0.5", port: "", userAgent: "MinIO (linux; amd64) minio-go/v7" },
    }],
  };
}

const TEST_EVENT = {
  Service: "Amazon S3",
  Event: "s3:TestEvent",
  Time: "2026-11-20T10:00:00.000Z",
  Bucket: "brats",
  RequestId: "5582815E1AEA5ADF",
  HostId: "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
};

/** s3rver's events, with keys encoded as S3 would (s3rver sends them raw). */
function asAws(events: S3EventLike[]): unknown[] {
  return events.map((e) => ({
    Records: e.Records.map((r) => ({
      ...r,
      s3: { ...r.s3, object: { ...r.s3.object, key: encodeS3Key(r.s3.object.key) } },
    })),
  }));
}

// ---------------------------------------------------------------------------------------------
// Parsing and triage

Deno.test("decodeS3Key() turns '+' into spaces and undoes %-escapes", () => {
  assertEquals(decodeS3Key("BraTS+2021/case%2B1_t1.nii.gz"), "BraTS 2021/case+1_t1.nii.gz");
  assertEquals(decodeS3Key("a%2Fb%20c"), "a/b c");
  assertThrows(() => decodeS3Key("bad%ZZkey"), MalformedEventError, "bad%ZZkey");
});

Deno.test("parseS3Event() reads an Amazon S3 record: bucket, decoded key, version fields", () => {
  const key = "incoming/BraTS 2021+x/BraTS2021_00001_t1ce.nii.gz";
  const e = parseS3Event(JSON.stringify({ Records: [awsRecord("brats", key)] }));
  assert(e.kind === "records");
  assertEquals(e.records.length, 1);
  const r = e.records[0];
  assertEquals(r.eventName, "ObjectCreated:Put");
  assertEquals(r.bucket, "brats");
  assertEquals(r.key, key);
  assertEquals(r.uri, `s3://brats/${key}`);
  assertEquals(r.versionId, "3HL4kqtJlcpXroDTDmjVBH40Nrjfkd");
  assertEquals(r.sequencer, "0065A1B2C3D4E5F601");
  assertEquals(r.eTag, "0123456789abcdef0123456789abcdef");
  // A redelivery is the same version; a new PUT of the key is not.
  const again = parseS3Event({ Records: [awsRecord("brats", key)] });
  const next = parseS3Event({
    Records: [awsRecord("brats", key, { sequencer: "0065A1B2C3D4E5F6FF" })],
  });
  assert(again.kind === "records" && next.kind === "records");
  assertEquals(again.records[0].dedupeKey, r.dedupeKey);
  assert(next.records[0].dedupeKey !== r.dedupeKey);
});

Deno.test("parseS3Event() unwraps SNS, reads MinIO and EventBridge, knows s3:TestEvent", () => {
  const key = "incoming/BraTS2021_00001/BraTS2021_00001_flair.nii.gz";
  const sns = parseS3Event(snsWrap({ Records: [awsRecord("brats", key)] }));
  assert(sns.kind === "records");
  assertEquals(sns.records[0].key, key);
  const snsTest = parseS3Event(new TextEncoder().encode(JSON.stringify(snsWrap(TEST_EVENT))));
  assertEquals(snsTest, { kind: "test", bucket: "brats" });
  assertEquals(parseS3Event(TEST_EVENT), { kind: "test", bucket: "brats" });

  const minio = parseS3Event(minioEvent("brats", "in coming/BraTS2021_00001_t2.nii.gz"));
  assert(minio.kind === "records");
  assertEquals(minio.records[0].eventName, "ObjectCreated:Put");
  assertEquals(minio.records[0].key, "in coming/BraTS2021_00001_t2.nii.gz");
  assertEquals(minio.records[0].sequencer, "17A0B1C2D3E4F506");
  // MinIO's minimal form: no Records, Key "bucket/key".
  const bare = parseS3Event({ EventName: "s3:ObjectCreated:Put", Key: "brats/a/b_t1.nii" });
  assert(bare.kind === "records");
  assertEquals([bare.records[0].bucket, bare.records[0].key], ["brats", "a/b_t1.nii"]);

  const eb = parseS3Event({
    version: "0",
    "detail-type": "Object Created",
    source: "aws.s3",
    account: "123456789012",
    region: "eu-west-1",
    detail: {
      version: "0",
      bucket: { name: "brats" },
      object: { key: "in/BraTS-GLI-00001-000-t1c.nii.gz", size: 9, etag: "abc", sequencer: "01" },
      reason: "PutObject",
    },
  });
  assert(eb.kind === "records");
  assertEquals(eb.records[0].eventName, "ObjectCreated:PutObject");
  assertEquals(eb.records[0].key, "in/BraTS-GLI-00001-000-t1c.nii.gz");

  const confirm = parseS3Event({
    Type: "SubscriptionConfirmation",
    TopicArn: "arn:aws:sns:eu-west-1:123456789012:brats-incoming",
    SubscribeURL: "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t",
    Token: "t",
  });
  assertEquals(confirm.kind, "subscription");
});

Deno.test("parseS3Event() names what is wrong with a malformed event", () => {
  const cases: [unknown, string][] = [
    ["not json", "not JSON"],
    ["[1]", "must be a JSON object"],
    [{}, 'no "Records" array'],
    [{ Records: [] }, "no records"],
    [{ Records: [{ eventName: "ObjectCreated:Put" }] }, "Records[0].s3.bucket.name"],
    [
      { Records: [{ eventName: "ObjectCreated:Put", s3: { bucket: { name: "b" } } }] },
      "object.key",
    ],
    [{ Records: [{ s3: { bucket: { name: "b" }, object: { key: "k" } } }] }, "eventName"],
    [{ Type: "Notification", Message: "{" }, "Message is not JSON"],
    [{ Type: "Notification" }, '"Message"'],
    [{ EventName: "s3:ObjectCreated:Put", Key: "nobucket" }, '"bucket/key"'],
    [{
      Records: [awsRecord("b", "x")].map((r) => ({
        ...r,
        s3: { ...r.s3, object: { key: "%E0%A4%A" } },
      })),
    }, "URL-encoded"],
  ];
  for (const [body, text] of cases) {
    assertThrows(
      () => parseS3Event(typeof body === "string" ? body : JSON.stringify(body)),
      MalformedEventError,
      text,
    );
  }
});

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

Deno.test("parseS3Event() refuses bucket names S3 does not allow, naming the rule", () => {
  for (const ok of ["brats", "a1b", "my.bucket-1", "x".repeat(63)]) {
    const e = parseS3Event({ Records: [awsRecord(ok, "in/BraTS2021_00001_t1.nii.gz")] });
    assert(e.kind === "records" && e.records[0].bucket === ok);
  }
  const bad: [string, string][] = [
    ["brats/seg", "only a-z, 0-9"],
    ["Brats", "only a-z, 0-9"],
    ["my_bucket", "only a-z, 0-9"],
    ["ab", "3 to 63"],
    ["x".repeat(64), "3 to 63"],
    ["-brats", "begin and end"],
    ["brats.", "begin and end"],
    ["a..b", "adjacent periods"],
    ["192.168.1.7", "IP address"],
    ["xn--brats", '"xn--"'],
    ["brats-s3alias", '"-s3alias"'],
  ];
  for (const [name, rule] of bad) {
    const err = assertThrows(
      () => parseS3Event({ Records: [awsRecord(name, "BraTS2021_00001_t1.nii.gz")] }),
      MalformedEventError,
      rule,
    );
    assertStringIncludes(
      err.message,
      `Records[0].s3.bucket.name: bucket name ${JSON.stringify(name)}`,
    );
  }
  // MinIO's "bucket/key" and EventBridge's detail are held to the same rules.
  assertThrows(
    () => parseS3Event({ EventName: "s3:ObjectCreated:Put", Key: "Br_ats/BraTS2021_00001_t1.nii" }),
    MalformedEventError,
    "Br_ats",
  );
  assertThrows(
    () =>
      parseS3Event({
        source: "aws.s3",
        "detail-type": "Object Created",
        detail: { bucket: { name: "brats/seg" }, object: { key: "BraTS2021_00001_t1.nii.gz" } },
      }),
    MalformedEventError,
    "brats/seg",
  );
});

Deno.test('service: an event naming bucket "brats/seg" is refused (400), nothing is listed or queued', async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  await placeholderCase("s3://brats/seg/", "BraTS2021_00001", ["flair", "t1", "t1ce", "t2"]);
  const runner = fakeRunner();
  const service = await startEventService({
    out: "s3://brats/seg/",
    model: "fake",
    hostname: "127.0.0.1",
    port: 0,
    concurrency: 1,
    queue: 4,
    token: undefined,
  }, runner);
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
  const service = await startEventService({
    out: "s3://brats/seg/",
    model: "fake",
    hostname: "127.0.0.1",
    port: 0,
    concurrency: 1,
    queue: 64,
    token: undefined,
  }, runner);
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

/** Writes placeholder files for a case (names only: nothing reads them without a segmenter). */
async function placeholderCase(prefix: string, id: string, parts: string[]): Promise<void> {
  for (const p of parts) await putObject(`${prefix}${id}/${id}_${p}.nii.gz`, `fake ${p}`);
}

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

// ---------------------------------------------------------------------------------------------
// The service in-process, with a segmenter that waits to be told

/** A runner whose cases finish when the test says so. */
function fakeRunner() {
  const calls: { job: string; c: Case; finish(o?: Error): void }[] = [];
  const waiters: (() => void)[] = [];
  const runner: CaseRunner & { calls: typeof calls; started(n: number): Promise<void> } = {
    backend: "fake",
    calls,
    segment(job, c, out): Promise<RunOutcome> {
      return new Promise((resolve, reject) => {
        calls.push({
          job,
          c,
          finish: (e) =>
            e ? reject(e) : resolve({
              id: c.id,
              status: "done",
              output: `${out}${c.id}.nii.gz`,
              seconds: 0.01,
            }),
        });
        waiters.splice(0).forEach((w) => w());
      });
    },
    close() {
      for (const c of calls) c.finish(new Error("abandoned"));
    },
    async started(n) {
      const deadline = Date.now() + 10_000;
      while (calls.length < n) {
        if (Date.now() > deadline) throw new Error(`${calls.length} cases started, expected ${n}`);
        await new Promise<void>((r) => {
          const timer = setTimeout(r, 200);
          waiters.push(() => (clearTimeout(timer), r()));
        });
      }
    },
  };
  return runner;
}

async function post(
  url: string,
  body: unknown,
  token: string | undefined = "t0ken",
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url, {
    method: "POST",
    headers: token ? { authorization: `Bearer ${token}` } : {},
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

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
  const service = await startEventService({
    out: "s3://brats/seg/",
    model: "fake",
    hostname: "127.0.0.1",
    port: 0,
    concurrency: 1,
    queue: 1,
    token: "t0ken",
    maxBodyBytes: 4096,
    log: (e) => logs.push(e),
  }, runner);
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
  const service = await startEventService({
    out: "s3://brats/seg/",
    model: "fake",
    hostname: "127.0.0.1",
    port: 0,
    concurrency: 1,
    queue: 4,
    token: undefined,
    log: (e) => logs.push(e),
  }, runner);
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
  const service = await startEventService({
    out: join(tmp.path, "seg"),
    model: join(tmp.path, "model"),
    hostname: "127.0.0.1",
    port: 0,
    concurrency: 1,
    queue: 4,
    token: undefined,
  }, runner);
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

// ---------------------------------------------------------------------------------------------
// `main.ts serve` as a subprocess, against s3rver, with a real (random) model

/** A running `main.ts serve`: its URL, log lines so far, and how to stop it. */
interface ServeProcess {
  url: string;
  logs: Record<string, unknown>[];
  output(): string;
  signal(sig: Deno.Signal): void;
  status: Promise<Deno.CommandStatus>;
  waitFor(pred: (l: Record<string, unknown>) => boolean, ms?: number): Promise<void>;
}

async function startServe(args: string[], env: Record<string, string>): Promise<ServeProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "serve", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const logs: Record<string, unknown>[] = [];
  let text = "";
  const waiters: (() => void)[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>, parse: boolean) => {
    let partial = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      partial += chunk;
      const lines = partial.split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        if (!parse || !line.startsWith("{")) continue;
        try {
          logs.push(JSON.parse(line));
        } catch { /* not a log line */ }
      }
      waiters.splice(0).forEach((w) => w());
    }
    waiters.splice(0).forEach((w) => w());
  };
  const pumps = Promise.all([pump(child.stdout, true), pump(child.stderr, false)]);
  const status = child.status.then(async (s) => (await pumps, s));
  let exited = false;
  status.then(() => exited = true);
  const waitFor = async (pred: (l: Record<string, unknown>) => boolean, ms = 60_000) => {
    const deadline = Date.now() + ms;
    while (!logs.some(pred)) {
      if (exited) throw new Error(`serve exited before the awaited log line:\n${text}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for serve:\n${text}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        waiters.push(() => (clearTimeout(timer), resolve()));
      });
    }
  };
  try {
    await waitFor((l) => l.event === "listening");
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await status;
    throw e;
  }
  const url = String(logs.find((l) => l.event === "listening")!.url);
  return {
    url,
    logs,
    output: () => text,
    signal: (sig) => child.kill(sig),
    status,
    waitFor,
  };
}

async function job(url: string, id: string, token: string): Promise<JobView> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const res = await fetch(`${url}/jobs/${id}`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    const j = await res.json() as JobView;
    if (j.status !== "queued" && j.status !== "running") return j;
    if (Date.now() > deadline) throw new Error(`job ${id} did not finish: ${JSON.stringify(j)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "serve-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

Deno.test({
  name: "serve: an event segments its case; duplicates, outputs and bad requests change nothing",
  // The child's stdout/stderr readers end with the process.
  sanitizeResources: true,
  async fn() {
    await using tmp = await tempDir();
    await using s3 = await startS3rver({ buckets: ["brats"] });
    const token = "s3cr3t-" + crypto.randomUUID();
    const env: Record<string, string> = { REVUNET_TOKEN: token };
    for (const [k, v] of Object.entries(Deno.env.toObject())) if (k.startsWith("AWS_")) env[k] = v;

    const net = createUNet(
      resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
      { seed: 1 },
    );
    // A training run's folder on S3: serve takes it as nnU-Net's predict does, using its best/.
    await saveModel("s3://brats/runs/tiny/best", net);
    disposeUNet(net);
    // Cases on disk first, then uploaded file by file so each upload's event can be replayed.
    const ids = await writePhantomDataset(join(tmp.path, "cases"), {
      cases: 3,
      dims: [32, 32, 32],
      seed: 5,
    });
    const upload = async (id: string, part: string, bytes?: Uint8Array) => {
      const name = `${id}_${part}.nii.gz`;
      const before = s3.events.length;
      await putObject(
        `s3://brats/incoming/${id}/${name}`,
        bytes ?? await Deno.readFile(join(tmp.path, "cases", id, name)),
      );
      return asAws(s3.events.slice(before));
    };

    const serve = await startServe([
      "--model",
      "s3://brats/runs/tiny",
      "--out",
      "s3://brats/seg/",
      "--input",
      "s3://brats/incoming/",
      "--port",
      "0",
      "--host",
      "127.0.0.1",
    ], env);
    let stopped = false;
    try {
      const loading = serve.logs.find((l) => l.event === "loading")!;
      assertEquals(loading.model, "s3://brats/runs/tiny/best/model.safetensors");
      assertStringIncludes(String(loading.note), "training run: using its best/");
      // The first modality of case 1: waiting, nothing queued.
      const [flairEvent] = await upload(ids[0], "flair");
      const waiting = await post(serve.url, flairEvent, token);
      assertEquals(
        [waiting.status, waiting.body.status],
        [202, "waiting"],
        JSON.stringify(waiting),
      );
      for (const p of ["t1", "t1ce", "seg"]) await upload(ids[0], p);
      const [last] = await upload(ids[0], "t2");

      const t0 = performance.now();
      const queued = await post(serve.url, last, token);
      assertEquals([queued.status, queued.body.status], [202, "queued"], JSON.stringify(queued));
      const done = await job(serve.url, String(queued.body.id), token);
      const latency = (performance.now() - t0) / 1000;
      assertEquals(done.status, "done", JSON.stringify(done));
      assertEquals(done.case, ids[0]);
      // The case came with its reference: the segmentation and its metrics, as evaluate has them.
      assertEquals(done.outputs, [
        `s3://brats/seg/${ids[0]}.nii.gz`,
        `s3://brats/seg/${ids[0]}.metrics.json`,
      ]);
      const header = decodeNiftiHeader(await getObject(done.outputs[0]), done.outputs[0]);
      assertEquals(header.dims.slice(0, 3), [32, 32, 32]);
      const reference = `s3://brats/incoming/${ids[0]}/${ids[0]}_seg.nii.gz`;
      const metrics = JSON.parse(new TextDecoder().decode(await getObject(done.outputs[1])));
      assertEquals([metrics.case, metrics.prediction, metrics.reference], [
        ids[0],
        done.outputs[0],
        reference,
      ]);
      const expected = (await evaluatePair(done.outputs[0], reference)).metrics;
      for (const r of EVAL_REGIONS) {
        for (const k of METRICS) {
          assert(Number.isFinite(metrics[r][k]), `${r} ${k}: ${metrics[r][k]}`);
        }
        assertEquals(metrics[r], expected[r]);
      }
      console.log(`event → segmentation and metrics of a 32³ case: ${latency.toFixed(2)} s`);

      // The same event again, and the events of the service's own outputs: nothing new.
      const outputEvents = asAws(
        s3.events.filter((e) => e.Records[0].s3.object.key.startsWith("seg/")),
      );
      assert(outputEvents.length >= 2, "the service's outputs raised events on s3rver");
      const dup = await post(serve.url, last, token);
      assertEquals([dup.status, dup.body.status], [200, "duplicate"], JSON.stringify(dup));
      for (const e of outputEvents) {
        const r = await post(serve.url, e, token);
        assertEquals([r.status, r.body.status], [200, "ignored"], JSON.stringify(r));
        assertStringIncludes(JSON.stringify(r.body.ignored), "output prefix");
      }
      // Malformed and unauthenticated requests: 400 and 401, nothing queued or written.
      const objectsBefore = (await listObjects("s3://brats/seg/")).map((o) => o.key);
      assertEquals((await post(serve.url, "{not json", token)).status, 400);
      assertEquals((await post(serve.url, { Records: [{ eventName: "x" }] }, token)).status, 400);
      assertEquals((await post(serve.url, last, undefined)).status, 401);
      assertEquals((await post(serve.url, last, "wrong")).status, 401);
      const basic = await fetch(serve.url, {
        method: "POST",
        headers: { authorization: `Basic ${btoa(`sns:${token}`)}` },
        body: JSON.stringify(TEST_EVENT),
      });
      assertEquals([basic.status, (await basic.json()).status], [200, "test"]);
      assertEquals(
        await fetch(`${serve.url}/jobs/${queued.body.id}`).then(async (
          r,
        ) => (await r.body?.cancel(), r.status)),
        401,
      );
      const jobs = await (await fetch(`${serve.url}/jobs`, {
        headers: { authorization: `Bearer ${token}` },
      })).json() as { jobs: JobView[] };
      assertEquals(jobs.jobs.length, 1, "one job for case 1, however many events");
      assertEquals((await listObjects("s3://brats/seg/")).map((o) => o.key), objectsBefore);

      // A broken volume: the job fails, the error is recorded, the service goes on.
      for (const p of ["flair", "t1ce", "t2"]) await upload(ids[1], p);
      const [broken] = await upload(ids[1], "t1", new TextEncoder().encode("not a NIfTI file"));
      const failed = await post(serve.url, broken, token);
      assertEquals(failed.status, 202, JSON.stringify(failed));
      const f = await job(serve.url, String(failed.body.id), token);
      assertEquals(f.status, "failed", JSON.stringify(f));
      assertStringIncludes(f.error!, `${ids[1]}_t1.nii.gz`);
      assertEquals(f.outputs, [`s3://brats/seg/${ids[1]}.error.json`]);
      const record = JSON.parse(new TextDecoder().decode(await getObject(f.outputs[0])));
      assertEquals(record.case, ids[1]);
      assertEquals(await exists(`s3://brats/seg/${ids[1]}.nii.gz`), false);
      const health = await fetch(`${serve.url}/healthz`);
      const h = await health.json();
      assertEquals([health.status, h.status, h.done, h.failed], [200, "ok", 1, 1]);

      // SIGTERM with a case just queued: it is finished, then the service exits 0.
      for (const p of ["flair", "t1", "t1ce"]) await upload(ids[2], p);
      const [third] = await upload(ids[2], "t2");
      const q3 = await post(serve.url, third, token);
      assertEquals(q3.status, 202);
      serve.signal("SIGTERM");
      const status = await serve.status;
      stopped = true;
      assertEquals(status.code, 0, serve.output());
      assert(await exists(`s3://brats/seg/${ids[2]}.nii.gz`), serve.output());
      assertEquals(
        await exists(`s3://brats/seg/${ids[2]}.metrics.json`),
        false,
        "no reference uploaded, no metrics",
      );
      const events = serve.logs.map((l) => `${l.event}${l.status ? ":" + l.status : ""}`);
      assert(
        events.indexOf("job:done", events.indexOf("draining")) > 0 && events.at(-1) === "stopped",
        events.join(" "),
      );
      assert(!serve.output().includes(token), "the token never appears in the logs");
    } finally {
      if (!stopped) {
        serve.signal("SIGKILL");
        await serve.status;
      }
    }
  },
});

Deno.test("serve refuses to start without a token unless --no-auth, naming the variable", async () => {
  const run = await runMain([
    "serve",
    "--model",
    "m",
    "--out",
    "o",
    "--token-env",
    "NO_SUCH_TOKEN_VAR",
  ]);
  assertEquals(run.code, 2, run.stderr);
  assertStringIncludes(run.stderr, "NO_SUCH_TOKEN_VAR");
  assertStringIncludes(run.stderr, "--no-auth");
  const bad = await runMain([
    "serve",
    "--model",
    "m",
    "--out",
    "o",
    "--no-auth",
    "--token-env",
    "X",
  ]);
  assertEquals(bad.code, 2, bad.stderr);
  // With --no-auth it starts; a model that does not exist is named and it exits 1.
  const missing = await runMain([
    "serve",
    "--model",
    "/nonexistent/model",
    "--out",
    "o",
    "--no-auth",
  ]);
  assertEquals(missing.code, 1, missing.stderr);
  assertStringIncludes(missing.stderr, "/nonexistent/model");
  // What would have been accepted, as segment lists it.
  assertStringIncludes(missing.stderr, "expected a training run folder");
  assertStringIncludes(missing.stderr, "/nonexistent/model/best/model.safetensors");
});

Deno.test("service errors: an unreachable store is 502 and the event can be retried", async () => {
  const runner = fakeRunner();
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const service = await startEventService({
    out: "s3://brats/seg/",
    model: "fake",
    hostname: "127.0.0.1",
    port: 0,
    concurrency: 1,
    queue: 4,
    token: undefined,
  }, runner);
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

Deno.test("isTransientS3Error() tells an unreachable or throttling S3 from a missing object", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const missing = await getObject("s3://brats/none").catch((e) => e);
  assert(missing instanceof ObjectNotFoundError);
  assertEquals(isTransientS3Error(missing), false);
  const noBucket = await getObject("s3://nobucket/x").catch((e) => e);
  assertEquals(isTransientS3Error(noBucket), false);
  const throttled = new Error("Cannot read: S3 kept throttling", {
    cause: { name: "SlowDown", $metadata: { httpStatusCode: 503 } },
  });
  assertEquals(isTransientS3Error(new Error("wrapped", { cause: throttled })), true);
  await s3.stop();
  await using _env = useS3Env(`http://127.0.0.1:${closedPort()}`);
  const down = await getObject("s3://brats/x").catch((e) => e);
  assertStringIncludes(String(down.message), "Cannot reach S3 endpoint");
  assertEquals(isTransientS3Error(new Error("Cannot read NIfTI", { cause: down })), true);
});

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
  const service = await startEventService({
    out: "s3://brats/seg/",
    model: "fake",
    hostname: "127.0.0.1",
    port: 0,
    concurrency: 1,
    queue: 8,
    token: undefined,
    retry: { budgetMs: 600, baseDelayMs: 100 },
    log: (e) => logs.push(e),
  }, runner);
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

Deno.test("service: one case id in two input folders is segmented from one; the other is refused with an error record", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const id = "BraTS2021_00001";
  for (const f of ["a", "b", "c"]) {
    await placeholderCase(`s3://brats/in/${f}/`, id, ["flair", "t1", "t1ce", "t2"]);
  }
  const ev = (f: string) => ({ Records: [awsRecord("brats", `in/${f}/${id}/${id}_t2.nii.gz`)] });
  const runner = fakeRunner();
  const service = await startEventService({
    out: "s3://brats/seg/",
    model: "fake",
    hostname: "127.0.0.1",
    port: 0,
    concurrency: 2,
    queue: 8,
    token: undefined,
  }, runner);
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

Deno.test({
  name: "serve --window and --et-threshold: parsed as segment parses them, applied to each case",
  sanitizeResources: true,
  async fn() {
    // Refused as segment refuses them, before anything is loaded.
    const base = ["serve", "--model", "/nonexistent/m", "--out", "o", "--no-auth"];
    const bad = await runMain([...base, "--window", "4"]);
    assertEquals(bad.code, 2, bad.stderr);
    assertStringIncludes(bad.stderr, '--window must be an integer >= 8 <= 1024, got "4"');
    const badEt = await runMain([...base, "--et-threshold", "-1"]);
    assertEquals(badEt.code, 2, badEt.stderr);
    assertStringIncludes(badEt.stderr, '--et-threshold must be an integer >= 0, got "-1"');

    await using tmp = await tempDir();
    await using s3 = await startS3rver({ buckets: ["brats"] });
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(Deno.env.toObject())) if (k.startsWith("AWS_")) env[k] = v;
    const net = createUNet(
      resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
      { seed: 1 },
    );
    await saveModel("s3://brats/model", net, undefined, { train_crop: "32" });
    disposeUNet(net);
    const [id] = await writePhantomDataset(join(tmp.path, "cases"), {
      cases: 1,
      dims: [32, 32, 32],
      seed: 5,
    });
    let last: unknown;
    for (const p of ["flair", "t1", "t1ce", "t2"]) {
      const before = s3.events.length;
      const name = `${id}_${p}.nii.gz`;
      await putObject(
        `s3://brats/in/${id}/${name}`,
        await Deno.readFile(join(tmp.path, "cases", id, name)),
      );
      [last] = asAws(s3.events.slice(before));
    }
    const serve = await startServe([
      ...["--model", "s3://brats/model", "--out", "s3://brats/seg/", "--no-auth"],
      ...["--port", "0", "--host", "127.0.0.1", "--window", "16", "--et-threshold", "7"],
    ], env);
    try {
      const queued = await post(serve.url, last, undefined);
      assertEquals(queued.status, 202, JSON.stringify(queued));
      const done = await job(serve.url, String(queued.body.id), "");
      assertEquals(done.status, "done", JSON.stringify(done));
      const record = JSON.parse(
        new TextDecoder().decode(await getObject(`s3://brats/seg/${id}.json`)),
      );
      // Without the flags: the training crop (32) and 0.
      assertEquals([record.options.window, record.options.et_threshold], [16, 7]);
    } finally {
      serve.signal("SIGTERM");
      assertEquals((await serve.status).code, 0, serve.output());
    }
  },
});
