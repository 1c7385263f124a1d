/**
 * Decoding NIfTI bytes: the header alone from a prefix of a file, or the whole volume, with the
 * checks that keep a broken or hostile file from reaching the pipeline.
 * @module
 */
import { constants, gunzipSync } from "node:zlib";
import {
  DATATYPES,
  F32_MAX,
  type Fail,
  failFor,
  HOST_LITTLE_ENDIAN,
  MAX_HEADER_BYTES,
  type NiftiDatatype,
  type NiftiHeader,
  type NiftiTypedArray,
  parseHeader,
} from "./header.ts";

/** A decoded volume: its header and its voxels. */
export interface NiftiImage {
  header: NiftiHeader;
  /**
   * The voxels as stored (before scl_slope/scl_inter), in the machine's byte order, x fastest then
   * y, z and any further dimensions: voxel (i, j, k) is at i + dims[0] * (j + dims[1] * k).
   */
  data: NiftiTypedArray;
}

/** Options of {@linkcode decodeNifti}. */
export interface DecodeOptions {
  /**
   * What to do with NaN or ±Infinity in float data: throw a RangeError giving their count and the
   * first voxel, or read them as 0.
   * @default {"error"}
   */
  nonFinite?: "error" | "zero";
  /**
   * The most bytes of voxel data a header may make us allocate; a header asking for more is refused
   * before anything is decompressed.
   * @default {2147483648} (2 GiB)
   */
  maxBytes?: number;
}

/** Value statistics of a volume after scaling, over all voxels, computed in float64. */
export interface VolumeStats {
  min: number;
  max: number;
  mean: number;
}

/** What `inspect` prints for a volume. */
export interface NiftiInspection {
  dims: number[];
  pixdim: number[];
  datatype: NiftiDatatype;
  affine: number[][];
  min: number;
  max: number;
  mean: number;
}

/** True when `bytes` starts with the gzip magic bytes 1f 8b (whatever the file's name says). */
export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

/**
 * Decodes the header of a `.nii` or `.nii.gz` file (NIfTI-1 or NIfTI-2, either byte order) from its
 * first bytes: a prefix of the file is enough — 348 bytes for NIfTI-1 and 540 for NIfTI-2 once
 * decompressed; of a gzip stream, only as much is inflated as the header needs.
 *
 * @param bytes The file or a prefix of it.
 * @param name The file's name or URI, for error messages.
 * @returns The header, with the affine chosen as nibabel chooses it.
 * @throws {SyntaxError} Not NIfTI, wrong magic, a truncated header or gzip stream, corrupted gzip.
 * @throws {RangeError} dim[0] outside 1..7, a dim below 1, an unsupported datatype, a bad qform.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { createNiftiHeader, decodeNiftiHeader, encodeNifti } from "./mod.ts";
 * const like = createNiftiHeader([4, 4, 2], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]);
 * const file = encodeNifti(new Uint8Array(32), "uint8", like);
 * const header = decodeNiftiHeader(file.subarray(0, 200), "seg.nii.gz");
 * assertEquals(header.dims, [4, 4, 2]);
 * assertEquals(header.affine[2], [0, 0, 2, 0]);
 * ```
 */
export function decodeNiftiHeader(bytes: Uint8Array, name: string): NiftiHeader {
  return readHeader(bytes, failFor("read NIfTI header of", name));
}

/**
 * Decodes a whole `.nii` or `.nii.gz` file: NIfTI-1 or NIfTI-2, either byte order, datatypes
 * uint8, int8, int16, uint16, int32, uint32, float32 and float64, any number of dimensions.
 *
 * @param bytes The whole file.
 * @param name The file's name or URI, for error messages.
 * @param options Handling of non-finite values and the size limit.
 * @returns The header and the raw voxels in the machine's byte order.
 * @throws {SyntaxError} A malformed file: see {@linkcode decodeNiftiHeader}, plus truncated data or
 *   more data than the header describes.
 * @throws {RangeError} Absurd values: see {@linkcode decodeNiftiHeader}, plus data over `maxBytes`,
 *   NaN or infinite voxels (unless `nonFinite: "zero"`), and voxels that scl_slope/scl_inter scale
 *   beyond float32's range (or float64 voxels beyond it), which {@linkcode scaledData} would turn
 *   into ±Infinity.
 */
