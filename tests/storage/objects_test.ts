/**
 * pipeline/storage/mod.ts on local folders and on a real s3rver (tests/_s3rver.ts) through the AWS SDK.
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import {
  deleteObject,
  exists,
  getObject,
  getObjectRange,
  headObject,
  joinUri,
  listObjects,
  mapConcurrent,
  ObjectNotFoundError,
  openStore,
  parseUri,
  putObject,
  resetS3Clients,
} from "../../pipeline/storage/objects.ts";
import { closedPort, startS3rver, useS3Env } from "../_s3rver.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A temporary folder removed when disposed: `await using tmp = await tempDir()`. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "storage-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Deterministic pseudo-random bytes (xorshift32), so a failing comparison is reproducible. */
function randomBytes(n: number, seed = 12345): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function md5(bytes: Uint8Array): string {
  return createHash("md5").update(bytes).digest("hex");
}

async function entries(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

// ---------------------------------------------------------------------------------------------
// URIs and helpers

Deno.test("parseUri() splits s3 URIs, file URLs and paths", () => {
  assertEquals(parseUri("s3://brats/train/001/t1.nii.gz"), {
    kind: "s3",
    bucket: "brats",
    key: "train/001/t1.nii.gz",
  });
  assertEquals(parseUri("s3://brats"), { kind: "s3", bucket: "brats", key: "" });
  assertEquals(parseUri("s3://brats/"), { kind: "s3", bucket: "brats", key: "" });
  assertEquals(parseUri("S3://brats/a b+c"), { kind: "s3", bucket: "brats", key: "a b+c" });
  assertEquals(parseUri("file:///tmp/a%20b/x.nii"), { kind: "local", path: "/tmp/a b/x.nii" });
  assertEquals(parseUri("data/x.nii"), { kind: "local", path: "data/x.nii" });
  assertEquals(parseUri("/abs/x.nii"), { kind: "local", path: "/abs/x.nii" });
  assertThrows(() => parseUri("gs://bucket/x"), TypeError, 'scheme "gs://" is not supported');
  assertThrows(() => parseUri("s3:///key"), TypeError, "no bucket");
  assertThrows(() => parseUri(""), TypeError, "empty");
});

Deno.test("joinUri() puts exactly one '/' between parts and encodes file URL parts", () => {
  assertEquals(joinUri("s3://b", "k"), "s3://b/k");
  assertEquals(joinUri("s3://b/p/", "/x/", "y.nii"), "s3://b/p/x/y.nii");
  assertEquals(joinUri("data", "a/b"), "data/a/b");
  assertEquals(joinUri("data/", ""), "data/");
  assertEquals(joinUri("file:///tmp/d", "a b"), "file:///tmp/d/a%20b");
  assertEquals(parseUri(joinUri("file:///tmp/d", "a b#1")), {
    kind: "local",
    path: "/tmp/d/a b#1",
  });
});

Deno.test("mapConcurrent() keeps order, bounds calls in flight, stops after a failure", async () => {
  let inFlight = 0;
  let peak = 0;
  const out = await mapConcurrent([5, 1, 4, 2, 3, 0], 2, async (ms, i) => {
    peak = Math.max(peak, ++inFlight);
    await new Promise((r) => setTimeout(r, ms));
    inFlight--;
    return i * 10;
  });
  assertEquals(out, [0, 10, 20, 30, 40, 50]);
  assertEquals(peak, 2);

  const started: number[] = [];
  await assertRejects(
    () =>
      mapConcurrent([0, 1, 2, 3, 4, 5], 2, async (x) => {
        started.push(x);
        await Promise.resolve();
        if (x === 1) throw new Error("boom at 1");
        return x;
      }),
    Error,
    "boom at 1",
  );
  assert(started.length < 6, `started ${started}`);
  await assertRejects(() => mapConcurrent([1], 0, () => Promise.resolve(1)), RangeError, "limit");
});

// ---------------------------------------------------------------------------------------------
// Local

Deno.test("local: put/get/head/exists/delete and a nested, sorted listing", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const root = join(dir, "cases");
  await putObject(join(root, "002/seg.nii"), "seg2");
  await putObject(join(root, "001/t1.nii"), enc.encode("t1 of 001"));
  await putObject(join(root, "001/sub/deep.txt"), "deep");
  await putObject(join(dir, "cases-other/x.nii"), "not under cases/");

  assertEquals(dec.decode(await getObject(join(root, "001/t1.nii"))), "t1 of 001");
  const head = await headObject(join(root, "001/t1.nii"));
  assertEquals([head.key, head.size], ["t1.nii", 9]);
  assert(head.lastModified instanceof Date);
  assert(await exists(join(root, "002/seg.nii")));
  assert(!(await exists(join(root, "002/missing.nii"))));
  assert(!(await exists(join(root, "002"))), "a folder is not an object");

  const listed = await listObjects(root);
  assertEquals(listed.map((o) => o.key), ["001/sub/deep.txt", "001/t1.nii", "002/seg.nii"]);
  assertEquals(listed[1].uri, join(root, "001/t1.nii"));
  assertEquals(listed[1].size, 9);
  assertEquals((await listObjects(root + "/001/")).map((o) => o.key), ["sub/deep.txt", "t1.nii"]);
  assertEquals(await listObjects(join(dir, "nothing-here")), []);
  await assertRejects(() => listObjects(join(root, "001/t1.nii")), TypeError, "not a folder");

  // file:// URLs address the same files; listed URIs keep the URL style.
  const url = pathToFileURL(root).href;
  assertEquals(dec.decode(await getObject(url + "/002/seg.nii")), "seg2");
  assertEquals((await listObjects(url))[2].uri, url + "/002/seg.nii");

  await deleteObject(join(root, "002/seg.nii"));
  await deleteObject(join(root, "002/seg.nii")); // again: not an error
  assert(!(await exists(join(root, "002/seg.nii"))));
  await assertRejects(() => deleteObject(join(root, "001")), Error, "is a folder");
  // As an S3 prefix, a folder goes with its last file; one holding anything else stays.
  await assertRejects(() => Deno.stat(join(root, "002")), Deno.errors.NotFound);
  await deleteObject(join(root, "001/sub/deep.txt"));
  await assertRejects(() => Deno.stat(join(root, "001/sub")), Deno.errors.NotFound);
  assert((await Deno.stat(join(root, "001"))).isDirectory);
  assertEquals((await listObjects(root)).map((o) => o.key), ["001/t1.nii"]);
});

