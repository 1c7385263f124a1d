/**
 * Encoding a volume as a single-file NIfTI-1 (`.nii`, or `.nii.gz` gzipped) on the grid of a template
 * header, so that a segmentation lands exactly on its input's voxels.
 * @module
 */
import { gzipSync } from "node:zlib";
import {
  affineOfFields,
  DATATYPES,
  failFor,
  HOST_LITTLE_ENDIAN,
  type NiftiDatatype,
  type NiftiHeader,
  type NiftiTypedArray,
} from "./header.ts";

/** Options of {@linkcode encodeNifti}. */
export interface EncodeOptions {
  /** Gzip the file (`.nii.gz`) or not (`.nii`). @default {true} */
  gzip?: boolean;
  /**
   * The output's dims. The first three must be the template's (its grid); further ones may differ,
   * e.g. `[...like.dims.slice(0, 3), 3]` for three probability channels as dim[4].
   * @default like.dims
   */
  dims?: number[];
  /** The descrip field, cut to 79 bytes. @default like.description */
  description?: string;
  /** The file's name or URI, for error messages. */
  name?: string;
}

const NIFTI1_INT16_MAX = 32767;
const F32_MAX = 3.4028234663852886e38;

/**
 * Encodes `data` as a NIfTI-1 file of `datatype` on the grid of `like`: dims, pixdim, qform and
 * sform with their codes, quatern_b/c/d, qoffset, srow_x/y/z and xyzt_units are copied from the
 * template (a NIfTI-2 template too, when its values fit NIfTI-1's int16 and float32 fields). The
 * file is little-endian, with scl_slope 1, scl_inter 0, vox_offset 352, magic "n+1" and no
 * extensions.
 *
 * @param data The voxels, x fastest (as {@linkcode NiftiImage.data}). Values must fit `datatype`:
 *   integers within its range for integer types, finite numbers for float types.
 * @param datatype The datatype to store, e.g. "uint8" for labels, "float32" for probabilities.
 * @param like The template header, e.g. the input volume's.
 * @param options gzip, dims, description, name.
 * @returns The bytes of the file.
 * @throws {RangeError} A value that does not fit the datatype, a length that does not match the
 *   dims, dims that change the template's grid, or template values that do not fit NIfTI-1.
 * @throws {TypeError} A template whose affine disagrees with its own sform/qform fields.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { createNiftiHeader, decodeNifti, encodeNifti } from "./mod.ts";
 * const like = createNiftiHeader([3, 2, 1], [[1, 0, 0, -1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]);
 * const labels = new Uint8Array([0, 1, 2, 4, 0, 0]);
 * const bytes = encodeNifti(labels, "uint8", like, { name: "seg.nii.gz" });
 * assertEquals(decodeNifti(bytes, "seg.nii.gz").data, labels);
 * ```
 */
export function encodeNifti(
  data: NiftiTypedArray | ArrayLike<number>,
  datatype: NiftiDatatype,
  like: NiftiHeader,
  options: EncodeOptions = {},
): Uint8Array {
  const fail = failFor("write NIfTI", options.name);
  const info = DATATYPES[datatype];
  if (!info) throw fail(TypeError, `unknown datatype ${JSON.stringify(datatype)}`);
  const dims = options.dims ?? like.dims;
  checkDims(dims, like, fail);
  const voxels = dims.reduce((a, b) => a * b, 1);
  if (data.length !== voxels) {
    throw fail(
      RangeError,
      `data has ${data.length} values, dims ${dims.join("×")} hold ${voxels}`,
    );
  }
  const expected = affineOfFields(like);
  const drift = Math.max(
    ...expected.flatMap((row, r) => row.map((v, c) => Math.abs(v - like.affine[r][c]))),
  );
  const scale = Math.max(1, ...expected.flat().map(Math.abs));
  if (!(drift <= 1e-6 * scale)) {
    throw fail(
      TypeError,
      `the template's affine ${JSON.stringify(like.affine)} disagrees with its own ` +
        `${like.sformCode ? "sform" : like.qformCode ? "qform" : "pixdim"} fields, which give ` +
        `${JSON.stringify(expected)}; set srow (and sformCode) rather than affine alone`,
    );
  }

  const out = new Uint8Array(352 + voxels * info.bytes);
  const view = new DataView(out.buffer);
  const f32 = (offset: number, value: number, field: string) => {
    if (!Number.isFinite(value) || Math.abs(value) > F32_MAX) {
      throw fail(RangeError, `${field} ${value} does not fit NIfTI-1's float32`);
    }
    view.setFloat32(offset, value, true);
  };
  const i16 = (offset: number, value: number, field: string) => {
    if (!Number.isInteger(value) || value < -32768 || value > NIFTI1_INT16_MAX) {
      throw fail(RangeError, `${field} ${value} does not fit NIfTI-1's int16`);
    }
    view.setInt16(offset, value, true);
  };

  view.setInt32(0, 348, true); // sizeof_hdr
  out[38] = 0x72; // regular = "r", as niftilib and nibabel write
  i16(40, dims.length, "dim[0]");
  for (let i = 1; i <= 7; i++) i16(40 + 2 * i, dims[i - 1] ?? 1, `dim[${i}]`);
  i16(70, info.code, "datatype");
  i16(72, info.bytes * 8, "bitpix");
  f32(76, like.qfac === -1 ? -1 : 1, "pixdim[0] (qfac)");
  for (let i = 1; i <= 7; i++) {
    f32(76 + 4 * i, outputPixdim(i - 1, dims, like), `pixdim[${i}]`);
  }
  f32(108, 352, "vox_offset");
  f32(112, 1, "scl_slope");
  f32(116, 0, "scl_inter");
  if (!(like.xyztUnits >= 0 && like.xyztUnits <= 255)) {
    throw fail(RangeError, `xyzt_units ${like.xyztUnits} does not fit NIfTI-1's byte`);
  }
  out[123] = like.xyztUnits;
  out.set(descrip(options.description ?? like.description), 148);
  i16(252, like.qformCode, "qform_code");
  i16(254, like.sformCode, "sform_code");
  like.quatern.forEach((v, k) => f32(256 + 4 * k, v, `quatern_${"bcd"[k]}`));
  like.qoffset.forEach((v, k) => f32(268 + 4 * k, v, `qoffset_${"xyz"[k]}`));
  like.srow.forEach((row, r) =>
    row.forEach((v, c) => f32(280 + 16 * r + 4 * c, v, `srow_${"xyz"[r]}[${c}]`))
  );
  out.set([0x6e, 0x2b, 0x31, 0], 344); // magic "n+1\0"; bytes 348-351 stay 0: no extensions

  writeVoxels(out.subarray(352), data, datatype, fail);
  return options.gzip === false ? out : new Uint8Array(gzipSync(out));
}

