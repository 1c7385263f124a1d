/**
 * The NIfTI-1 and NIfTI-2 header: its binary layout, the datatypes this project reads and writes,
 * and the voxel-to-world affine chosen exactly as nibabel 5 chooses it.
 *
 * The header is parsed here rather than by nifti-reader-js 0.6.8, which reads NIfTI-2 integers
 * through signed bytes and always as little-endian (a NIfTI-2 dim of 240 comes back as -16, and
 * big-endian NIfTI-2 is misread) and which prefers the qform over the sform when the qform's code is
 * higher, unlike nibabel.
 * @module
 */

/** The voxel types this project reads and writes, named as numpy names them. */
export type NiftiDatatype =
  | "uint8"
  | "int8"
  | "int16"
  | "uint16"
  | "int32"
  | "uint32"
  | "float32"
  | "float64";

/** The typed array holding voxels of one {@linkcode NiftiDatatype}. */
export type NiftiTypedArray =
  | Uint8Array
  | Int8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array;

/** A header as nibabel sees it once loaded; see {@linkcode decodeNiftiHeader}. */
export interface NiftiHeader {
  /** 1 for NIfTI-1 (348-byte header), 2 for NIfTI-2 (540-byte header). */
  version: 1 | 2;
  /** Byte order of the file (the decoded data is always in the machine's order). */
  littleEndian: boolean;
  /** The used dimensions, dim[1..dim[0]], x first: e.g. `[240, 240, 155]`. */
  dims: number[];
  /**
   * Voxel sizes pixdim[1..dim[0]], one per entry of `dims`. As nibabel fixes them on load, a zero
   * among the first three reads as 1 and a negative one as its absolute value, so those three are
   * positive; a NaN or infinite one is refused.
   */
  pixdim: number[];
  /** The voxel type stored in the file. */
  datatype: NiftiDatatype;
  /** scl_slope as stored; 0 or non-finite means the data is not scaled. */
  sclSlope: number;
  /** scl_inter as stored. */
  sclInter: number;
  /** qform_code; a code outside 0..5 reads as 0, as nibabel fixes it. */
  qformCode: number;
  /** sform_code; a code outside 0..5 reads as 0, as nibabel fixes it. */
  sformCode: number;
  /** quatern_b, quatern_c, quatern_d. */
  quatern: [number, number, number];
  /** qoffset_x, qoffset_y, qoffset_z. */
  qoffset: [number, number, number];
  /** pixdim[0] as nibabel uses it: -1 when it is exactly -1, otherwise 1. */
  qfac: number;
  /** srow_x, srow_y, srow_z: 3 rows of 4. */
  srow: number[][];
  /** xyzt_units: spatial unit code in bits 0-2, temporal in bits 3-5. */
  xyztUnits: number;
  /**
   * Voxel (i, j, k) to world (x, y, z) as a 4×4 matrix, chosen as nibabel does: the sform when
   * sform_code is not 0, else the qform when qform_code is not 0, else nibabel's base affine
   * (diag(pixdim) with x flipped, centered on the volume). Derived from the fields above; the
   * encoder writes those fields, not this matrix.
   */
  affine: number[][];
  /** Byte offset of the voxel data in the (uncompressed) file. */
  voxOffset: number;
  /** descrip, up to 79 characters. */
  description: string;
}

/** What is known about each datatype: NIfTI code, size and value range. */
export interface DatatypeInfo {
  code: number;
  bytes: 1 | 2 | 4 | 8;
  array: {
    new (length: number): NiftiTypedArray;
    new (buffer: ArrayBuffer, byteOffset?: number, length?: number): NiftiTypedArray;
  };
  integer: boolean;
  min: number;
  max: number;
}

/** The largest finite float32. */
export const F32_MAX = 3.4028234663852886e38;