export function decodeNifti(
  bytes: Uint8Array,
  name: string,
  options: DecodeOptions = {},
): NiftiImage {
  const fail = failFor("read NIfTI", name);
  const header = readHeader(bytes, fail);
  const layout = dataLayout(header, options.maxBytes, fail);
  const { end } = layout;

  const gz = isGzip(bytes);
  let file = bytes;
  if (gz) {
    try {
      // One byte over the expected size is enough to know the stream holds more than the header says.
      file = gunzipSync(bytes, { maxOutputLength: end + 1 });
    } catch (e) {
      if ((e as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") {
        throw sizeMismatch(layout, "the gzip stream decompresses to", undefined, fail, e);
      }
      throw gzipError(e, fail);
    }
  }
  if (file.length !== end) {
    throw sizeMismatch(
      layout,
      gz ? "the decompressed file has" : "the file has",
      file.length,
      fail,
    );
  }
  // The inflated buffer is ours alone: view it rather than hold two copies of a large volume. The
  // caller's bytes are copied, as byte swapping and zeroing write to them.
  return imageFrom(
    header,
    layout,
    file.subarray(header.voxOffset),
    gz,
    options.nonFinite ?? "error",
    fail,
  );
}

/** Where a header puts the voxel data, once its size is checked against the limit. */
export interface DataLayout {
  /** Voxels in all dimensions. */
  voxels: number;
  /** Bytes of voxel data. */
  dataBytes: number;
  /** Byte just after the data in the uncompressed file: vox_offset + dataBytes. */
  end: number;
  /** "dims 7×6×5 of int16", for messages. */
  grid: string;
}

/** The default of {@linkcode DecodeOptions.maxBytes}: 2 GiB of voxel data. */
export const DEFAULT_MAX_BYTES = 2 ** 31;

/**
 * The most bytes a header may put between itself and the data (NIfTI extensions): they are read,
 * or inflated, to reach the data. Real extensions (DICOM headers, AFNI XML) take kilobytes.
 */
export const MAX_EXTENSION_BYTES = 64 * 2 ** 20;

/**
 * The size of the data `header` announces.
 * @throws {RangeError} when it is over `maxBytes`, before anything is allocated or inflated
 */
export function dataLayout(
  header: NiftiHeader,
  maxBytes: number = DEFAULT_MAX_BYTES,
  fail: Fail,
): DataLayout {
  const voxels = header.dims.reduce((a, b) => a * b, 1);
  const dataBytes = voxels * DATATYPES[header.datatype].bytes;
  const grid = `dims ${header.dims.join("×")} of ${header.datatype}`;
  if (dataBytes > maxBytes) {
    throw fail(
      RangeError,
      `${grid} would need ${dataBytes} bytes of data, more than the limit of ${maxBytes} (maxBytes)`,
    );
  }
  const extensions = header.voxOffset - (header.version === 1 ? 348 : 540);
  if (extensions > MAX_EXTENSION_BYTES) {
    throw fail(
      RangeError,
      `vox_offset ${header.voxOffset} leaves ${extensions} bytes between the header and the ` +
        `data, more than the limit of ${MAX_EXTENSION_BYTES} for NIfTI extensions`,
    );
  }
  return { voxels, dataBytes, end: header.voxOffset + dataBytes, grid };
}

/**
 * The error for a file (or decompressed stream) whose length is not the header's `end`.
 * @param what "the file has", "the decompressed file has", "the gzip stream decompresses to"
 * @param length its length; undefined when only "more than `end`" is known
 */
export function sizeMismatch(
  layout: DataLayout,
  what: string,
  length: number | undefined,
  fail: Fail,
  cause?: unknown,
): Error {
  const { grid, dataBytes, end } = layout;
  const offset = end - dataBytes;
  if (length !== undefined && length < end) {
    return fail(
      SyntaxError,
      `truncated data: ${grid} need ${dataBytes} bytes from vox_offset ${offset}, ` +
        `${end} in all; ${what} ${length}`,
      cause,
    );
  }
  return fail(
    SyntaxError,
    `data size disagrees with the header: ${grid} from vox_offset ${offset} end at byte ${end}, ` +
      `but ${what} ${length === undefined ? "more" : `${length} (${length - end} more)`}`,
    cause,
  );
}

/**
 * The image whose voxel data `bytes` holds (from vox_offset on, at least `layout.dataBytes`): its
 * voxels in the machine's byte order, checked for non-finite values and for a scaled range beyond
 * float32.
 * @param owned whether `bytes` may be viewed and changed in place rather than copied
 */
export function imageFrom(
  header: NiftiHeader,
  layout: DataLayout,
  bytes: Uint8Array,
  owned: boolean,
  nonFinite: "error" | "zero",
  fail: Fail,
): NiftiImage {
  const info = DATATYPES[header.datatype];
  let data: NiftiTypedArray;
  if (owned && bytes.byteOffset % info.bytes === 0) {
    data = new info.array(bytes.buffer as ArrayBuffer, bytes.byteOffset, layout.voxels);
  } else {
    data = new info.array(layout.voxels);
    new Uint8Array(data.buffer).set(bytes.subarray(0, layout.dataBytes));
  }
  if (header.littleEndian !== HOST_LITTLE_ENDIAN) swapBytes(data, info.bytes);
  if (!info.integer) checkFinite(data, header.dims, nonFinite, fail);
  checkScaledRange(data, header, fail);
  return { header, data };
}

/**
 * The voxels after scaling, `raw * scl_slope + scl_inter` (computed in float64), as a new
 * Float32Array; a slope of 0 or a non-finite one means no scaling, as in nibabel.
 */
export function scaledData(image: NiftiImage): Float32Array {
  const { data, header } = image;
  const out = new Float32Array(data.length);
  const slope = header.sclSlope;
  const inter = header.sclInter;
  if (!isScaled(slope)) {
    out.set(data);
  } else {
    for (let i = 0; i < data.length; i++) out[i] = data[i] * slope + inter;
  }
  return out;
}

/** Minimum, maximum and mean of the scaled voxels, over all voxels, in float64. */
export function volumeStats(image: NiftiImage): VolumeStats {
  const { data, header } = image;
  const scaled = isScaled(header.sclSlope);
  const slope = scaled ? header.sclSlope : 1;
  const inter = scaled ? header.sclInter : 0;
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i] * slope + inter;
    if (v < min) min = v;
    if (v > max) max = v;
    sum += v;
  }
  return { min, max, mean: sum / data.length };
}