Deno.test("local: missing objects throw ObjectNotFoundError naming the path", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const missing = join(dir, "no/such.nii");
  const e = await assertRejects(() => getObject(missing), ObjectNotFoundError, missing);
  assertEquals(e.uri, missing);
  await assertRejects(() => headObject(missing), ObjectNotFoundError, missing);
  await assertRejects(() => getObjectRange(missing, 0, 10), ObjectNotFoundError, missing);
  await assertRejects(() => getObject(dir), ObjectNotFoundError, "is a folder");
});

Deno.test("local: getObjectRange() reads a header, fewer bytes when the file is shorter", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const path = join(dir, "x.bin");
  await putObject(path, randomBytes(1000));
  assertEquals(await getObjectRange(path, 0, 348), randomBytes(1000).subarray(0, 348));
  assertEquals(await getObjectRange(path, 990, 2000), randomBytes(1000).subarray(990));
  assertEquals((await getObjectRange(path, 5000, 6000)).length, 0);
  assertEquals((await getObjectRange(path, 10, 10)).length, 0);
  await assertRejects(() => getObjectRange(path, 10, 5), RangeError, "range [10, 5)");
});

Deno.test("local: putObject() is atomic and leaves no temporary files", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const target = join(dir, "out/001/seg.nii");
  await putObject(target, "first");
  await putObject(target, "second"); // replaces
  assertEquals(dec.decode(await getObject(target)), "second");
  assertEquals(await entries(join(dir, "out/001")), ["seg.nii"]);

  // A write that fails after its temporary file was written (the target is a non-empty folder, so
  // the rename fails) leaves neither the file nor the temporary behind.
  const blocked = join(dir, "out/002/seg.nii");
  await putObject(join(blocked, "occupant"), "x");
  const err = await assertRejects(() => putObject(blocked, "data"), Error, `"${blocked}"`);
  assertStringIncludes(err.message, "Cannot write");
  assertEquals(await entries(join(dir, "out/002")), ["seg.nii"]);
  assertEquals(await entries(blocked), ["occupant"]);

  // Listings skip an unfinished write's temporary file.
  await Deno.writeTextFile(join(dir, "out/001/.seg.nii.tmp-0123456789ab"), "partial");
  assertEquals((await listObjects(join(dir, "out/001"))).map((o) => o.key), ["seg.nii"]);
});

