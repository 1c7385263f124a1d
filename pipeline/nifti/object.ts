/**
 * Reading a NIfTI object from storage header first: the header is decoded from the object's first
 * bytes (for `.nii.gz`, the first bytes the gzip stream inflates to), the data size it declares is
 * checked against the limit and against the object's size, and only then is the data read — never
 * more of it than the header declares, so a broken or hostile file is refused for the cost of its
 * header.
 *
 * What is refused before the data is read: a folder, device, FIFO or socket (the storage layer
 * refuses them by kind); a header asking for more than `maxBytes` of voxel data; an uncompressed
 * file whose size is not vox_offset + data size; a gzip file too small to inflate to the declared
 * size (deflate compresses at most 1032:1) or larger than any gzip stream of that size needs. A gzip
 * stream whose trailer (ISIZE, the inflated size modulo 2^32) disagrees with the header is inflated
 * once without keeping anything, and refused if it does not inflate to exactly the declared size;
 * only then is a buffer of that size filled.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { createNiftiHeader, encodeNifti } from "./mod.ts";
 * import { readNifti } from "./object.ts";
 * const dir = await Deno.makeTempDir();
 * const like = createNiftiHeader([4, 3, 2], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]);
 * const t1 = Int16Array.from({ length: 24 }, (_, i) => i);
 * await Deno.writeFile(`${dir}/t1.nii.gz`, encodeNifti(t1, "int16", like, { name: "t1.nii.gz" }));
 * const image = await readNifti(`${dir}/t1.nii.gz`); // or an s3:// URI
 * assertEquals(image.header.dims, [4, 3, 2]);
 * assertEquals(image.data, t1);
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { createGunzip } from "node:zlib";
import { type Fail, failFor, MAX_HEADER_BYTES, type NiftiHeader, parseHeader } from "./header.ts";
import {
  dataLayout,
  type DecodeOptions,
  gzipError,
  imageFrom,
  isGzip,
  type NiftiImage,
  shortGzipHeader,
  sizeMismatch,
} from "./read.ts";
import { getObjectRange, headObject } from "../storage/mod.ts";

/** The first read: the header behind any ordinary gzip header, and all of a small file. */
const PREFIX_BYTES = 64 * 1024;
/** Compressed bytes read per request after the first. */
const CHUNK_BYTES = 8 * 1024 * 1024;
/**
 * The most compressed input inflated to find a gzip stream's NIfTI header: gzip's optional name,
 * comment and extra fields come before the data, and no real file has 1 MiB of them.
 */
const MAX_HEADER_INPUT = 1024 * 1024;
/**
 * zlib's output piece: larger than its 16 KiB default, as each piece is a new buffer, and the
 * garbage collector frees many small ones late (inflating 1 GiB held ~150 MB of them at 16 KiB).
 */
const INFLATE_CHUNK_BYTES = 256 * 1024;
/** deflate's largest compression ratio: a 258-byte match in 2 bits. */
const DEFLATE_MAX_RATIO = 1032;

/**
 * The largest gzip file that a stream inflating to `end` bytes plausibly needs: incompressible data
 * stored raw costs 5 bytes per block of at least 4 KiB, plus the gzip header's optional fields.
 */
function maxGzipSize(end: number): number {
  return end + Math.ceil(end / 64) + 1024 * 1024;
}

/** The object being read: its URI, size and first bytes. */
interface Source {
  uri: string;
  size: number;
  prefix: Uint8Array;
}

/**
 * Reads a whole `.nii` or `.nii.gz` object (local path, `file://` URL or `s3://` URI) header first;
 * see the module documentation for what is refused before the data is read. Decodes as
 * {@linkcode decodeNifti} does and returns the same image.
 *
 * @param uri The object, named in every error.
 * @param options Handling of non-finite values and the size limit (`maxBytes`, 2 GiB by default).
 * @throws {ObjectNotFoundError} when the object does not exist or is a folder
 * @throws {TypeError} when it is a device, FIFO or socket
 * @throws {SyntaxError|RangeError} as {@linkcode decodeNifti}, naming the object
 */
