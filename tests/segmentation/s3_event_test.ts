/**
 * pipeline/segmentation/s3_event.ts: parseS3Event() and decodeS3Key() on payloads shaped as Amazon
 * S3, SNS, MinIO and EventBridge send them, and malformed ones.
 * @module
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { decodeS3Key, MalformedEventError, parseS3Event } from "../../pipeline/segmentation/mod.ts";
import { awsRecord, minioEvent, snsWrap, TEST_EVENT } from "./_service_fixtures.ts";

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