Deno.test("Store refuses keys that leave its root", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const store = openStore(join(dir, "root"));
  await Deno.writeTextFile(join(dir, "secret.txt"), "outside the root");
  for (
    const key of [
      "../secret.txt",
      "a/../../secret.txt",
      "a/..",
      "/etc/passwd",
      "a\\..\\..\\secret.txt",
      "..\\secret.txt",
      "",
      "a//b",
      "./a",
      "C:/windows",
      "a\0b",
    ]
  ) {
    assertThrows(() => store.uri(key), RangeError, JSON.stringify(key));
    await assertRejects(() => store.get(key), RangeError, "Invalid key");
    await assertRejects(() => store.put(key, "x"), RangeError, "Invalid key");
  }
  await assertRejects(() => store.list("../"), RangeError, '".." segments');
  await assertRejects(() => store.delete("../secret.txt"), RangeError);
  assertEquals(await Deno.readTextFile(join(dir, "secret.txt")), "outside the root");

  await store.put("001/t1.nii", "ok");
  assertEquals(store.uri("001/t1.nii"), join(dir, "root", "001/t1.nii"));
  assertEquals((await store.list()).map((o) => o.key), ["001/t1.nii"]);
  assertEquals((await store.list("001")).map((o) => o.key), ["001/t1.nii"]);
  assertEquals((await store.head("001/t1.nii")).key, "001/t1.nii");
});

// ---------------------------------------------------------------------------------------------
// S3 (a real s3rver through the SDK)

Deno.test("s3: put/get/head/exists/delete round trip", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const uri = "s3://brats/train/001/t1.nii";
  const bytes = randomBytes(100_000);
  await putObject(uri, bytes, { contentType: "application/octet-stream" });
  assertEquals(await getObject(uri), bytes);
  const head = await headObject(uri);
  assertEquals({ uri: head.uri, key: head.key, size: head.size }, {
    uri,
    key: "t1.nii",
    size: 100_000,
  });
  assertEquals(head.etag, md5(bytes), "single PUT: the ETag is the MD5, unquoted");
  assert(head.lastModified instanceof Date);
  assert(await exists(uri));
  await putObject("s3://brats/notes.txt", "héllo");
  assertEquals(dec.decode(await getObject("s3://brats/notes.txt")), "héllo");
  await deleteObject(uri);
  assert(!(await exists(uri)));
  await deleteObject(uri); // again: not an error
  await assertRejects(() => putObject("s3://brats/dir/", "x"), TypeError, "end in '/'");
});