export async function readNifti(uri: string, options: DecodeOptions = {}): Promise<NiftiImage> {
  const fail = failFor("read NIfTI", uri);
  const { size } = await headObject(uri);
  if (size === 0) throw fail(SyntaxError, "the file is empty");
  const src: Source = {
    uri,
    size,
    prefix: await getObjectRange(uri, 0, Math.min(size, PREFIX_BYTES)),
  };
  const gz = isGzip(src.prefix);
  const header = gz ? await gzipHeader(src, fail) : parseHeader(src.prefix, fail);
  const layout = dataLayout(header, options.maxBytes, fail);
  const { end } = layout;
  const nonFinite = options.nonFinite ?? "error";

  if (!gz) {
    if (size !== end) throw sizeMismatch(layout, "the file has", size, fail);
    const { voxOffset } = header;
    const data = size <= src.prefix.length
      ? src.prefix.slice(voxOffset, end)
      : await getObjectRange(uri, voxOffset, end);
    // Shorter only if the object changed since it was looked up.
    if (data.length !== layout.dataBytes) {
      throw sizeMismatch(layout, "the file has", voxOffset + data.length, fail);
    }
    return imageFrom(header, layout, data, true, nonFinite, fail);
  }

  if (size * DEFLATE_MAX_RATIO < end) {
    throw fail(
      SyntaxError,
      `truncated data: ${layout.grid} end at byte ${end}, but a gzip file of ${size} bytes ` +
        `inflates to at most ${size * DEFLATE_MAX_RATIO} (deflate compresses at most ` +
        `${DEFLATE_MAX_RATIO}:1)`,
    );
  }
  if (size > maxGzipSize(end)) {
    throw fail(
      SyntaxError,
      `data size disagrees with the header: ${layout.grid} end at byte ${end}, but the gzip file ` +
        `is ${size} bytes, more than any gzip stream of ${end} bytes needs (${maxGzipSize(end)})`,
    );
  }
  const tail = size <= src.prefix.length
    ? src.prefix.subarray(size - 4)
    : await getObjectRange(uri, size - 4, size);
  const isize = tail.length === 4
    ? new DataView(tail.buffer, tail.byteOffset, 4).getUint32(0, true)
    : -1;
  if (isize !== end % 2 ** 32) {
    // Not the declared size, or a stream of several gzip members (whose trailer holds only the
    // last one's size): inflate it once keeping nothing, so that a lie costs no memory.
    const counted = await inflate(src, end + 1, Infinity);
    if (counted.error !== undefined && counted.out <= end) throw gzipError(counted.error, fail);
    if (counted.out !== end) {
      throw sizeMismatch(
        layout,
        "the gzip stream decompresses to",
        counted.out > end ? undefined : counted.out,
        fail,
      );
    }
  }
  // The data alone are kept: the header and any extensions before vox_offset are passed over.
  const data = new Uint8Array(layout.dataBytes);
  const { voxOffset } = header;
  const filled = await inflate(src, end + 1, Infinity, (chunk, at) => {
    const from = Math.max(0, voxOffset - at);
    const to = Math.min(chunk.length, end - at);
    if (from < to) data.set(chunk.subarray(from, to), at + from - voxOffset);
  });
  if (filled.error !== undefined && filled.out <= end) throw gzipError(filled.error, fail);
  if (filled.out !== end) {
    throw sizeMismatch(
      layout,
      "the gzip stream decompresses to",
      filled.out > end ? undefined : filled.out,
      fail,
    );
  }
  return imageFrom(header, layout, data, true, nonFinite, fail);
}

