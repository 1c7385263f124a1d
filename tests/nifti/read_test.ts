/**
 * pipeline/nifti/read.ts and header.ts: decodeNifti() against nibabel on files nibabel wrote,
 * scaling, headers from a prefix, and every broken input refused naming the file and the problem
 * (also where loadCase, inspect and evaluatePair meet it).
 * @module
 */
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { gunzipSync } from "node:zlib";
import {
  createNiftiHeader,
  decodeNifti,
  decodeNiftiHeader,
  encodeNifti,
  inspectNifti,
  isGzip,
  type NiftiDatatype,
  type NiftiImage,
  scaledData,
  volumeStats,
} from "../../pipeline/nifti/mod.ts";
import {
  HAS_NIBABEL,
  type NibabelFixture,
  readWithNibabel,
  writeNibabelFixtures,
} from "../_nifti_fixtures.ts";
import { findCases } from "../../pipeline/cases/cases.ts";
import { evaluatePair } from "../../pipeline/evaluation/evaluation.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { loadCase, preprocessCase } from "../../pipeline/cases/preprocess.ts";
import { runMain } from "../_cli.ts";
import * as niftiReader from "nifti-reader-js";
import {
  assertClose,
  assertMatrixClose,
  assertRefused,
  checkAgainstNibabel,
  DATATYPES,
  GRID,
  gz,
  NAME,
  patched,
  sampleFile,
  voxelsFor,
} from "./_fixtures.ts";