/** The datatypes this project reads and writes. */
export const DATATYPES: Readonly<Record<NiftiDatatype, DatatypeInfo>> = {
  uint8: { code: 2, bytes: 1, array: Uint8Array, integer: true, min: 0, max: 255 },
  int8: { code: 256, bytes: 1, array: Int8Array, integer: true, min: -128, max: 127 },
  int16: { code: 4, bytes: 2, array: Int16Array, integer: true, min: -32768, max: 32767 },
  uint16: { code: 512, bytes: 2, array: Uint16Array, integer: true, min: 0, max: 65535 },
  int32: { code: 8, bytes: 4, array: Int32Array, integer: true, min: -(2 ** 31), max: 2 ** 31 - 1 },
  uint32: { code: 768, bytes: 4, array: Uint32Array, integer: true, min: 0, max: 2 ** 32 - 1 },
  float32: { code: 16, bytes: 4, array: Float32Array, integer: false, min: -F32_MAX, max: F32_MAX },
  float64: {
    code: 64,
    bytes: 8,
    array: Float64Array,
    integer: false,
    min: -Number.MAX_VALUE,
    max: Number.MAX_VALUE,
  },
};

/** NIfTI datatype codes this project does not read, named for error messages. */
const OTHER_DATATYPES: Record<number, string> = {
  0: "none",
  1: "binary",
  32: "complex64",
  128: "RGB24",
  255: "all",
  1024: "int64",
  1280: "uint64",
  1536: "float128",
  1792: "complex128",
  2048: "complex256",
  2304: "RGBA32",
};

/** Byte offsets of the fields this project uses, per header version. */
const LAYOUT = {
  1: {
    size: 348,
    minVoxOffset: 352,
    magic: 344,
    datatype: 70,
    dim: 40,
    pixdim: 76,
    voxOffset: 108,
    sclSlope: 112,
    sclInter: 116,
    xyztUnits: 123,
    descrip: 148,
    qformCode: 252,
    sformCode: 254,
    quatern: 256,
    qoffset: 268,
    srow: 280,
  },
  2: {
    size: 540,
    minVoxOffset: 544,
    magic: 4,
    datatype: 12,
    dim: 16,
    pixdim: 104,
    voxOffset: 168,
    sclSlope: 176,
    sclInter: 184,
    xyztUnits: 500,
    descrip: 240,
    qformCode: 344,
    sformCode: 348,
    quatern: 352,
    qoffset: 376,
    srow: 400,
  },
} as const;

/** Bytes the header of either version may need: enough to tell them apart and read NIfTI-2. */
export const MAX_HEADER_BYTES = 544;

/** Builds the error thrown for a problem: the caller supplies the "Cannot read ..." subject. */
export type Fail = (
  kind: SyntaxErrorConstructor | RangeErrorConstructor | TypeErrorConstructor,
  problem: string,
  cause?: unknown,
) => Error;

/** A {@linkcode Fail} whose messages read `Cannot <action> "<name>": <problem>`. */
export function failFor(action: string, name?: string): Fail {
  const subject = name === undefined ? action : `${action} "${name}"`;
  return (kind, problem, cause) =>
    new kind(`Cannot ${subject}: ${problem}`, cause === undefined ? undefined : { cause });
}

/** The machine's byte order: typed arrays are in this order. */
export const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Parses the header at the start of uncompressed `bytes` (a prefix of the file is enough) and checks
 * what does not depend on the rest of the file.
 */
