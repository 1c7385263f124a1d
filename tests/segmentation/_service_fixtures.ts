/**
 * Fixtures of the event service tests: S3, SNS, MinIO and EventBridge payloads as the services send
 * them, a fake case runner, one started service with the tests' defaults, and HTTP helpers.
 * @module
 */
import type { Case } from "../../pipeline/cases/cases.ts";
import {
  type CaseRunner,
  type EventService,
  type JobView,
  type RunOutcome,
  type ServiceOptions,
  startEventService,
} from "../../pipeline/segmentation/mod.ts";
import { putObject } from "../../pipeline/storage/objects.ts";
import type { S3EventLike } from "../_s3rver.ts";

// ---------------------------------------------------------------------------------------------
// Payloads shaped as the services send them

/** An Amazon S3 record for `key` (given raw; encoded here as S3 encodes keys). */
export function awsRecord(bucket: string, key: string, extra: Record<string, unknown> = {}) {
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
export function encodeS3Key(key: string): string {
  return key.split("/").map((s) => encodeURIComponent(s).replace(/%20/g, "+")).join("/");
}

export function snsWrap(message: unknown) {
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
export function minioEvent(bucket: string, key: string) {
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

export const TEST_EVENT = {
  Service: "Amazon S3",
  Event: "s3:TestEvent",
  Time: "2026-11-20T10:00:00.000Z",
  Bucket: "brats",
  RequestId: "5582815E1AEA5ADF",
  HostId: "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
};

/** s3rver's events, with keys encoded as S3 would (s3rver sends them raw). */
export function asAws(events: S3EventLike[]): unknown[] {
  return events.map((e) => ({
    Records: e.Records.map((r) => ({
      ...r,
      s3: { ...r.s3, object: { ...r.s3.object, key: encodeS3Key(r.s3.object.key) } },
    })),
  }));
}

/** Writes placeholder files for a case (names only: nothing reads them without a segmenter). */
export async function placeholderCase(prefix: string, id: string, parts: string[]): Promise<void> {
  for (const p of parts) await putObject(`${prefix}${id}/${id}_${p}.nii.gz`, `fake ${p}`);
}

// ---------------------------------------------------------------------------------------------
// The service in-process, with a segmenter that waits to be told

/** A runner whose cases finish when the test says so. */
export function fakeRunner() {
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

export async function post(
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

export async function job(url: string, id: string, token: string): Promise<JobView> {
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

export async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "serve-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** What every in-process service test starts from; each test overrides what it is about. */
export const SERVICE_DEFAULTS = {
  out: "s3://brats/seg/",
  model: "fake",
  hostname: "127.0.0.1",
  port: 0,
  concurrency: 1,
  queue: 4,
  token: undefined,
} as const satisfies ServiceOptions;

/**
 * Starts the event service on a free local port with {@linkcode SERVICE_DEFAULTS} (output
 * s3://brats/seg/, the fake model, one worker, a queue of 4, no token), `options` overriding them.
 */
export function startTestService(
  runner: CaseRunner,
  options: Partial<ServiceOptions> = {},
): Promise<EventService> {
  return startEventService({ ...SERVICE_DEFAULTS, ...options }, runner);
}
