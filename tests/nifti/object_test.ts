/**
 * pipeline/nifti/object.ts: readNifti() from storage, header first: what decodeNifti() reads, broken
 * files refused by name, huge or endless inputs refused in little memory, S3 in ranged reads.
 * @module
 */
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { createGzip } from "node:zlib";
import { createNiftiHeader, decodeNifti, encodeNifti } from "../../pipeline/nifti/mod.ts";
import { readNifti } from "../../pipeline/nifti/object.ts";
import { getObject, ObjectNotFoundError, putObject } from "../../pipeline/storage/objects.ts";
import { startS3rver } from "../_s3rver.ts";
import { ROOT, runMain } from "../_cli.ts";
import { GRID, gz, NAME, patched, sampleFile, voxelsFor } from "./_fixtures.ts";

// readNifti(): from storage, header first.

/** `gz(bytes)` with gzip's optional name field (FNAME) of `nameLength` bytes. */
function gzWithName(bytes: Uint8Array, nameLength: number): Uint8Array {
  const plain = gz(bytes);
  const out = new Uint8Array(plain.length + nameLength + 1);
  out.set(plain.subarray(0, 10));
  out[3] |= 0x08;
  out.fill(0x61, 10, 10 + nameLength); // "aaa…", then its terminating 0
  out.set(plain.subarray(10), 11 + nameLength);
  return out;
}

/** `bytes` as several gzip members one after the other, as `cat a.gz b.gz` makes. */
function gzMembers(bytes: Uint8Array, cuts: number[]): Uint8Array {
  const edges = [0, ...cuts, bytes.length];
  const parts = edges.slice(1).map((end, i) => gz(bytes.subarray(edges[i], end)));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
}