function checkDims(dims: readonly number[], like: NiftiHeader, fail: ReturnType<typeof failFor>) {
  if (dims.length < 1 || dims.length > 7) {
    throw fail(RangeError, `dims must have 1 to 7 entries, got ${JSON.stringify(dims)}`);
  }
  dims.forEach((d, i) => {
    if (!Number.isInteger(d) || d < 1 || d > NIFTI1_INT16_MAX) {
      throw fail(RangeError, `dim[${i + 1}] must be an integer in 1..32767 for NIfTI-1, got ${d}`);
    }
  });
  const spatial = (d: readonly number[]) => [0, 1, 2].map((i) => d[i] ?? 1).join("×");
  if (spatial(dims) !== spatial(like.dims)) {
    throw fail(
      RangeError,
      `dims ${dims.join("×")} change the template's grid ${like.dims.join("×")}; ` +
        `only dims after the third may differ`,
    );
  }
}

/** The template's voxel size for spatial dims; for the others its own only where the size is kept. */
function outputPixdim(i: number, dims: readonly number[], like: NiftiHeader): number {
  if (i >= dims.length) return 1;
  if (i < 3 || like.dims[i] === dims[i]) return like.pixdim[i] ?? 1;
  return 1;
}

function descrip(text: string): Uint8Array {
  const out = new Uint8Array(80);
  let n = 0;
  for (const ch of text) {
    const bytes = new TextEncoder().encode(ch);
    if (n + bytes.length > 79) break;
    out.set(bytes, n);
    n += bytes.length;
  }
  return out;
}

function writeVoxels(
  out: Uint8Array,
  data: NiftiTypedArray | ArrayLike<number>,
  datatype: NiftiDatatype,
  fail: ReturnType<typeof failFor>,
): void {
  const info = DATATYPES[datatype];
  const target = new info.array(out.buffer as ArrayBuffer, out.byteOffset, data.length);
  if (!(data instanceof info.array)) {
    for (let i = 0; i < data.length; i++) {
      const v = data[i];
      const fits = info.integer
        ? Number.isInteger(v) && v >= info.min && v <= info.max
        : Number.isFinite(v) && v >= info.min && v <= info.max;
      if (!fits) {
        throw fail(
          RangeError,
          `value ${v} at voxel ${i} cannot be stored as ${datatype}` +
            (info.integer ? ` (integers ${info.min}..${info.max})` : " (finite values only)"),
        );
      }
      target[i] = v;
    }
  } else {
    if (!info.integer) {
      const bad = (data as NiftiTypedArray).findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) {
        throw fail(
          RangeError,
          `value ${data[bad]} at voxel ${bad} cannot be stored (finite values only)`,
        );
      }
    }
    target.set(data as NiftiTypedArray);
  }
  if (!HOST_LITTLE_ENDIAN && info.bytes > 1) {
    for (let i = 0; i < out.length; i += info.bytes) out.subarray(i, i + info.bytes).reverse();
  }
}
