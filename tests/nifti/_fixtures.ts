/**
 * Fixtures of the NIfTI tests: datatypes, a sample file, patched and gzipped bytes, nibabel checks,
 * voxel values per datatype.
 * @module
 */
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { gzipSync } from "node:zlib";
import {
  createNiftiHeader,
  decodeNifti,
  encodeNifti,
  type NiftiDatatype,
  scaledData,
  volumeStats,
} from "../../pipeline/nifti/mod.ts";
import { type NibabelFixture } from "../_nifti_fixtures.ts";

export const DATATYPES: NiftiDatatype[] = [
  "uint8",
  "int8",
  "int16",
  "uint16",
  "int32",
  "uint32",
  "float32",
  "float64",
];
export const NAME = "BraTS20_Training_001_t1.nii.gz";
export const PREFIX = `Cannot read NIfTI "${NAME}": `;
export const HEADER_PREFIX = `Cannot read NIfTI header of "${NAME}": `;

/** An anisotropic grid with axes permuted and flipped and a translation. */
export const GRID = [
  [0, -1.2, 0, 90],
  [0.9, 0, 0, -120.5],
  [0, 0, 2.5, -60],
  [0, 0, 0, 1],
];

export function assertMatrixClose(
  actual: number[][],
  expected: number[][],
  tol: number,
  what: string,
) {
  assertEquals(actual.length, expected.length, `${what}: rows`);
  actual.forEach((row, r) =>
    row.forEach((v, c) =>
      assertAlmostEquals(v, expected[r][c], tol, `${what}[${r}][${c}]: ${v} vs ${expected[r][c]}`)
    )
  );
}

export function assertClose(actual: number, expected: number, relative: number, what: string) {
  assertAlmostEquals(actual, expected, relative * Math.max(1, Math.abs(expected)), what);
}

/** A little-endian NIfTI-1 int16 7×6×5 volume, uncompressed, with values 0..209. */
export function sampleFile(): Uint8Array {
  const like = createNiftiHeader([7, 6, 5], GRID, "int16");
  return encodeNifti(Int16Array.from({ length: 210 }, (_, i) => i), "int16", like, { gzip: false });
}

/** A copy of `bytes` changed by `edit` through a little-endian DataView. */
export function patched(
  bytes: Uint8Array,
  edit: (view: DataView, bytes: Uint8Array) => void,
): Uint8Array {
  const copy = new Uint8Array(bytes);
  edit(new DataView(copy.buffer), copy);
  return copy;
}

export function gz(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(gzipSync(bytes));
}

/** Asserts `fn` throws `kind` whose message names the file and includes each fragment. */
export function assertRefused(
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
export function checkAgainstNibabel(fixture: NibabelFixture, bytes: Uint8Array, name: string) {
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

/** Values that fit `datatype`, varied by `seed`, including its extremes. */
export function voxelsFor(datatype: NiftiDatatype, n: number, seed: number) {
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