/**
 * Decodes a file and summarizes it as the `inspect` command prints it: used dims and pixdim, stored
 * datatype, affine, and min, max and mean after scaling.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { createNiftiHeader, encodeNifti, inspectNifti } from "./mod.ts";
 * const like = createNiftiHeader([2, 2, 1], [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]);
 * const file = encodeNifti(new Int16Array([0, 1, 2, 5]), "int16", like);
 * const summary = inspectNifti(file, "t1.nii.gz");
 * assertEquals(summary.pixdim, [2, 2, 2]);
 * assertEquals([summary.min, summary.max, summary.mean], [0, 5, 2]);
 * ```
 */
export function inspectNifti(
  bytes: Uint8Array,
  name: string,
  options: DecodeOptions = {},
): NiftiInspection {
  return describeNifti(decodeNifti(bytes, name, options));
}

/** The summary `inspect` prints of a decoded image; see {@linkcode inspectNifti}. */
export function describeNifti(image: NiftiImage): NiftiInspection {
  const { dims, pixdim, datatype, affine } = image.header;
  return { dims, pixdim, datatype, affine, ...volumeStats(image) };
}

function isScaled(slope: number): boolean {
  return slope !== 0 && Number.isFinite(slope);
}

/**
 * Refuses data whose scaled values ({@linkcode scaledData}: `raw * scl_slope + scl_inter`) do not
 * fit in float32, the type the pipeline computes in: `scl_slope = 3e38` on int16 data, or float64
 * voxels beyond ±3.4e38, would become ±Infinity and then NaN. The scaling is monotonic, so the
 * extremes of the raw data give the extremes of the scaled data.
 */
function checkScaledRange(data: NiftiTypedArray, header: NiftiHeader, fail: Fail): void {
  const scaled = isScaled(header.sclSlope) && (header.sclSlope !== 1 || header.sclInter !== 0);
  if (!scaled && header.datatype !== "float64") return; // every other type fits float32 as is
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const slope = scaled ? header.sclSlope : 1;
  const inter = scaled ? header.sclInter : 0;
  const ends = [min * slope + inter, max * slope + inter];
  if (ends.every((v) => Number.isFinite(Math.fround(v)))) return;
  const [lo, hi] = ends[0] <= ends[1] ? ends : [ends[1], ends[0]];
  const range = `beyond float32's range (±${F32_MAX}), in which the pipeline computes`;
  throw fail(
    RangeError,
    scaled
      ? `scl_slope ${header.sclSlope} and scl_inter ${header.sclInter} scale the ${header.datatype} ` +
        `data (raw ${min} to ${max}) to ${lo} to ${hi}, ${range}`
      : `the float64 data spans ${lo} to ${hi}, ${range}`,
  );
}

