import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { createGzip, gunzipSync, gzipSync } from "node:zlib";
import * as niftiReader from "nifti-reader-js";
import {
  createNiftiHeader,
  decodeNifti,
  decodeNiftiHeader,
  encodeNifti,
  inspectNifti,
  isGzip,
  type NiftiDatatype,
  type NiftiHeader,
  type NiftiImage,
  scaledData,
  volumeStats,
} from "../pipeline/nifti/mod.ts";
import {
  HAS_NIBABEL,
  type NibabelFixture,
  readWithNibabel,
  writeNibabelFixtures,
} from "./_nifti_fixtures.ts";
import { findCases } from "../pipeline/cases/cases.ts";
import { evaluatePair } from "../pipeline/evaluation/evaluation.ts";
import { readNifti } from "../pipeline/nifti/object.ts";
import { writePhantomDataset } from "../pipeline/synth/phantom.ts";
import { loadCase, preprocessCase } from "../pipeline/cases/preprocess.ts";
import { getObject, ObjectNotFoundError, putObject } from "../pipeline/storage/objects.ts";
import { startS3rver } from "./_s3rver.ts";
import { ROOT, runMain } from "./_cli.ts";

const DATATYPES: NiftiDatatype[] = [
  "uint8",
  "int8",
  "int16",
  "uint16",
  "int32",
  "uint32",
  "float32",
  "float64",
];
const NAME = "BraTS20_Training_001_t1.nii.gz";
const PREFIX = `Cannot read NIfTI "${NAME}": `;
const HEADER_PREFIX = `Cannot read NIfTI header of "${NAME}": `;

/** An anisotropic grid with axes permuted and flipped and a translation. */
const GRID = [
  [0, -1.2, 0, 90],
  [0.9, 0, 0, -120.5],
  [0, 0, 2.5, -60],
  [0, 0, 0, 1],
];

function assertMatrixClose(actual: number[][], expected: number[][], tol: number, what: string) {
  assertEquals(actual.length, expected.length, `${what}: rows`);
  actual.forEach((row, r) =>
    row.forEach((v, c) =>
      assertAlmostEquals(v, expected[r][c], tol, `${what}[${r}][${c}]: ${v} vs ${expected[r][c]}`)
    )
  );
}

function assertClose(actual: number, expected: number, relative: number, what: string) {
  assertAlmostEquals(actual, expected, relative * Math.max(1, Math.abs(expected)), what);
}

/** A little-endian NIfTI-1 int16 7×6×5 volume, uncompressed, with values 0..209. */
function sampleFile(): Uint8Array {
  const like = createNiftiHeader([7, 6, 5], GRID, "int16");
  return encodeNifti(Int16Array.from({ length: 210 }, (_, i) => i), "int16", like, { gzip: false });
}

/** A copy of `bytes` changed by `edit` through a little-endian DataView. */
function patched(bytes: Uint8Array, edit: (view: DataView, bytes: Uint8Array) => void): Uint8Array {
  const copy = new Uint8Array(bytes);
  edit(new DataView(copy.buffer), copy);
  return copy;
}

function gz(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(gzipSync(bytes));
}

/** Asserts `fn` throws `kind` whose message names the file and includes each fragment. */
function assertRefused(
  fn: () => unknown,
  kind: typeof SyntaxError | typeof RangeError | typeof TypeError,
  ...fragments: string[]
): Error {
  const error = assertThrows(fn, kind);
  assert(
    error.message.startsWith(PREFIX) || error.message.startsWith(HEADER_PREFIX),
    `message names the file: ${error.message}`,
  );
  for (const fragment of fragments) assertStringIncludes(error.message, fragment);
  return error;
}

// ---------------------------------------------------------------------------------------------
// Cross-checks against nibabel: it writes the fixtures and says what they hold.

/** Checks our decoding of one nibabel fixture against what nibabel read from it. */
function checkAgainstNibabel(fixture: NibabelFixture, bytes: Uint8Array, name: string) {
  const image = decodeNifti(bytes, name);
  const { header } = image;
  const what = (field: string) => `${name}: ${field}`;
  assertEquals(header.version, fixture.version, what("version"));
  assertEquals(header.littleEndian, fixture.littleEndian, what("byte order"));
  assertEquals(header.dims, fixture.dims, what("dims"));
  assertEquals(header.datatype, fixture.datatype, what("datatype"));
  header.pixdim.forEach((p, i) => assertClose(p, fixture.pixdim[i], 1e-12, what(`pixdim[${i}]`)));
  assertMatrixClose(header.affine, fixture.affine, 1e-9, what("affine"));
  assertEquals(header.qformCode, fixture.qformCode, what("qform_code"));
  assertEquals(header.sformCode, fixture.sformCode, what("sform_code"));
  assertEquals(header.xyztUnits, fixture.xyztUnits, what("xyzt_units"));
  assertEquals(Array.from(image.data, Number), fixture.raw, what("raw data"));
  const scaled = scaledData(image);
  fixture.scaled.forEach((v, i) => assertClose(scaled[i], v!, 1e-6, what(`scaled voxel ${i}`)));
  const stats = volumeStats(image);
  assertClose(stats.min, fixture.min!, 1e-12, what("min"));
  assertClose(stats.max, fixture.max!, 1e-12, what("max"));
  assertClose(stats.mean, fixture.mean!, 1e-12, what("mean"));
}

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

