/**
 * pipeline/nifti/write.ts: encodeNifti() round trips through decodeNifti() for every datatype,
 * qform fields, NIfTI-2 templates, 4-D volumes, and what it refuses.
 * @module
 */
import { assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import {
  createNiftiHeader,
  decodeNifti,
  decodeNiftiHeader,
  encodeNifti,
  isGzip,
  type NiftiHeader,
} from "../../pipeline/nifti/mod.ts";
import {
  assertMatrixClose,
  assertRefused,
  DATATYPES,
  GRID,
  NAME,
  patched,
  sampleFile,
  voxelsFor,
} from "./_fixtures.ts";

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