Deno.test("s3: listObjects() is recursive, relative to a folder prefix, sorted", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const keys = [
    "train/002/seg.nii",
    "train/001/t1.nii",
    "train/001/sub/deep.txt",
    "train2/x.nii",
    "top.txt",
  ];
  await mapConcurrent(keys, 3, (k) => putObject(`s3://brats/${k}`, k));
  const listed = await listObjects("s3://brats/train");
  assertEquals(listed.map((o) => o.key), ["001/sub/deep.txt", "001/t1.nii", "002/seg.nii"]);
  assertEquals(listed[1].uri, "s3://brats/train/001/t1.nii");
  assertEquals(listed[1].size, "train/001/t1.nii".length);
  assertEquals(listed[1].etag, md5(enc.encode("train/001/t1.nii")));
  assertEquals((await listObjects("s3://brats/train/001/")).map((o) => o.key), [
    "sub/deep.txt",
    "t1.nii",
  ]);
  assertEquals((await listObjects("s3://brats")).length, 5);
  assertEquals(await listObjects("s3://brats/nothing/"), []);

  const store = openStore("s3://brats/train");
  assertEquals((await store.list("001")).map((o) => o.key), ["001/sub/deep.txt", "001/t1.nii"]);
  assertEquals(dec.decode(await store.get("002/seg.nii")), "train/002/seg.nii");
  await assertRejects(() => store.get("../top.txt"), RangeError, '".." segments');
});

Deno.test("s3: listObjects() follows continuation tokens across pages", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const keys = ["a/1", "a/2", "a/3", "a/4", "a/5"];
  await mapConcurrent(keys, 5, (k) => putObject(`s3://brats/${k}`, k));
  const listed = await listObjects("s3://brats/a/", { pageSize: 2 });
  assertEquals(listed.map((o) => o.key), ["1", "2", "3", "4", "5"]);
  const lists = s3.requests.filter((r) => r.method === "GET" && r.query["list-type"] === "2");
  assertEquals(lists.length, 3, "three pages of two keys");
  assertEquals(lists.map((r) => "continuation-token" in r.query), [false, true, true]);
  assertEquals(lists.map((r) => r.status), [200, 200, 200]);
  await assertRejects(() => listObjects("s3://brats/a/", { pageSize: 0 }), RangeError, "pageSize");
});

Deno.test("s3: getObjectRange() reads a header, fewer bytes when the object is shorter", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const bytes = randomBytes(1000);
  await putObject("s3://brats/x.bin", bytes);
  assertEquals(await getObjectRange("s3://brats/x.bin", 0, 348), bytes.subarray(0, 348));
  assertEquals(await getObjectRange("s3://brats/x.bin", 990, 2000), bytes.subarray(990));
  assertEquals((await getObjectRange("s3://brats/x.bin", 5000, 6000)).length, 0);
  await assertRejects(() => getObjectRange("s3://brats/none", 0, 1), ObjectNotFoundError);
});

Deno.test("s3: a 20 MB object goes up in parts and comes back byte for byte", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const bytes = randomBytes(20_000_000, 777);
  const uri = "s3://brats/big/volume.nii";
  const t0 = performance.now();
  await putObject(uri, bytes);
  const up = performance.now() - t0;
  const back = await getObject(uri);
  assertEquals(back.length, bytes.length);
  assert(md5(back) === md5(bytes), "downloaded bytes differ from uploaded ones");
  const parts = s3.requests.filter((r) => r.method === "PUT" && "partNumber" in r.query);
  assertEquals(parts.length, 3, "20 MB in 8 MiB parts");
  assert(s3.requests.some((r) => r.method === "POST" && "uploads" in r.query), "initiated");
  assert(s3.requests.some((r) => r.method === "POST" && "uploadId" in r.query), "completed");
  assertEquals((await headObject(uri)).size, 20_000_000);
  console.log(`20 MB multipart upload ${up.toFixed(0)} ms`);

  // Below the threshold: one plain PUT.
  const before = s3.requests.length;
  await putObject("s3://brats/small.bin", randomBytes(1 << 20));
  // (The SDK adds "x-id=PutObject" to the query.)
  assertEquals(s3.requests.slice(before).map((r) => [r.method, r.query["x-id"]]), [
    ["PUT", "PutObject"],
  ]);
});

Deno.test("s3: a missing object throws ObjectNotFoundError naming the URI", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const uri = "s3://brats/no/such.nii";
  const e = await assertRejects(() => getObject(uri), ObjectNotFoundError, `"${uri}"`);
  assertEquals(e.uri, uri);
  await assertRejects(() => headObject(uri), ObjectNotFoundError, uri);
  assert(!(await exists(uri)));
});