/** Values that fit `datatype`, varied by `seed`, including its extremes. */
function voxelsFor(datatype: NiftiDatatype, n: number, seed: number) {
  const info = {
    uint8: [0, 255],
    int8: [-128, 127],
    int16: [-32768, 32767],
    uint16: [0, 65535],
    int32: [-(2 ** 31), 2 ** 31 - 1],
    uint32: [0, 2 ** 32 - 1],
    float32: [-1e30, 1e30],
    float64: [-1e38, 1e38], // float64 voxels beyond float32's range are refused (see below)
  }[datatype];
  const values = Array.from({ length: n }, (_, i) => {
    if (i === 0) return info[0];
    if (i === 1) return info[1];
    const x = Math.sin(i * 12.9898 + seed * 78.233) * 43758.5453;
    const frac = x - Math.floor(x);
    const v = info[0] + frac * (info[1] - info[0]);
    return datatype.startsWith("float") ? (frac - 0.5) * 200 : Math.round(v);
  });
  const arrays = {
    uint8: Uint8Array,
    int8: Int8Array,
    int16: Int16Array,
    uint16: Uint16Array,
    int32: Int32Array,
    uint32: Uint32Array,
    float32: Float32Array,
    float64: Float64Array,
  };
  return arrays[datatype].from(values);
}

// ---------------------------------------------------------------------------------------------
// Our own round trip, runnable without nibabel.

Deno.test("encodeNifti() then decodeNifti() gives back every datatype's data and header", () => {
  const like = createNiftiHeader([7, 6, 5], GRID, "float32", 10);
  for (const datatype of DATATYPES) {
    for (const gzip of [true, false]) {
      const data = voxelsFor(datatype, 210, 3);
      const bytes = encodeNifti(data, datatype, like, { gzip, description: "seg" });
      assertEquals(isGzip(bytes), gzip);
      const image = decodeNifti(bytes, NAME);
      assertEquals(image.data, data, `${datatype} data`);
      const expected: NiftiHeader = {
        ...like,
        datatype,
        description: "seg",
        srow: like.srow.map((row) => row.map(Math.fround)),
        affine: like.affine.map((row) => row.map(Math.fround)),
        pixdim: like.pixdim.map(Math.fround),
      };
      assertEquals(image.header, expected, `${datatype} header`);
    }
  }
});

Deno.test("encodeNifti() keeps qform fields and qfac of a decoded template exactly", () => {
  // A qform-only file: qform_code 1, quaternion for a 180° turn about x, qfac -1.
  const source = patched(sampleFile(), (v) => {
    v.setInt16(252, 1, true);
    v.setInt16(254, 0, true);
    v.setFloat32(76, -1, true);
    [1, 0, 0].forEach((q, k) => v.setFloat32(256 + 4 * k, q, true));
    [10.5, -20.25, 30].forEach((q, k) => v.setFloat32(268 + 4 * k, q, true));
  });
  const like = decodeNiftiHeader(source, "qform.nii");
  const expected = [[0.9, 0, 0, 10.5], [0, -1.2, 0, -20.25], [0, 0, 2.5, 30], [0, 0, 0, 1]];
  assertMatrixClose(like.affine, expected.map((row) => row.map(Math.fround)), 0, "affine");
  assertEquals([like.qformCode, like.sformCode, like.qfac], [1, 0, -1]);
  const again = decodeNifti(encodeNifti(new Uint8Array(210), "uint8", like), "seg.nii.gz").header;
  assertEquals({ ...again, datatype: like.datatype }, like);
});