export function parseHeader(bytes: Uint8Array, fail: Fail): NiftiHeader {
  if (bytes.length === 0) throw fail(SyntaxError, "the file is empty");
  if (bytes.length < 4) {
    throw fail(SyntaxError, `truncated header: ${bytes.length} bytes, a NIfTI-1 header needs 348`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let le = true;
  let sizeofHdr = view.getInt32(0, true);
  if (sizeofHdr !== 348 && sizeofHdr !== 540) {
    const bigEndian = view.getInt32(0, false);
    if (bigEndian !== 348 && bigEndian !== 540) {
      throw fail(
        SyntaxError,
        `not a NIfTI file: sizeof_hdr (bytes 0-3) is ${sizeofHdr}, ` +
          `expected 348 (NIfTI-1) or 540 (NIfTI-2)`,
      );
    }
    le = false;
    sizeofHdr = bigEndian;
  }
  const version = sizeofHdr === 348 ? 1 : 2;
  const at = LAYOUT[version];
  if (bytes.length < at.size) {
    throw fail(
      SyntaxError,
      `truncated header: ${bytes.length} bytes, a NIfTI-${version} header needs ${at.size}`,
    );
  }
  checkMagic(bytes, version, fail);

  // NIfTI-1 stores integers as int16 and reals as float32; NIfTI-2 as int64 and float64.
  const int = version === 1
    ? (o: number) => view.getInt16(o, le)
    : (o: number) => int64(view, o, le, fail);
  const real = version === 1
    ? (o: number) => view.getFloat32(o, le)
    : (o: number) => view.getFloat64(o, le);
  const step = version === 1 ? 4 : 8;
  const code = version === 1
    ? (o: number) => view.getInt16(o, le)
    : (o: number) => view.getInt32(o, le);

  const ndim = int(at.dim);
  if (!(ndim >= 1 && ndim <= 7)) throw fail(RangeError, `dim[0] must be 1..7, found ${ndim}`);
  const dims: number[] = [];
  for (let i = 1; i <= ndim; i++) {
    const d = int(at.dim + i * (version === 1 ? 2 : 8));
    if (d < 1) throw fail(RangeError, `dim[${i}] must be at least 1, found ${d}`);
    dims.push(d);
  }

  const datatypeCode = view.getInt16(at.datatype, le);
  const datatype = datatypeFromCode(datatypeCode);
  if (!datatype) {
    const known = OTHER_DATATYPES[datatypeCode];
    throw fail(
      RangeError,
      `datatype ${datatypeCode}${known ? ` (${known})` : ""} is not supported; supported: ${
        Object.entries(DATATYPES).map(([n, d]) => `${n} (${d.code})`).join(", ")
      }`,
    );
  }

  const voxOffset = version === 1 ? real(at.voxOffset) : int(at.voxOffset);
  if (!Number.isSafeInteger(voxOffset) || voxOffset < at.minVoxOffset) {
    throw fail(
      SyntaxError,
      `vox_offset must be an integer of at least ${at.minVoxOffset} in a single-file ` +
        `NIfTI-${version}, found ${voxOffset}`,
    );
  }

  // nibabel's check_fix on load: zero pixdim[1..3] become 1, negative ones their magnitude.
  const allPixdim = Array.from({ length: 8 }, (_, i) => real(at.pixdim + i * step))
    .map((p, i) => (i >= 1 && i <= 3 ? (p === 0 ? 1 : Math.abs(p)) : p));
  const pixdim = allPixdim.slice(1, ndim + 1);
  // The voxel sizes of the used dimensions: after that fix the spatial ones are positive unless
  // they are NaN or infinite, which nibabel keeps but no spacing, distance or resampling survives.
  const bad = pixdim.findIndex((p) => !Number.isFinite(p));
  if (bad >= 0) {
    const axis = bad < 3 ? ` (the voxel size along ${"xyz"[bad]})` : "";
    throw fail(
      RangeError,
      `pixdim[${bad + 1}]${axis} is ${pixdim[bad]}; voxel sizes must be finite numbers`,
    );
  }
  const qfac = allPixdim[0] === -1 ? -1 : 1;

  const quatern = [0, 1, 2].map((k) => real(at.quatern + k * step)) as [number, number, number];
  const qoffset = [0, 1, 2].map((k) => real(at.qoffset + k * step)) as [number, number, number];
  const srow = [0, 1, 2].map((r) => [0, 1, 2, 3].map((c) => real(at.srow + (r * 4 + c) * step)));
  const qformCode = validXformCode(code(at.qformCode));
  const sformCode = validXformCode(code(at.sformCode));
  const sclSlope = real(at.sclSlope);
  const sclInter = real(at.sclInter);
  if (sclSlope !== 0 && Number.isFinite(sclSlope) && !Number.isFinite(sclInter)) {
    throw fail(RangeError, `scl_inter is ${sclInter} while scl_slope is ${sclSlope}`);
  }

  let affine: number[][];
  if (sformCode !== 0) {
    affine = [...srow.map((row) => [...row]), [0, 0, 0, 1]];
  } else if (qformCode !== 0) {
    const norm2 = quatern[0] ** 2 + quatern[1] ** 2 + quatern[2] ** 2;
    // nibabel's fillpositive: 1 - (b² + c² + d²) may dip below 0 by rounding of the stored type only.
    const threshold = version === 1 ? 3 * 2 ** -23 : 3 * 2 ** -52;
    if (1 - norm2 < -threshold) {
      throw fail(
        RangeError,
        `qform quaternion (quatern_b, c, d) = (${quatern.join(", ")}) has b²+c²+d² = ${norm2} > 1`,
      );
    }
    affine = qformAffine(quatern, qoffset, allPixdim.slice(1, 4), qfac);
  } else {
    affine = baseAffine(dims, pixdim);
  }
  if (!affine.every((row) => row.every(Number.isFinite))) {
    const source = sformCode !== 0 ? "sform" : qformCode !== 0 ? "qform" : "pixdim";
    throw fail(
      RangeError,
      `the affine from the ${source} has non-finite values: ${JSON.stringify(affine)}`,
    );
  }

  return {
    version,
    littleEndian: le,
    dims,
    pixdim,
    datatype,
    sclSlope,
    sclInter,
    qformCode,
    sformCode,
    quatern,
    qoffset,
    qfac,
    srow,
    xyztUnits: version === 1 ? view.getUint8(at.xyztUnits) : view.getInt32(at.xyztUnits, le),
    affine,
    voxOffset,
    description: cString(bytes.subarray(at.descrip, at.descrip + 80)),
  };
}

function checkMagic(bytes: Uint8Array, version: 1 | 2, fail: Fail): void {
  const at = LAYOUT[version].magic;
  const magic = cString(bytes.subarray(at, at + 4));
  const single = version === 1 ? "n+1" : "n+2";
  const pair = version === 1 ? "ni1" : "ni2";
  if (magic === pair) {
    throw fail(
      SyntaxError,
      `magic "${pair}" marks the header of a .hdr/.img pair, which is not supported; ` +
        `convert it to a single .nii file`,
    );
  }
  if (magic !== single || bytes[at + 3] !== 0) {
    throw fail(
      SyntaxError,
      `wrong magic at byte ${at}: expected "${single}", found ${
        JSON.stringify(String.fromCharCode(...bytes.subarray(at, at + 4)))
      }`,
    );
  }
  if (version === 2) {
    // "\r\n\x1a\n" after the magic catches files mangled by a text-mode transfer; nibabel accepts 0s.
    const eol = Array.from(bytes.subarray(8, 12));
    const ok = eol.join() === "13,10,26,10" || eol.every((b) => b === 0);
    if (!ok) {
      throw fail(
        SyntaxError,
        `the NIfTI-2 end-of-line check (bytes 8-11) is ${eol.join(" ")}, expected 13 10 26 10: ` +
          `the file was probably corrupted by a text-mode transfer`,
      );
    }
  }
}

function int64(view: DataView, offset: number, le: boolean, fail: Fail): number {
  const value = view.getBigInt64(offset, le);
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw fail(RangeError, `the int64 at byte ${offset} is ${value}, beyond 2^53`);
  }
  return Number(value);
}

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder("latin1").decode(end < 0 ? bytes : bytes.subarray(0, end));
}