function readHeader(bytes: Uint8Array, fail: Fail): NiftiHeader {
  if (!isGzip(bytes)) return parseHeader(bytes, fail);
  const head = inflatePrefix(bytes, MAX_HEADER_BYTES, fail);
  const need = headerBytesNeeded(head);
  if (head.length < need) {
    // All the input was inflated and the header is still short: a cut stream or a tiny file.
    let complete = true;
    try {
      gunzipSync(bytes);
    } catch {
      complete = false;
    }
    if (!complete) {
      throw fail(
        SyntaxError,
        `truncated gzip stream: its ${bytes.length} bytes decompress to ${head.length}, ` +
          `and the header needs ${need}`,
      );
    }
    throw shortGzipHeader(head.length, need, fail);
  }
  return parseHeader(head, fail);
}

/** 348 or 540, from sizeof_hdr in either byte order (348 when it cannot be told yet). */
function headerBytesNeeded(head: Uint8Array): number {
  if (head.length < 4) return 348;
  const view = new DataView(head.buffer, head.byteOffset, 4);
  return view.getInt32(0, true) === 540 || view.getInt32(0, false) === 540 ? 540 : 348;
}

/**
 * Inflates growing prefixes of a gzip stream until `want` bytes come out or the input runs out.
 * Z_SYNC_FLUSH returns what a cut stream holds instead of failing on its missing end.
 */
function inflatePrefix(bytes: Uint8Array, want: number, fail: Fail): Uint8Array {
  let take = Math.min(bytes.length, 1024);
  for (;;) {
    let out: Uint8Array;
    try {
      out = gunzipSync(bytes.subarray(0, take), { finishFlush: constants.Z_SYNC_FLUSH });
    } catch (e) {
      throw gzipError(e, fail);
    }
    if (out.length >= want || take === bytes.length) return out;
    take = Math.min(bytes.length, take * 8);
  }
}

/**
 * The error for a gzip stream that ends before the NIfTI header it starts (`got` of the `need`
 * bytes): empty, or a truncated header.
 */
export function shortGzipHeader(got: number, need: number, fail: Fail): Error {
  return fail(
    SyntaxError,
    got === 0
      ? "the gzip stream is empty (it decompresses to 0 bytes)"
      : `truncated header: the gzip stream decompresses to ${got} bytes, ` +
        `a NIfTI-${need === 348 ? 1 : 2} header needs ${need}`,
  );
}

/** A zlib error as the file's SyntaxError: a truncated or a corrupted gzip stream. */
export function gzipError(e: unknown, fail: Fail): Error {
  const code = (e as { code?: string }).code;
  const message = (e as Error).message;
  if (code === "Z_BUF_ERROR") return fail(SyntaxError, `truncated gzip stream (${message})`, e);
  return fail(SyntaxError, `corrupted gzip stream (${message})`, e);
}

function swapBytes(data: NiftiTypedArray, size: number): void {
  const b = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  for (let i = 0; i < b.length; i += size) {
    for (let lo = i, hi = i + size - 1; lo < hi; lo++, hi--) {
      const t = b[lo];
      b[lo] = b[hi];
      b[hi] = t;
    }
  }
}

function checkFinite(
  data: NiftiTypedArray,
  dims: number[],
  mode: "error" | "zero",
  fail: Fail,
): void {
  let count = 0;
  let first = -1;
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) {
      if (first < 0) first = i;
      count++;
      if (mode === "zero") data[i] = 0;
    }
  }
  if (count > 0 && mode === "error") {
    const index: number[] = [];
    let rest = first;
    for (const d of dims) {
      index.push(rest % d);
      rest = Math.floor(rest / d);
    }
    throw fail(
      RangeError,
      `the image data holds ${count} non-finite value${
        count === 1 ? "" : "s"
      } (NaN or ±Infinity); ` +
        `the first is voxel ${first}, at [${index.join(", ")}] (${data[first]})`,
    );
  }
}