/** Writes `files` (name → bytes) into a new temporary folder and runs `fn` with its path. */
async function withFiles(
  files: Record<string, Uint8Array>,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nifti_test_" });
  try {
    for (const [name, bytes] of Object.entries(files)) {
      await Deno.writeFile(`${dir}/${name}`, bytes);
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("readNifti() reads what decodeNifti() reads: plain, gzip, big-endian, gzip members, name fields", async () => {
  const like = createNiftiHeader([7, 6, 5], GRID);
  const floats = encodeNifti(voxelsFor("float32", 210, 5), "float32", like, { gzip: false });
  const bigEndian = patched(floats, (v, b) => {
    // The same header and data, every field in the other byte order.
    const swap = (at: number, size: number) => b.subarray(at, at + size).reverse();
    swap(0, 4);
    for (let i = 0; i < 8; i++) swap(40 + 2 * i, 2);
    for (const at of [70, 72, 252, 254]) swap(at, 2);
    for (let i = 0; i < 8; i++) swap(76 + 4 * i, 4);
    for (const at of [108, 112, 116]) swap(at, 4);
    for (let i = 0; i < 18; i++) swap(256 + 4 * i, 4);
    for (let i = 0; i < 210; i++) swap(352 + 4 * i, 4);
    assertEquals(v.getInt32(0, false), 348);
  });
  // ~12 MB of noise: a gzip stream longer than one read, and an uncompressed file of 3 reads' size.
  const big = encodeNifti(
    Float32Array.from({ length: 3_000_000 }, (_, i) => Math.sin(i * 1.618) * 1e4),
    "float32",
    createNiftiHeader([200, 150, 100], GRID),
    { gzip: false },
  );
  // vox_offset 368 (a 16-byte extension before the data) and 353 (data not aligned to its type).
  const withGap = (gap: number) => {
    const out = new Uint8Array(floats.length + gap);
    out.set(floats.subarray(0, 352));
    out.set([1, 0, 0, 0], 348);
    out.set(floats.subarray(352), 352 + gap);
    new DataView(out.buffer).setFloat32(108, 352 + gap, true);
    return out;
  };
  const files: Record<string, Uint8Array> = {
    "extension.nii": withGap(16),
    "extension.nii.gz": gz(withGap(16)),
    "unaligned.nii": withGap(1),
    "unaligned.nii.gz": gz(withGap(1)),
    "plain.nii": floats,
    "zipped.nii.gz": gz(floats),
    "misnamed.nii": gz(floats),
    "be.nii.gz": gz(bigEndian),
    "members.nii.gz": gzMembers(floats, [100, 352, 700]),
    "named.nii.gz": gzWithName(floats, 300),
    "long-name.nii.gz": gzWithName(floats, 200_000), // past the first read
    "trailing-zeros.nii.gz": new Uint8Array([...gz(floats), 0, 0, 0, 0]),
    "big.nii": big,
    "big.nii.gz": gz(big),
    "int16.nii": sampleFile(),
  };
  assert(files["big.nii.gz"].length > 9_000_000, "the gzip stream needs two reads");
  await withFiles(files, async (dir) => {
    for (const [name, bytes] of Object.entries(files)) {
      const expected = decodeNifti(bytes, name);
      const image = await readNifti(`${dir}/${name}`);
      assertEquals(image.header, expected.header, `${name}: header`);
      assertEquals(image.data, expected.data, `${name}: data`);
    }
    for (const name of ["extension.nii.gz", "unaligned.nii"]) {
      assertEquals((await readNifti(`${dir}/${name}`)).data, decodeNifti(floats, NAME).data, name);
    }
    const be = await readNifti(`${dir}/be.nii.gz`);
    assertEquals(be.header.littleEndian, false);
    assertEquals(be.data, decodeNifti(floats, NAME).data);
  });
});

Deno.test("readNifti() refuses broken files as decodeNifti() does, naming them", async () => {
  const file = sampleFile();
  const zipped = gz(file);
  const longer = new Uint8Array(file.length + 420);
  longer.set(file);
  const cases: [string, Uint8Array, typeof SyntaxError | typeof RangeError, string][] = [
    ["empty.nii", new Uint8Array(0), SyntaxError, "the file is empty"],
    ["short-header.nii", file.subarray(0, 200), SyntaxError, "truncated header: 200 bytes"],
    ["short-data.nii", file.subarray(0, 700), SyntaxError, "truncated data"],
    ["longer.nii", longer, SyntaxError, "the file has 1192 (420 more)"],
    ["short-header.nii.gz", gz(file.subarray(0, 200)), SyntaxError, "truncated header"],
    ["short-data.nii.gz", gz(file.subarray(0, 700)), SyntaxError, "truncated data"],
    ["longer.nii.gz", gz(longer), SyntaxError, "the gzip stream decompresses to more"],
    ["cut.nii.gz", zipped.subarray(0, zipped.length - 4), SyntaxError, "truncated gzip stream"],
    ["two-bytes.nii.gz", zipped.subarray(0, 2), SyntaxError, "truncated gzip stream"],
    ["empty.nii.gz", gz(new Uint8Array(0)), SyntaxError, "the gzip stream is empty"],
    ["flipped.nii.gz", patched(zipped, (_, b) => (b[40] ^= 0xff)), SyntaxError, "corrupted gzip"],
    ["crc.nii.gz", patched(zipped, (_, b) => (b[b.length - 6] ^= 0xff)), SyntaxError, "corrupted"],
    ["magic.nii", patched(file, (_, b) => b.set([0x61, 0x62, 0x63, 0], 344)), SyntaxError, "magic"],
    ["dims.nii", patched(file, (v) => v.setInt16(40, 9, true)), RangeError, "dim[0] must be 1..7"],
    ["pixdim.nii", patched(file, (v) => v.setFloat32(80, NaN, true)), RangeError, "pixdim[1]"],
    ["slope.nii", patched(file, (v) => v.setFloat32(112, 3e38, true)), RangeError, "float32"],
    [
      "offset.nii.gz",
      gz(patched(file, (v) => v.setFloat32(108, 1e30, true))),
      SyntaxError,
      "vox_offset must be an integer of at least 352 in a single-file NIfTI-1, found 1.00000001504",
    ],
    [
      "extensions.nii.gz",
      gz(patched(file, (v) => v.setFloat32(108, 100_000_352, true))),
      RangeError,
      "vox_offset 100000352 leaves 100000004 bytes between the header and the data, more than " +
      "the limit of 67108864",
    ],
    [
      "huge.nii.gz",
      gz(patched(file, (v) => [1, 2, 3].forEach((i) => v.setInt16(40 + 2 * i, 32767, true)))),
      RangeError,
      "more than the limit of 2147483648 (maxBytes)",
    ],
  ];
  const files = Object.fromEntries(cases.map(([name, bytes]) => [name, bytes]));
  await withFiles(files, async (dir) => {
    for (const [name, bytes, kind, fragment] of cases) {
      const path = `${dir}/${name}`;
      const e = await assertRejects(() => readNifti(path), kind, fragment);
      assert(e.message.startsWith(`Cannot read NIfTI "${path}": `), e.message);
      // The same verdict as the in-memory decoder.
      assertThrows(() => decodeNifti(bytes, name), kind);
    }
    await assertRejects(
      () => readNifti(`${dir}/short-data.nii`, { maxBytes: 419 }),
      RangeError,
      "would need 420 bytes of data, more than the limit of 419",
    );
  });
});

Deno.test("readNifti() refuses a gzip header behind more than 1 MiB of gzip name field", async () => {
  const files = { "named.nii.gz": gzWithName(sampleFile(), 1_100_000) };
  await withFiles(files, async (dir) => {
    await assertRejects(
      () => readNifti(`${dir}/named.nii.gz`),
      SyntaxError,
      "no NIfTI header in the first 1048576 bytes of the gzip stream",
    );
  });
});

/** Writes a gzip file of `header` followed by `zeros` zero bytes, streamed (nothing held whole). */
async function writeZerosGzip(path: string, header: Uint8Array, zeros: number): Promise<void> {
  const gzip = createGzip({ level: 1 });
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  const pending: Promise<number>[] = [];
  gzip.on("data", (d: Uint8Array) => pending.push(file.write(d)));
  const ended = new Promise((resolve) => gzip.on("end", resolve));
  gzip.write(header);
  const chunk = new Uint8Array(1 << 20);
  for (let left = zeros; left > 0; left -= chunk.length) {
    if (!gzip.write(chunk.subarray(0, Math.min(left, chunk.length)))) {
      await new Promise((resolve) => gzip.once("drain", resolve));
    }
  }
  gzip.end();
  await ended;
  await Promise.all(pending);
  file.close();
}

/** The 352 first bytes of a uint8 volume of `dims` (whose data is then written separately). */
function headerOf(dims: [number, number, number]): Uint8Array {
  const one = createNiftiHeader([1, 1, 1], GRID, "uint8");
  const head = encodeNifti(new Uint8Array(1), "uint8", one, { gzip: false }).slice(0, 352);
  dims.forEach((d, i) => new DataView(head.buffer).setInt16(42 + 2 * i, d, true));
  return head;
}

Deno.test("readNifti() refuses a 3 GB file, gzip streams of the wrong size and devices from the header and sizes, in little memory", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nifti_test_" });
  try {
    // A valid 7×6×5 header on a 3 GiB (sparse) file: `inspect` used to hold 6.4 GB before refusing.
    const big = `${dir}/big.nii`;
    const handle = await Deno.open(big, { write: true, createNew: true });
    await handle.write(sampleFile());
    await handle.truncate(3 * 2 ** 30);
    handle.close();
    // A header claiming 1 GiB in a 105-byte gzip file (deflate cannot inflate it that far).
    const claim = `${dir}/claim.nii.gz`;
    await Deno.writeFile(claim, gz(new Uint8Array([...headerOf([1024, 1024, 1024]), 1, 2, 3])));
    // Headers claiming 256 MiB on streams of 255 MiB and 512 MiB of zeros: their gzip trailers
    // disagree with the header, so they are inflated once into nothing, never into 256 MiB. The
    // limit, 192 MiB, leaves room for the inflater's discarded chunks that the garbage collector
    // has not freed yet (measured 22-148 MB over 8 runs, the most on a loaded machine); keeping
    // the data would take at least the 255 MiB inflated.
    const short = `${dir}/short.nii.gz`;
    const long = `${dir}/long.nii.gz`;
    await writeZerosGzip(short, headerOf([1024, 512, 512]), 255 * 2 ** 20);
    await writeZerosGzip(long, headerOf([1024, 512, 512]), 512 * 2 ** 20);

    const expect: [string, typeof Error, string, number][] = [
      [big, SyntaxError, "the file has 3221225472 (3221224700 more)", 16],
      [claim, SyntaxError, "but a gzip file of 105 bytes inflates to at most 108360", 16],
      [short, SyntaxError, "truncated data: dims 1024×512×512 of uint8", 192],
      [long, SyntaxError, "the gzip stream decompresses to more", 192],
    ];
    for (const device of ["/dev/zero", "/dev/urandom"]) {
      if (await Deno.stat(device).then(() => true, () => false)) {
        expect.push([device, TypeError, "it is a character device, not a regular file", 16]);
      }
    }
    const fifo = `${dir}/fifo.nii`;
    const mkfifo = await new Deno.Command("mkfifo", { args: [fifo] }).output().catch(() => null);
    if (mkfifo?.success) expect.push([fifo, TypeError, "it is a FIFO (named pipe)", 16]);
    else console.log("FIFO case IGNORED: no mkfifo");

    for (const [path, kind, fragment] of expect) {
      const e = await assertRejects(() => readNifti(path), kind, fragment);
      assertStringIncludes(e.message, `"${path}"`);
    }
    await assertRejects(() => readNifti(dir), ObjectNotFoundError, "it is a folder");
    await assertRejects(() => getObject("/dev/zero"), TypeError, "character device");

    if (Deno.build.os !== "linux") {
      console.log("peak-memory check IGNORED: it reads /proc/self (Linux only)");
      return;
    }
    const run = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--lock=tests/deno.lock",
        "tests/_nifti_peak.ts",
        ...expect.map((x) => x[0]),
      ],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(run.success, new TextDecoder().decode(run.stderr));
    const lines = new TextDecoder().decode(run.stdout).trim().split("\n").map((l) => JSON.parse(l));
    lines.forEach((r: { path: string; error?: string; peakBytes: number }, i: number) => {
      const [path, , fragment, limitMiB] = expect[i];
      assertEquals(r.path, path);
      assertStringIncludes(String(r.error), fragment);
      assert(r.peakBytes < limitMiB * 2 ** 20, `${path}: peak ${r.peakBytes} bytes`);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("inspect refuses /dev/zero at once instead of reading it forever", {
  ignore: Deno.build.os === "windows",
}, async () => {
  const run = await runMain(["inspect", "/dev/zero"]);
  assertEquals(run.code, 1, run.stderr);
  assertStringIncludes(
    run.stderr,
    'inspect: Cannot look up "/dev/zero": it is a character device, not a regular file',
  );
});

Deno.test("readNifti() reads an S3 object header first, in ranged reads, and refuses a wrong size", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const floats = encodeNifti(
    Float32Array.from({ length: 2_500_000 }, (_, i) => Math.cos(i * 0.377) * 1e3),
    "float32",
    createNiftiHeader([250, 100, 100], GRID),
    { gzip: false },
  );
  const longer = new Uint8Array(sampleFile().length + 2);
  longer.set(sampleFile());
  const objects: Record<string, Uint8Array> = {
    "s3://brats/a/t1.nii": sampleFile(),
    "s3://brats/a/t1.nii.gz": gz(sampleFile()),
    "s3://brats/a/big.nii.gz": gz(floats), // more than one 8 MiB read
    "s3://brats/a/members.nii.gz": gzMembers(floats, [300, 4_000_000]),
  };
  for (const [uri, bytes] of Object.entries(objects)) await putObject(uri, bytes);
  for (const [uri, bytes] of Object.entries(objects)) {
    const image = await readNifti(uri);
    assertEquals(image.data, decodeNifti(bytes, uri).data, uri);
  }
  await putObject("s3://brats/a/longer.nii", longer);
  await assertRejects(
    () => readNifti("s3://brats/a/longer.nii"),
    SyntaxError,
    'Cannot read NIfTI "s3://brats/a/longer.nii": data size disagrees with the header',
  );
  await assertRejects(() => readNifti("s3://brats/a/none.nii"), ObjectNotFoundError);
});