Deno.test("s3: a missing bucket is named as such", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const uri = "s3://nobucket/x.nii";
  const msg = 'bucket "nobucket" does not exist';
  await assertRejects(() => getObject(uri), Error, msg);
  await assertRejects(() => headObject(uri), Error, msg);
  await assertRejects(() => exists(uri), Error, msg);
  await assertRejects(() => putObject(uri, "x"), Error, msg);
  const e = await assertRejects(() => listObjects("s3://nobucket/p/"), Error, msg);
  assertStringIncludes(e.message, 'Cannot list "s3://nobucket/p/"');
  assert(!(e instanceof ObjectNotFoundError));
});

Deno.test("s3: an unknown access key reads as access denied", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  await putObject("s3://brats/x", "x");
  // s3rver does not verify SigV4 signatures, only that the access key id exists.
  await using _env = useS3Env(s3.endpoint, { accessKeyId: "NOBODY", secretAccessKey: "x" });
  const e = await assertRejects(() => getObject("s3://brats/x"), Deno.errors.PermissionDenied);
  assertStringIncludes(e.message, 'Cannot read "s3://brats/x": access denied');
  assertStringIncludes(e.message, "InvalidAccessKeyId");
  await assertRejects(() => headObject("s3://brats/x"), Deno.errors.PermissionDenied);
  await assertRejects(() => listObjects("s3://brats/"), Deno.errors.PermissionDenied);
});

Deno.test("s3: an unreachable endpoint fails clearly after bounded retries", async () => {
  const port = closedPort();
  await using _env = useS3Env(`http://127.0.0.1:${port}`);
  const t0 = performance.now();
  const e = await assertRejects(() => getObject("s3://brats/k"), Error);
  const ms = performance.now() - t0;
  assertStringIncludes(
    e.message,
    `Cannot reach S3 endpoint http://127.0.0.1:${port} for s3://brats/k`,
  );
  assertStringIncludes(e.message, "after 4 attempts");
  assert(ms < 15_000, `took ${ms} ms`);
  await assertRejects(() => listObjects("s3://brats/"), Error, "Cannot reach S3 endpoint");
  console.log(`unreachable endpoint: failed after ${ms.toFixed(0)} ms`);
});

Deno.test("s3: a server that stopped fails clearly", async () => {
  const s3 = await startS3rver({ buckets: ["brats"], setEnv: false });
  await s3.stop();
  await using _env = useS3Env(s3.endpoint);
  await assertRejects(() => putObject("s3://brats/k", "x"), Error, "Cannot reach S3 endpoint");
});

/** A fake S3 endpoint: answers 503 SlowDown `failures` times, then serves "hello". */
function throttlingServer(failures: number) {
  let seen = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    if (seen++ < failures) {
      return new Response(
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
        { status: 503, headers: { "content-type": "application/xml" } },
      );
    }
    return new Response("hello", { headers: { "content-type": "text/plain" } });
  });
  return {
    endpoint: `http://127.0.0.1:${server.addr.port}`,
    requests: () => seen,
    [Symbol.asyncDispose]: async () => {
      await resetS3Clients();
      await server.shutdown();
    },
  };
}

Deno.test("s3: SlowDown is retried with backoff, then the read succeeds", async () => {
  await using fake = throttlingServer(2);
  await using _env = useS3Env(fake.endpoint);
  assertEquals(dec.decode(await getObject("s3://brats/k")), "hello");
  assertEquals(fake.requests(), 3);
});

Deno.test("s3: endless SlowDown gives up after 4 attempts with a clear error", async () => {
  await using fake = throttlingServer(Infinity);
  await using _env = useS3Env(fake.endpoint);
  const t0 = performance.now();
  const e = await assertRejects(() => getObject("s3://brats/k"), Error);
  const ms = performance.now() - t0;
  assertStringIncludes(e.message, 'Cannot read "s3://brats/k": S3 kept throttling (SlowDown');
  assertStringIncludes(e.message, "after 4 attempts");
  assertEquals(fake.requests(), 4);
  assert(ms < 15_000, `took ${ms} ms`);
});
