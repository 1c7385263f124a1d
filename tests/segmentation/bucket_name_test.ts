/**
 * pipeline/segmentation/bucket_name.ts: S3's bucket naming rules, as parseS3Event() applies them.
 * @module
 */
import { assert, assertStringIncludes, assertThrows } from "@std/assert";
import { MalformedEventError, parseS3Event } from "../../pipeline/segmentation/mod.ts";
import { awsRecord } from "./_service_fixtures.ts";

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