/** The datatype name for a NIfTI datatype code, or undefined when unsupported. */
export function datatypeFromCode(code: number): NiftiDatatype | undefined {
  for (const [name, info] of Object.entries(DATATYPES)) {
    if (info.code === code) return name as NiftiDatatype;
  }
  return undefined;
}

/** nibabel sets qform_code and sform_code outside NIFTI_XFORM_* (0..5) to 0 on load. */
function validXformCode(code: number): number {
  return code >= 0 && code <= 5 ? code : 0;
}

/**
 * The qform affine, computed as nibabel's `get_qform`: rotation from the unit quaternion whose
 * w = sqrt(1 - b² - c² - d²) (0 when that is negative by rounding), times diag(pixdim[1..3]) with
 * qfac on z, then the offset.
 */
export function qformAffine(
  quatern: readonly number[],
  qoffset: readonly number[],
  pixdim: readonly number[],
  qfac: number,
): number[][] {
  const [x, y, z] = quatern;
  const w2 = 1 - (x * x + y * y + z * z);
  const w = w2 < 0 ? 0 : Math.sqrt(w2);
  const n = w * w + x * x + y * y + z * z;
  const r = n < Number.EPSILON
    ? [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    : quaternionMatrix(w, x, y, z, n);
  const scale = [pixdim[0], pixdim[1], pixdim[2] * qfac];
  return [
    [r[0][0] * scale[0], r[0][1] * scale[1], r[0][2] * scale[2], qoffset[0]],
    [r[1][0] * scale[0], r[1][1] * scale[1], r[1][2] * scale[2], qoffset[1]],
    [r[2][0] * scale[0], r[2][1] * scale[1], r[2][2] * scale[2], qoffset[2]],
    [0, 0, 0, 1],
  ];
}

/** nibabel's `quat2mat` (which tolerates non-unit quaternions by dividing by the norm). */
function quaternionMatrix(w: number, x: number, y: number, z: number, n: number): number[][] {
  const s = 2 / n;
  const [X, Y, Z] = [x * s, y * s, z * s];
  const [wX, wY, wZ] = [w * X, w * Y, w * Z];
  const [xX, xY, xZ] = [x * X, x * Y, x * Z];
  const [yY, yZ, zZ] = [y * Y, y * Z, z * Z];
  return [
    [1 - (yY + zZ), xY - wZ, xZ + wY],
    [xY + wZ, 1 - (xX + zZ), yZ - wX],
    [xZ - wY, yZ + wX, 1 - (xX + yY)],
  ];
}

/**
 * nibabel's base affine (`shape_zoom_affine` with x flipped) for a header with neither sform nor
 * qform: voxel sizes on the diagonal, x negated, and the volume's center at the origin.
 */
export function baseAffine(dims: readonly number[], pixdim: readonly number[]): number[][] {
  const shape = [0, 1, 2].map((i) => dims[i] ?? 1);
  const zooms = [0, 1, 2].map((i) => pixdim[i] ?? 1);
  zooms[0] = -zooms[0];
  const out = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]];
  for (let i = 0; i < 3; i++) {
    out[i][i] = zooms[i];
    out[i][3] = -((shape[i] - 1) / 2) * zooms[i];
  }
  return out;
}

