/**
 * The case cache's content check: every entry records the SHA-256 of its arrays, and an entry
 * edited without changing its length (labels overwritten, labels zeroed, NaN bytes in the image)
 * is refused by name wherever it is read, and rebuilt, with a log line saying why, where the
 * cache is read to load a run's cases. Also the plain round trip, reuse while the inputs are
 * unchanged and rebuild when one changes, and cases loaded into SharedArrayBuffers.
 * @module
 */
import { assert, assertEquals, assertNotEquals, assertRejects, assertThrows } from "@std/assert";
import { findCases } from "../../pipeline/cases/cases.ts";
import {
  CacheChecksumError,
  cacheEntryUri,
  caseKey,
  decodeCachedCase,
  encodeCachedCase,
  loadPreprocessed,
  readCachedHeader,
  StreamedCases,
  streamedEntry,
} from "../../pipeline/cases/case_cache.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { preprocessCase } from "../../pipeline/cases/preprocess.ts";
import { loadCases } from "../../pipeline/training/training_cases.ts";
import { getObject, putObject } from "../../pipeline/storage/objects.ts";

/** Where an entry's payload (image, then region bits) starts: after its header, 4-aligned. */
function payloadAt(bytes: Uint8Array): number {
  const head = 12 + new DataView(bytes.buffer, bytes.byteOffset).getUint32(8, true);
  return head + ((4 - (head % 4)) % 4);
}

/** The same-length edits of the issue: each returns a damaged copy of the entry. */
const EDITS: [string, (b: Uint8Array, labelsAt: number) => Uint8Array][] = [
  ["labels set to 7", (b, at) => b.map((v, i) => (i >= at && v !== 0 ? 7 : v))],
  ["labels zeroed", (b, at) => b.map((v, i) => (i >= at ? 0 : v))],
  ["NaN bytes in the image", (b, _at) => {
    const out = b.slice();
    const nan = new Uint8Array(new Float32Array([NaN, NaN, NaN, NaN]).buffer);
    out.set(nan, payloadAt(b) + 64);
    return out;
  }],
];