/** The NIfTI header at the start of a gzip object, inflating no more than it needs. */
async function gzipHeader(src: Source, fail: Fail): Promise<NiftiHeader> {
  const head = new Uint8Array(MAX_HEADER_BYTES);
  const r = await inflate(src, MAX_HEADER_BYTES, MAX_HEADER_INPUT, (chunk, at) => {
    head.set(chunk.subarray(0, MAX_HEADER_BYTES - at), at);
  });
  const got = head.subarray(0, r.out);
  const need = got.length >= 4 &&
      (new DataView(got.buffer, 0, 4).getInt32(0, true) === 540 ||
        new DataView(got.buffer, 0, 4).getInt32(0, false) === 540)
    ? 540
    : 348;
  if (got.length >= need) return parseHeader(got, fail);
  if (r.error !== undefined) {
    if ((r.error as { code?: string }).code === "Z_BUF_ERROR") {
      throw fail(
        SyntaxError,
        `truncated gzip stream: its ${src.size} bytes decompress to ${got.length}, ` +
          `and the header needs ${need}`,
        r.error,
      );
    }
    throw gzipError(r.error, fail);
  }
  if (!r.complete) {
    throw fail(
      SyntaxError,
      `no NIfTI header in the first ${MAX_HEADER_INPUT} bytes of the gzip stream: they ` +
        `decompress to ${got.length} bytes, the header needs ${need}`,
    );
  }
  throw shortGzipHeader(got.length, need, fail);
}

/** How an {@linkcode inflate} ended. */
interface Inflated {
  /** Bytes that came out, at most the limit. */
  out: number;
  /** Whether the stream ended (all the input inflated, the gzip trailers checked). */
  complete: boolean;
  /** The zlib error that stopped it, if any. */
  error?: unknown;
}

/**
 * Inflates the gzip object from its start, reading it in pieces, and hands each piece of output to
 * `sink` with its offset, until the stream ends, `limit` bytes have come out, or `maxInput`
 * compressed bytes have gone in. zlib inflates into pieces of {@linkcode INFLATE_CHUNK_BYTES} and the
 * stream is stopped at the first piece past the limit, so at most one piece beyond it is inflated.
 */
async function inflate(
  src: Source,
  limit: number,
  maxInput: number,
  sink?: (chunk: Uint8Array, at: number) => void,
): Promise<Inflated> {
  const gunzip = createGunzip({ chunkSize: INFLATE_CHUNK_BYTES });
  let out = 0;
  let error: unknown;
  let stopped = false;
  const ended = new Promise<boolean>((resolve) => {
    gunzip.on("data", (chunk: Uint8Array) => {
      if (stopped) return;
      const take = Math.min(chunk.length, limit - out);
      sink?.(chunk.subarray(0, take), out);
      out += take;
      if (out >= limit) {
        stopped = true;
        gunzip.destroy();
      }
    });
    gunzip.on("end", () => resolve(true));
    gunzip.on("error", (e: unknown) => {
      error ??= e;
      stopped = true;
      resolve(false);
    });
    gunzip.on("close", () => resolve(false));
  });
  // One listener each for the whole run: the writer waits on `wake` when zlib's input is full.
  let wake = () => {};
  gunzip.on("drain", () => wake());
  gunzip.on("close", () => wake());
  const drained = () => new Promise<void>((resolve) => (wake = resolve));

  const cap = Math.min(src.size, maxInput);
  let offset = 0;
  let input = src.prefix.subarray(0, cap);
  while (!stopped && input.length > 0) {
    const more = gunzip.write(input);
    offset += input.length;
    if (offset >= cap) break;
    if (!more) await drained();
    if (stopped) break;
    input = await getObjectRange(src.uri, offset, Math.min(cap, offset + CHUNK_BYTES));
  }
  if (!stopped) {
    if (offset >= src.size) gunzip.end();
    else gunzip.destroy(); // the input cap: stop without the end-of-stream check
  }
  const complete = await ended;
  return { out, complete: complete && error === undefined, error };
}