/**
 * Builds a NIfTI-1 header for a new volume on the grid `affine` (voxel to world, 4×4), stored as the
 * sform (code 2, "aligned") with no qform, as a template for {@linkcode encodeNifti}.
 *
 * @param dims The used dimensions, x first.
 * @param affine Voxel to world, 4 rows of 4 (the last row is taken to be 0 0 0 1).
 * @param datatype The datatype the header announces; the encoder writes its own.
 * @param xyztUnits Units code. @default 10 (millimetres and seconds)
 */
export function createNiftiHeader(
  dims: readonly number[],
  affine: readonly (readonly number[])[],
  datatype: NiftiDatatype = "float32",
  xyztUnits = 10,
): NiftiHeader {
  if (dims.length < 1 || dims.length > 7 || !dims.every((d) => Number.isInteger(d) && d >= 1)) {
    throw new RangeError(
      `Cannot create a NIfTI header: dims must be 1 to 7 integers >= 1, got ${
        JSON.stringify(dims)
      }`,
    );
  }
  if (
    affine.length !== 4 || !affine.every((row) => row.length === 4 && row.every(Number.isFinite))
  ) {
    throw new TypeError(
      `Cannot create a NIfTI header: affine must be 4 rows of 4 finite numbers, got ${
        JSON.stringify(affine)
      }`,
    );
  }
  const srow = affine.slice(0, 3).map((row) => [...row]);
  const columnNorm = (c: number) => Math.hypot(srow[0][c], srow[1][c], srow[2][c]);
  const pixdim = dims.map((_, i) => (i < 3 ? columnNorm(i) || 1 : 1));
  return {
    version: 1,
    littleEndian: true,
    dims: [...dims],
    pixdim,
    datatype,
    sclSlope: 1,
    sclInter: 0,
    qformCode: 0,
    sformCode: 2,
    quatern: [0, 0, 0],
    qoffset: [0, 0, 0],
    qfac: 1,
    srow,
    xyztUnits,
    affine: [...srow.map((row) => [...row]), [0, 0, 0, 1]],
    voxOffset: 352,
    description: "",
  };
}

/** The affine a header's own fields give (sform, else qform, else base), without checks. */
export function affineOfFields(h: NiftiHeader): number[][] {
  if (h.sformCode !== 0) return [...h.srow.map((row) => [...row]), [0, 0, 0, 1]];
  if (h.qformCode !== 0) {
    const spatial = [0, 1, 2].map((i) => h.pixdim[i] ?? 1);
    return qformAffine(h.quatern, h.qoffset, spatial, h.qfac);
  }
  return baseAffine(h.dims, h.pixdim);
}
