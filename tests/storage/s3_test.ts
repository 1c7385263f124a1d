/**
 * pipeline/storage/s3.ts: isTransientS3Error(), which the service's retries rely on.
 * @module
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { getObject, ObjectNotFoundError } from "../../pipeline/storage/objects.ts";
import { closedPort, startS3rver, useS3Env } from "../_s3rver.ts";
import { isTransientS3Error } from "../../pipeline/storage/s3.ts";

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