Deno.test("case cache: same-length edits of an entry are refused by name and rebuilt with a log line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-casecache-" });
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [20, 20, 16], seed: 9 });
    const [c] = (await findCases(`${dir}/data`)).cases;
    const cache = `${dir}/cache`;
    const first = await loadPreprocessed(c, cache);
    assertEquals(first.cached, false);
    const uri = first.uri!;
    const good = await Deno.readFile(uri);
    const voxels = first.case.box.size.reduce((a, b) => a * b, 1);
    const labelsAt = payloadAt(good) + 16 * voxels;
    assertEquals(labelsAt + voxels, good.length, "region bits end the entry");
    const fresh = await preprocessCase(c);

    for (const [what, edit] of EDITS) {
      const bad = edit(good, labelsAt);
      assertEquals(bad.length, good.length, what);
      assertNotEquals(bad, good, `${what} changes the bytes`);
      const e = assertThrows(() => decodeCachedCase(bad, uri), CacheChecksumError, uri);
      assert(e.message.includes("damaged preprocessed-case cache entry"), e.message);
      await Deno.writeFile(uri, bad);
      await assertRejects(() => readCachedHeader(uri, { verify: true }), CacheChecksumError, uri);

      const logs: string[] = [];
      const again = await loadPreprocessed(c, cache, { log: (m) => logs.push(m) });
      assertEquals(again.cached, false, `${what}: not used`);
      assertEquals(logs.length, 1, what);
      assert(logs[0].startsWith(`cache: ${uri}: damaged`) && logs[0].endsWith("; rebuilding"));
      assertEquals(again.case.image, fresh.image, `${what}: the rebuilt case is the fresh one`);
      assertEquals(again.case.regions, fresh.regions, what);
      assertEquals(await Deno.readFile(uri), good, `${what}: the entry is rewritten whole`);
      assertEquals((await loadPreprocessed(c, cache)).cached, true, `${what}: then reused`);

      // A sampler reading a streamed entry damaged under it stops with the file named.
      await Deno.writeFile(uri, bad);
      const streamed = new StreamedCases([streamedEntry(fresh, uri)]);
      assertThrows(() => streamed.get(0), Error, `${uri}: damaged`);
      await Deno.writeFile(uri, good);
    }

    // An entry of the format before checksums is refused by its format, not misread.
    const old = good.slice();
    old.set(new TextEncoder().encode("RVCASE01"), 0);
    assertThrows(
      () => decodeCachedCase(old, "old.rvcase"),
      RangeError,
      "format 01, this build reads 02",
    );
    // Nor can the checksum itself be dropped from the header.
    const text = new TextDecoder().decode(good.subarray(0, payloadAt(good)));
    const noSum = good.slice();
    noSum.set(new TextEncoder().encode('"sha25X"'), text.indexOf('"sha256"'));
    assertThrows(
      () => decodeCachedCase(noSum, "x.rvcase"),
      RangeError,
      "x.rvcase: not a preprocessed-case cache entry (sha256 undefined)",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadCases streaming from the local cache: an entry damaged on disk is rebuilt at start-up, not found by a sampler later", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-casecache-" });
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 3, dims: [20, 20, 16], seed: 4 });
    const cases = (await findCases(`${dir}/data`)).cases;
    const cache = `${dir}/cache`;
    const options = (logs: string[]) => ({
      cacheUri: cache,
      budget: 0, // always streamed: entries after the first are read by their header path
      shared: false,
      aborted: () => false,
      onCase: () => {},
      onTemporaryDir: () => {},
      log: (m: string) => logs.push(m),
    });
    await loadCases(cases.slice(0, 2), cases.slice(2), options([]));
    const uri = await cacheEntryUri(cache, cases[2]);
    const good = await Deno.readFile(uri);
    const bad = good.slice();
    bad[bad.length - 1] ^= 0x04; // one region bit of the last voxel
    await Deno.writeFile(uri, bad);

    const logs: string[] = [];
    const loaded = await loadCases(cases.slice(0, 2), cases.slice(2), options(logs));
    assertEquals(loaded.fromCache, 2, "the damaged entry was not counted as cached");
    assertEquals(
      logs.filter((l) => l.includes(`cache: ${uri}: damaged`)).length,
      1,
      logs.join("\n"),
    );
    assertEquals(await Deno.readFile(uri), good, "rebuilt whole");
    (loaded.val as StreamedCases).get(0); // reads and checks it
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("case cache: round trip, reused while the inputs are unchanged, rebuilt when one changes or is damaged", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [20, 20, 16], seed: 9 });
    const [c] = (await findCases(`${dir}/data`)).cases;
    const p = await preprocessCase(c);
    const decoded = decodeCachedCase(encodeCachedCase(p, "k"), "x");
    assertEquals(decoded.image, p.image);
    assertEquals(decoded.regions, p.regions);
    assertEquals(decoded.box, p.box);
    assertThrows(
      () => decodeCachedCase(new Uint8Array(40), "bad.rvcase"),
      RangeError,
      "bad.rvcase",
    );

    const cache = `${dir}/cache`;
    const first = await loadPreprocessed(c, cache);
    assertEquals(first.cached, false);
    const second = await loadPreprocessed(c, cache);
    assertEquals(second.cached, true);
    assertEquals(second.case.image, first.case.image);

    const key = await caseKey(c);
    // Rewriting an input (new size and time) changes the key and forces a rebuild.
    const flair = await getObject(c.images.flair);
    await new Promise((r) => setTimeout(r, 20));
    await putObject(c.images.flair, flair);
    await Deno.utime(c.images.flair, new Date(), new Date(Date.now() + 5000));
    assert((await caseKey(c)) !== key, "key changes with the file's modification time");
    assertEquals((await loadPreprocessed(c, cache)).cached, false);
    assertEquals((await loadPreprocessed(c, cache)).cached, true);

    // A damaged entry is rebuilt, not trusted.
    for await (const e of Deno.readDir(cache)) {
      await Deno.writeFile(`${cache}/${e.name}`, new Uint8Array(10));
    }
    assertEquals((await loadPreprocessed(c, cache)).cached, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadPreprocessed with shared: the same case in SharedArrayBuffers, from the NIfTI files and from the cache", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [20, 20, 16], seed: 9 });
    const [c] = (await findCases(`${dir}/data`)).cases;
    const plain = (await loadPreprocessed(c)).case;
    assert(!(plain.image.buffer instanceof SharedArrayBuffer));
    for (const expectCached of [false, true]) {
      const r = await loadPreprocessed(c, `${dir}/cache`, { shared: true });
      assertEquals(r.cached, expectCached);
      assert(r.case.image.buffer instanceof SharedArrayBuffer, "image in shared memory");
      assert(r.case.regions!.buffer instanceof SharedArrayBuffer, "regions in shared memory");
      assertEquals([...r.case.image], [...plain.image]);
      assertEquals([...r.case.regions!], [...plain.regions!]);
      assertEquals(r.case.box, plain.box);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