Deno.test("encodeNifti() writes a NIfTI-2 template as NIfTI-1", () => {
  const v1 = sampleFile();
  // Rebuild the same grid as a NIfTI-2 header by hand: 540 bytes, int64 dims, float64 fields.
  const v2 = new Uint8Array(544 + 420);
  const view = new DataView(v2.buffer);
  view.setInt32(0, 540, true);
  v2.set([0x6e, 0x2b, 0x32, 0, 0x0d, 0x0a, 0x1a, 0x0a], 4);
  view.setInt16(12, 4, true);
  view.setInt16(14, 16, true);
  [3, 7, 6, 5, 1, 1, 1, 1].forEach((d, i) => view.setBigInt64(16 + 8 * i, BigInt(d), true));
  [1, 0.9, 1.2, 2.5, 1, 1, 1, 1].forEach((p, i) => view.setFloat64(104 + 8 * i, p, true));
  view.setBigInt64(168, 544n, true);
  view.setFloat64(176, 1, true);
  view.setInt32(348, 2, true);
  GRID.slice(0, 3).flat().forEach((s, i) => view.setFloat64(400 + 8 * i, s, true));
  view.setInt32(500, 10, true);
  v2.set(v1.subarray(352), 544);
  const like = decodeNiftiHeader(v2, "v2.nii");
  assertEquals([like.version, like.dims, like.affine], [2, [7, 6, 5], GRID]);
  const zeroEol = patched(v2, (_, b) => b.fill(0, 8, 12));
  assertEquals(decodeNiftiHeader(zeroEol, NAME).dims, [7, 6, 5]); // nibabel accepts zeros too
  const textMode = patched(v2, (_, b) => b.set([0x0d, 0x0d, 0x0a, 0x1a], 8));
  assertRefused(() => decodeNiftiHeader(textMode, NAME), SyntaxError, "text-mode transfer");
  const image = decodeNifti(encodeNifti(new Uint8Array(210).fill(4), "uint8", like), "seg.nii.gz");
  assertEquals(image.header.version, 1);
  assertMatrixClose(image.header.affine, GRID, 1e-5, "affine");
  assertEquals(image.header.dims, [7, 6, 5]);

  const huge = { ...like, dims: [40000, 1, 1] };
  const error = assertThrows(
    () => encodeNifti(new Uint8Array(40000), "uint8", huge, { name: "big.nii" }),
    RangeError,
  );
  assertStringIncludes(error.message, `Cannot write NIfTI "big.nii": dim[1] must be`);
});

Deno.test("encodeNifti() refuses data that does not fit the datatype or the grid", () => {
  const like = createNiftiHeader([7, 6, 5], GRID);
  const refused = (fn: () => unknown, kind: typeof RangeError | typeof TypeError, text: string) => {
    const error = assertThrows(fn, kind);
    assertStringIncludes(error.message, `Cannot write NIfTI "seg.nii.gz": ${text}`);
  };
  const opts = { name: "seg.nii.gz" };
  refused(
    () => encodeNifti(new Uint8Array(10), "uint8", like, opts),
    RangeError,
    "data has 10 values, dims 7×6×5 hold 210",
  );
  refused(
    () => encodeNifti(new Float32Array(210).fill(256), "uint8", like, opts),
    RangeError,
    "value 256 at voxel 0 cannot be stored as uint8",
  );
  refused(
    () => encodeNifti(new Float32Array(210).fill(0.5), "int16", like, opts),
    RangeError,
    "value 0.5 at voxel 0 cannot be stored as int16",
  );
  const nan = new Float32Array(210);
  nan[7] = NaN;
  refused(() => encodeNifti(nan, "float32", like, opts), RangeError, "value NaN at voxel 7");
  refused(
    () => encodeNifti(new Float64Array(210).fill(1e39), "float32", like, opts),
    RangeError,
    "value 1e+39 at voxel 0 cannot be stored as float32",
  );
  refused(
    () => encodeNifti(new Uint8Array(210), "uint8", like, { ...opts, dims: [6, 7, 5] }),
    RangeError,
    "dims 6×7×5 change the template's grid 7×6×5",
  );
  const moved = { ...like, affine: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]] };
  refused(
    () => encodeNifti(new Uint8Array(210), "uint8", moved, opts),
    TypeError,
    "the template's affine [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]] disagrees with its own sform",
  );
});

Deno.test("encodeNifti() writes a 4D volume with dim[4] = 3 and drops a template's dim[4]", () => {
  const like = createNiftiHeader([7, 6, 5], GRID);
  const probabilities = voxelsFor("float32", 630, 2);
  const four = decodeNifti(
    encodeNifti(probabilities, "float32", like, { dims: [7, 6, 5, 3] }),
    NAME,
  );
  assertEquals(four.header.dims, [7, 6, 5, 3]);
  assertEquals(four.header.pixdim.length, 4);
  assertEquals(four.data, probabilities);
  const three = encodeNifti(new Uint8Array(210), "uint8", four.header, { dims: [7, 6, 5] });
  assertEquals(decodeNiftiHeader(three, NAME).dims, [7, 6, 5]);
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
    // disagree with the header, so they are inflated once into nothing, never into 256 MiB.
    const short = `${dir}/short.nii.gz`;
    const long = `${dir}/long.nii.gz`;
    await writeZerosGzip(short, headerOf([1024, 512, 512]), 255 * 2 ** 20);
    await writeZerosGzip(long, headerOf([1024, 512, 512]), 512 * 2 ** 20);

    const expect: [string, typeof Error, string, number][] = [
      [big, SyntaxError, "the file has 3221225472 (3221224700 more)", 16],
      [claim, SyntaxError, "but a gzip file of 105 bytes inflates to at most 108360", 16],
      [short, SyntaxError, "truncated data: dims 1024×512×512 of uint8", 128],
      [long, SyntaxError, "the gzip stream decompresses to more", 128],
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