Deno.test({
  name: "decodeNifti() agrees with nibabel on files nibabel wrote",
  ignore: !HAS_NIBABEL,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "nifti_test_" });
    try {
      const fixtures = await writeNibabelFixtures(dir);
      const read = (f: NibabelFixture) => Deno.readFileSync(f.path);
      const check = (...names: string[]) => {
        for (const name of names) {
          assert(fixtures[name], `fixture ${name}`);
          checkAgainstNibabel(fixtures[name], read(fixtures[name]), name);
        }
      };

      await t.step("all 8 datatypes, NIfTI-1 and NIfTI-2", () => {
        check(...DATATYPES.flatMap((d) => [`v1_${d}`, `v2_${d}`]));
      });
      await t.step("big-endian NIfTI-1 and NIfTI-2, data returned in native order", () => {
        check("be1_uint16", "be1_int16", "be1_float32", "be1_float64", "be2_int32", "be2_float32");
      });
      await t.step(".nii.gz, including big-endian and NIfTI-2", () => {
        check("gz1_int16", "gz2_float32", "gzbe1_float64");
      });
      await t.step("gzip is detected by magic bytes, not by the name", () => {
        const zipped = fixtures.gz1_int16;
        checkAgainstNibabel(zipped, read(zipped), "misnamed.nii");
        const plain = fixtures.v1_int16;
        checkAgainstNibabel(plain, read(plain), "misnamed.nii.gz");
      });
      await t.step("4D volumes (7×6×5×3 and gzipped NIfTI-2 7×6×5×2)", () => {
        check("4d_float32", "4d_gz_int16");
      });
      await t.step("scl_slope and scl_inter, slope 0 or NaN meaning no scaling", () => {
        check("scl_int16", "scl_uint8_gz", "scl_float32_v2", "scl_slope0", "scl_slope_nan");
        const image = decodeNifti(read(fixtures.scl_int16), "scl_int16.nii");
        assertEquals([image.header.sclSlope, image.header.sclInter], [0.5, -3]);
        assert(image.data instanceof Int16Array, "raw data keeps the stored type");
      });
      await t.step("affine: sform only, qform only, neither (base affine), invalid codes", () => {
        check("sform_only", "qform_only", "qform_only_be2", "qform_rotated", "neither");
        check("neither_2d", "neither_negative_pixdim", "bad_sform_code");
        const base = decodeNiftiHeader(read(fixtures.neither), "neither.nii").affine;
        assertEquals(base, [[-2, 0, 0, 6], [0, 3, 0, -7.5], [0, 0, 4, -8], [0, 0, 0, 1]]);
      });
      await t.step("qfac: pixdim[0] of -1 flips z, 0 and -2 do not (nibabel's rule)", () => {
        check("qform_only", "pixdim0_zero", "pixdim0_minus2");
        const flipped = decodeNiftiHeader(read(fixtures.qform_only), "qform_only.nii");
        assertEquals(flipped.qfac, -1);
        assertEquals(decodeNiftiHeader(read(fixtures.pixdim0_minus2), "x.nii").qfac, 1);
      });
      await t.step("a quaternion with b²+c²+d² just over 1 from float32 rounding (w = 0)", () => {
        check("quatern_w0");
      });
      await t.step("NIfTI-2 dims over 127 in either byte order", () => {
        check("dim200_v2", "dim200_be2");
      });
      await t.step("non-finite voxels: refused with their count and first voxel, or zeroed", () => {
        for (const name of ["nonfinite_float32", "nonfinite_float64_gz"]) {
          const fixture = fixtures[name];
          const { count, first } = fixture.nonFinite;
          const error = assertThrows(() => decodeNifti(read(fixture), `${name}.nii`), RangeError);
          assertStringIncludes(error.message, `Cannot read NIfTI "${name}.nii": `);
          assertStringIncludes(error.message, `${count} non-finite value`);
          assertStringIncludes(error.message, `first is voxel ${first},`);
          const image = decodeNifti(read(fixture), name, { nonFinite: "zero" });
          fixture.raw.forEach((v, i) => assertEquals(image.data[i], v ?? 0, `voxel ${i}`));
        }
        const error = assertThrows(
          () => decodeNifti(read(fixtures.nonfinite_float32), "n.nii"),
          RangeError,
        );
        assertStringIncludes(error.message, "at [3, 2, 0]"); // 17 = 3 + 7 * 2
      });
      await t.step("decodeNiftiHeader() reads each file from a prefix", () => {
        for (const [name, fixture] of Object.entries(fixtures)) {
          const bytes = read(fixture);
          const prefix = bytes.subarray(0, fixture.gzip ? Math.ceil(bytes.length * 0.6) : 544);
          const header = decodeNiftiHeader(prefix, name);
          assertEquals(header.dims, fixture.dims, name);
          assertMatrixClose(header.affine, fixture.affine, 1e-9, name);
        }
      });
      await t.step(
        "inspectNifti() gives nibabel's dims, pixdim, datatype, affine and stats",
        () => {
          const fixture = fixtures.scl_int16;
          const summary = inspectNifti(read(fixture), "scl_int16.nii");
          assertEquals(Object.keys(summary), [
            "dims",
            "pixdim",
            "datatype",
            "affine",
            "min",
            "max",
            "mean",
          ]);
          assertEquals(summary.dims, fixture.dims);
          assertEquals(summary.datatype, "int16");
          summary.pixdim.forEach((p, i) => assertClose(p, fixture.pixdim[i], 1e-12, "pixdim"));
          assertMatrixClose(summary.affine, fixture.affine, 1e-9, "affine");
          assertEquals([summary.min, summary.max], [fixture.min, fixture.max]);
          assertClose(summary.mean, fixture.mean!, 1e-12, "mean");
        },
      );
      await t.step("nifti-reader-js agrees on NIfTI-1 header fields", () => {
        for (const d of DATATYPES) {
          const bytes = read(fixtures[`v1_${d}`]);
          const theirs = niftiReader.readHeader(bytes.slice().buffer as ArrayBuffer)!;
          const ours = decodeNiftiHeader(bytes, d);
          assertEquals(ours.dims, theirs.dims.slice(1, theirs.dims[0] + 1));
          assertEquals(ours.pixdim, theirs.pixDims.slice(1, theirs.dims[0] + 1));
          assertEquals(ours.quatern, [theirs.quatern_b, theirs.quatern_c, theirs.quatern_d]);
          assertEquals(ours.qoffset, [theirs.qoffset_x, theirs.qoffset_y, theirs.qoffset_z]);
          assertEquals([ours.qformCode, ours.sformCode], [theirs.qform_code, theirs.sform_code]);
          assertEquals(ours.affine, theirs.affine); // sform_code 2 > qform_code 1: both take the sform
        }
      });

      await t.step("encodeNifti() output keeps the template's grid in nibabel", async () => {
        const templates = [
          "v1_int16",
          "qform_only",
          "qform_only_be2",
          "sform_only",
          "neither",
          "v2_float64",
          "be1_float32",
          "gz2_float32",
          "pixdim0_zero",
        ];
        const written: {
          template: string;
          datatype: NiftiDatatype;
          path: string;
          data: number[];
        }[] = [];
        templates.forEach((template, t) => {
          const like = decodeNiftiHeader(read(fixtures[template]), template);
          DATATYPES.forEach((datatype, d) => {
            const data = voxelsFor(datatype, 210, t + d);
            const path = `${dir}/out_${template}_${datatype}.nii${(t + d) % 2 ? ".gz" : ""}`;
            const bytes = encodeNifti(data, datatype, like, {
              gzip: (t + d) % 2 === 1,
              description: `from ${template}`,
            });
            Deno.writeFileSync(path, bytes);
            written.push({ template, datatype, path, data: Array.from(data) });
          });
        });
        const sources = await readWithNibabel(templates.map((t) => fixtures[t].path));
        const views = await readWithNibabel(written.map((w) => w.path));
        written.forEach((w, i) => {
          const view = views[i];
          const source = sources[templates.indexOf(w.template)];
          const what = (field: string) => `${w.template} as ${w.datatype}: ${field}`;
          assertEquals(view.dims, fixtures[w.template].dims, what("dims"));
          assertEquals(view.datatype, w.datatype, what("datatype"));
          assertMatrixClose(view.affine, fixtures[w.template].affine, 1e-5, what("affine"));
          assertMatrixClose(view.qform, source.qform, 1e-5, what("qform"));
          assertMatrixClose(view.sform, source.sform, 1e-5, what("sform"));
          assertEquals([view.qformCode, view.sformCode], [source.qformCode, source.sformCode]);
          view.pixdim.slice(1, 4).forEach((p, k) =>
            assertClose(p, source.pixdim[k + 1], 1e-6, what(`pixdim[${k + 1}]`))
          );
          assertEquals(view.pixdim[0], source.pixdim[0] === -1 ? -1 : 1, what("qfac"));
          assertEquals(view.xyztUnits, source.xyztUnits, what("xyzt_units"));
          assertEquals([view.sclSlope, view.sclInter], [1, 0], what("scl_slope, scl_inter"));
          assertEquals([view.voxOffset, view.magic], [352, "n+1"], what("vox_offset, magic"));
          assertEquals(view.description, `from ${w.template}`, what("descrip"));
          assertEquals(view.data, w.data, what("data"));
        });
      });

      await t.step("encodeNifti() writes 4D probabilities (dim[4] = 3) nibabel reads", async () => {
        const like = decodeNiftiHeader(read(fixtures.v1_float32), "t1.nii");
        const data = voxelsFor("float32", 210 * 3, 1);
        const path = `${dir}/probabilities.nii.gz`;
        Deno.writeFileSync(path, encodeNifti(data, "float32", like, { dims: [7, 6, 5, 3] }));
        const [view] = await readWithNibabel([path]);
        assertEquals(view.dims, [7, 6, 5, 3]);
        assertMatrixClose(view.affine, fixtures.v1_float32.affine, 1e-6, "affine");
        assertEquals(view.data, Array.from(data));
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
Deno.test("scaledData() and volumeStats() apply scl_slope and scl_inter", () => {
  const scaled = patched(sampleFile(), (v) => {
    v.setFloat32(112, 0.5, true);
    v.setFloat32(116, -3, true);
  });
  const image = decodeNifti(scaled, NAME);
  assertEquals(Array.from(image.data.subarray(0, 3)), [0, 1, 2]);
  assertEquals(Array.from(scaledData(image).subarray(0, 3)), [-3, -2.5, -2]);
  assertEquals(volumeStats(image), { min: -3, max: 209 * 0.5 - 3, mean: 104.5 * 0.5 - 3 });
  for (const slope of [0, NaN, Infinity]) {
    const unscaled = decodeNifti(patched(scaled, (v) => v.setFloat32(112, slope, true)), NAME);
    assertEquals(volumeStats(unscaled), { min: 0, max: 209, mean: 104.5 }, `slope ${slope}`);
    assertEquals(scaledData(unscaled)[209], 209);
  }
});

Deno.test("decodeNiftiHeader() reads the header from a short prefix of a large .nii.gz", () => {
  const like = createNiftiHeader([96, 96, 64], GRID);
  const noise = Float32Array.from({ length: 96 * 96 * 64 }, (_, i) => Math.sin(i * 1.618) * 1e4);
  const file = encodeNifti(noise, "float32", like);
  assert(file.length > 1_000_000, "the volume compresses poorly");
  const header = decodeNiftiHeader(file.subarray(0, 1000), NAME);
  assertEquals(header.dims, [96, 96, 64]);
  assertMatrixClose(header.affine, GRID, 1e-5, "affine");
  assertRefused(
    () => decodeNifti(file.subarray(0, 1000), NAME),
    SyntaxError,
    "truncated gzip stream",
  );
});

Deno.test("isGzip() looks at the magic bytes 1f 8b only", () => {
  assert(isGzip(new Uint8Array([0x1f, 0x8b, 8])));
  assert(!isGzip(new Uint8Array([0x1f])));
  assert(!isGzip(new Uint8Array([0x8b, 0x1f])));
  assert(!isGzip(sampleFile()));
});

// ---------------------------------------------------------------------------------------------
// Broken input: each refused with an error naming the file and the problem.

Deno.test("decodeNifti() refuses a wrong magic, a .hdr/.img pair and non-NIfTI bytes", () => {
  const file = sampleFile();
  const wrong = patched(file, (_, b) => b.set([0x61, 0x62, 0x63, 0], 344));
  assertRefused(
    () => decodeNifti(wrong, NAME),
    SyntaxError,
    'wrong magic at byte 344: expected "n+1"',
  );
  const pair = patched(file, (_, b) => b.set([0x6e, 0x69, 0x31, 0], 344));
  assertRefused(() => decodeNifti(pair, NAME), SyntaxError, '"ni1"', ".hdr/.img pair");
  const text = new TextEncoder().encode("<html>not found</html>".repeat(20));
  assertRefused(() => decodeNifti(text, NAME), SyntaxError, "not a NIfTI file: sizeof_hdr");
  assertRefused(() => decodeNifti(gz(text), NAME), SyntaxError, "not a NIfTI file");
  const asNifti2 = patched(file, (v) => v.setInt32(0, 540, true));
  assertRefused(() => decodeNifti(asNifti2, NAME), SyntaxError, 'expected "n+2"');
});

Deno.test("decodeNifti() refuses an empty file and a truncated header, plain or gzipped", () => {
  assertRefused(() => decodeNifti(new Uint8Array(0), NAME), SyntaxError, "the file is empty");
  const file = sampleFile();
  assertRefused(
    () => decodeNifti(file.subarray(0, 200), NAME),
    SyntaxError,
    "truncated header: 200 bytes, a NIfTI-1 header needs 348",
  );
  assertRefused(
    () => decodeNiftiHeader(file.subarray(0, 2), NAME),
    SyntaxError,
    "truncated header: 2 bytes",
  );
  assertRefused(
    () => decodeNifti(gz(file.subarray(0, 200)), NAME),
    SyntaxError,
    "truncated header: the gzip stream decompresses to 200 bytes, a NIfTI-1 header needs 348",
  );
  const header = assertThrows(() => decodeNiftiHeader(file.subarray(0, 300), "x.nii"), SyntaxError);
  assertStringIncludes(header.message, 'Cannot read NIfTI header of "x.nii": truncated header');
});

Deno.test("decodeNifti() refuses truncated data and data the header does not describe", () => {
  const file = sampleFile();
  assertRefused(
    () => decodeNifti(file.subarray(0, 362), NAME),
    SyntaxError,
    "truncated data: dims 7×6×5 of int16 need 420 bytes from vox_offset 352, 772 in all; " +
      "the file has 362",
  );
  assertRefused(
    () => decodeNifti(gz(file.subarray(0, 700)), NAME),
    SyntaxError,
    "truncated data",
    "the decompressed file has 700",
  );
  const longer = new Uint8Array(file.length + 420);
  longer.set(file);
  assertRefused(
    () => decodeNifti(longer, NAME),
    SyntaxError,
    "data size disagrees with the header",
    "the file has 1192 (420 more)",
  );
  assertRefused(
    () => decodeNifti(gz(longer), NAME),
    SyntaxError,
    "data size disagrees with the header",
    "the gzip stream decompresses to more",
  );
});

Deno.test("decodeNifti() refuses truncated, empty and corrupted gzip streams", () => {
  const zipped = gz(sampleFile());
  assertRefused(
    () => decodeNifti(zipped.subarray(0, zipped.length - 4), NAME),
    SyntaxError,
    "truncated gzip stream",
  );
  assertRefused(
    () => decodeNifti(zipped.subarray(0, 2), NAME),
    SyntaxError,
    "truncated gzip stream: its 2 bytes decompress to 0",
  );
  assertRefused(
    () => decodeNifti(gz(new Uint8Array(0)), NAME),
    SyntaxError,
    "the gzip stream is empty",
  );
  const flipped = patched(zipped, (_, b) => (b[40] ^= 0xff));
  assertRefused(() => decodeNifti(flipped, NAME), SyntaxError, "corrupted gzip stream");
  const badCrc = patched(zipped, (_, b) => (b[b.length - 6] ^= 0xff));
  assertRefused(() => decodeNifti(badCrc, NAME), SyntaxError, "corrupted gzip stream", "check");
  const badFlags = patched(zipped, (_, b) => (b[3] = 0xe0));
  assertRefused(() => decodeNiftiHeader(badFlags, NAME), SyntaxError, "corrupted gzip stream");
});

Deno.test("decodeNifti() refuses absurd dims, with a configurable cap on data size", () => {
  const file = sampleFile();
  assertRefused(
    () => decodeNifti(patched(file, (v) => v.setInt16(40, 9, true)), NAME),
    RangeError,
    "dim[0] must be 1..7, found 9",
  );
  assertRefused(
    () => decodeNifti(patched(file, (v) => v.setInt16(40, 0, true)), NAME),
    RangeError,
    "dim[0] must be 1..7, found 0",
  );
  assertRefused(
    () => decodeNifti(patched(file, (v) => v.setInt16(46, 0, true)), NAME),
    RangeError,
    "dim[3] must be at least 1, found 0",
  );
  assertRefused(
    () => decodeNifti(patched(file, (v) => v.setInt16(44, -6, true)), NAME),
    RangeError,
    "dim[2] must be at least 1, found -6",
  );
  const huge = patched(file, (v) => [1, 2, 3].forEach((i) => v.setInt16(40 + 2 * i, 32767, true)));
  assertRefused(
    () => decodeNifti(gz(huge), NAME),
    RangeError,
    "dims 32767×32767×32767 of int16 would need 70362301923326 bytes of data",
    "more than the limit of 2147483648 (maxBytes)",
  );
  assertRefused(
    () => decodeNifti(file, NAME, { maxBytes: 419 }),
    RangeError,
    "would need 420 bytes of data, more than the limit of 419",
  );
  assertEquals(decodeNifti(file, NAME, { maxBytes: 420 }).data.length, 210);
});

Deno.test("decodeNifti() refuses unsupported datatypes, naming the code", () => {
  const file = sampleFile();
  for (const [code, label] of [[128, "128 (RGB24)"], [1024, "1024 (int64)"], [9999, "9999 "]]) {
    assertRefused(
      () => decodeNifti(patched(file, (v) => v.setInt16(70, code as number, true)), NAME),
      RangeError,
      `datatype ${label}`,
      "is not supported; supported: uint8 (2), int8 (256)",
    );
  }
});

Deno.test("decodeNifti() refuses a bad vox_offset, scl_inter, and qform quaternion", () => {
  const file = sampleFile();
  assertRefused(
    () => decodeNifti(patched(file, (v) => v.setFloat32(108, 0, true)), NAME),
    SyntaxError,
    "vox_offset must be an integer of at least 352",
  );
  assertRefused(
    () => decodeNifti(patched(file, (v) => v.setFloat32(116, Infinity, true)), NAME),
    RangeError,
    "scl_inter is Infinity while scl_slope is 1",
  );
  const badQuaternion = patched(file, (v) => {
    v.setInt16(252, 1, true);
    v.setInt16(254, 0, true);
    v.setFloat32(256, 1.001, true);
  });
  assertRefused(() => decodeNifti(badQuaternion, NAME), RangeError, "qform quaternion");
  const nanSform = patched(file, (v) => v.setFloat32(280, NaN, true));
  assertRefused(
    () => decodeNifti(nanSform, NAME),
    RangeError,
    "affine from the sform has non-finite",
  );
});

Deno.test("decodeNifti() refuses NaN and Infinity voxels unless nonFinite is 'zero'", () => {
  const like = createNiftiHeader([7, 6, 5], GRID);
  const values = new Float32Array(210).fill(1);
  const file = encodeNifti(values, "float32", like, { gzip: false });
  const bad = patched(file, (v) => {
    v.setFloat32(352 + 4 * 50, NaN, true);
    v.setFloat32(352 + 4 * 60, -Infinity, true);
  });
  assertRefused(
    () => decodeNifti(bad, NAME),
    RangeError,
    "the image data holds 2 non-finite values (NaN or ±Infinity); the first is voxel 50, at [1, 1, 1]",
  );
  const zeroed: NiftiImage = decodeNifti(bad, NAME, { nonFinite: "zero" });
  assertEquals([zeroed.data[50], zeroed.data[60], zeroed.data[61]], [0, 0, 1]);
  assertEquals(volumeStats(zeroed).min, 0);
});

Deno.test("decodeNifti() refuses scl_slope/scl_inter that scale the voxels beyond float32", () => {
  const file = sampleFile(); // int16 0..209
  const slope = (s: number, i = 0) =>
    patched(file, (v) => {
      v.setFloat32(112, s, true);
      v.setFloat32(116, i, true);
    });
  // 209 * 3e38 overflows float32 (and inspect used to print max 6.3e40 for it).
  assertRefused(
    () => decodeNifti(slope(3e38), NAME),
    RangeError,
    "scl_slope 3.0000000054977558e+38 and scl_inter 0 scale the int16 data (raw 0 to 209)",
    "beyond float32's range",
  );
  assertRefused(() => inspectNifti(slope(-3e38), NAME), RangeError, "beyond float32's range");
  assertRefused(() => decodeNifti(slope(2e36, 3.4e38), NAME), RangeError, "scl_inter 3.39999");
  // Large but representable: accepted, and scaledData() holds no Infinity.
  const big = decodeNifti(slope(1e36), NAME);
  assert(scaledData(big).every(Number.isFinite));
  assertClose(volumeStats(big).max, 209 * Math.fround(1e36), 1e-12, "max");
  // Unscaled float64 voxels beyond float32 are refused the same way; nonFinite "zero" does not
  // hide them (they are finite, only too large).
  const like = createNiftiHeader([7, 6, 5], GRID);
  const f64 = encodeNifti(new Float64Array(210).fill(2), "float64", like, { gzip: false });
  const huge = patched(f64, (v) => v.setFloat64(352 + 8 * 7, -1e300, true));
  for (const nonFinite of ["error", "zero"] as const) {
    assertRefused(
      () => decodeNifti(huge, NAME, { nonFinite }),
      RangeError,
      "the float64 data spans -1e+300 to 2, beyond float32's range",
    );
  }
});

Deno.test("loadCase() and preprocessCase() (train, segment) refuse a modality whose scl_slope overflows, naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nifti_test_" });
  try {
    await writePhantomDataset(dir, { cases: 1, dims: [12, 10, 8], seed: 3 });
    const [c] = (await findCases(dir)).cases;
    const t1 = c.images.t1;
    const raw = new Uint8Array(gunzipSync(await Deno.readFile(t1)));
    new DataView(raw.buffer).setFloat32(112, 3e38, true);
    await Deno.writeFile(t1, gz(raw));
    for (const load of [loadCase, preprocessCase]) {
      const e = await assertRejects(() => load(c), RangeError, `Cannot read NIfTI "${t1}"`);
      assertStringIncludes(e.message, "beyond float32's range");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("inspect exits non-zero on a file whose scl_slope overflows float32, naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nifti_test_" });
  try {
    const path = `${dir}/scaled.nii`;
    await Deno.writeFile(path, patched(sampleFile(), (v) => v.setFloat32(112, 3e38, true)));
    const run = await runMain(["inspect", path]);
    assertEquals(run.code, 1, run.stderr);
    assertEquals(run.stdout, "");
    assertStringIncludes(run.stderr, `inspect: Cannot read NIfTI "${path}": scl_slope 3.0000000`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("decodeNifti() refuses NaN or infinite pixdim, naming the file; zero and negative ones are fixed as nibabel does", () => {
  const file = sampleFile();
  const pixdim = (i: number, p: number) => patched(file, (v) => v.setFloat32(76 + 4 * i, p, true));
  // The sform gives a finite affine, so only the voxel sizes themselves show the problem (inspect
  // used to print "pixdim":[null,1,1]).
  assertRefused(
    () => decodeNifti(pixdim(1, NaN), NAME),
    RangeError,
    "pixdim[1] (the voxel size along x) is NaN; voxel sizes must be finite numbers",
  );
  assertRefused(
    () => decodeNiftiHeader(pixdim(3, -Infinity), NAME),
    RangeError,
    "pixdim[3] (the voxel size along z) is Infinity",
  );
  assertRefused(() => decodeNifti(gz(pixdim(2, Infinity)), NAME), RangeError, "pixdim[2]");
  assertEquals(decodeNifti(pixdim(1, 0), NAME).header.pixdim[0], 1);
  assertEquals(decodeNifti(pixdim(2, -2.5), NAME).header.pixdim[1], 2.5);
  // pixdim beyond dim[0] is not used, and is not checked.
  assertEquals(decodeNifti(pixdim(4, NaN), NAME).header.dims, [7, 6, 5]);

  // In a 4D file the time step, pixdim[4], is checked too.
  const like = createNiftiHeader([7, 6, 5, 2], GRID);
  const v1 = encodeNifti(new Float32Array(420), "float32", like, { gzip: false });
  assertEquals(decodeNifti(v1, NAME).header.pixdim.length, 4);
  assertRefused(
    () => decodeNifti(patched(v1, (v) => v.setFloat32(76 + 16, NaN, true)), NAME),
    RangeError,
    "pixdim[4] is NaN",
  );
});

Deno.test("evaluatePair() refuses a reference with a NaN pixdim, naming the reference", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nifti_test_" });
  try {
    const like = createNiftiHeader([7, 6, 5], GRID, "uint8");
    const labels = Uint8Array.from({ length: 210 }, (_, i) => (i % 7 === 3 ? 1 : 0));
    const pred = `${dir}/pred.nii.gz`;
    const truth = `${dir}/truth.nii`;
    await Deno.writeFile(pred, encodeNifti(labels, "uint8", like));
    const plain = encodeNifti(labels, "uint8", like, { gzip: false });
    await Deno.writeFile(truth, patched(plain, (v) => v.setFloat32(80, NaN, true)));
    await assertRejects(
      () => evaluatePair(pred, truth),
      RangeError,
      `Cannot read NIfTI "${truth}": pixdim[1] (the voxel size along x) is NaN`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
