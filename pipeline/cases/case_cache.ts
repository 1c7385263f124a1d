/**
 * A cache of preprocessed cases, so that a run does not decode and normalise the same NIfTI files
 * again. Entries live under any storage URI (a local folder or an S3 prefix beside the data) and are
 * keyed by the identity of the case's files: each file's URI with its ETag (S3) or size and
 * modification time (local files), plus the preprocessing version. Changing a file changes the key,
 * so a stale entry is never read; it is simply left behind.
 *
 * Format of one entry (`<case id>-<key>.rvcase`), little-endian:
 * `"RVCASE02"` · u32 JSON length · JSON {id, dims, box, stats, labelled, key, sha256, channels
 * unless 4, and if labelled regionsOutside (each region's voxels outside the box: WT, TC, ET for
 * BraTS)} · zero padding to a multiple of 4 · the payload: float32 image [z, y, x, channels] over
 * the box (4 for BraTS) · uint8 region bits [z, y, x] if labelled.
 * `sha256` is the hex SHA-256 of the payload, checked whenever the arrays are read: a damaged
 * entry of the same length (labels overwritten, NaN bytes) is refused by name, never used
 * (format 01 had no checksum; its entries have other keys, so they are not even looked up).
 *
 * Training cases too many for memory stay in local entries of this format, read when a sampler
 * draws them ({@linkcode StreamedCases}); their headers alone say what the run needs to know
 * about them beforehand ({@linkcode readCachedHeader}).
 * @module
 */
import { type Case, caseChannels } from "./cases.ts";
import { imageChannels, preprocessCase, type PreprocessedCase } from "./preprocess.ts";
import type { CaseSource } from "./sampling.ts";
import { createHash } from "node:crypto";
import {
  exists,
  getObject,
  getObjectRange,
  headObject,
  joinUri,
  putObject,
} from "../storage/mod.ts";
import { type Box, type Dims } from "../volume/mod.ts";

/**
 * Bumped whenever preprocessing changes what it produces. 2: labelled entries record the
 * reference's region voxels outside the brain's box, and a case without brain voxels is refused.
 */
export const PREPROCESS_VERSION = 2;
const MAGIC = "RVCASE02";

/** Hex SHA-256 of `bytes`, synchronously (sampler workers read entries synchronously). */
function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** The identity of a case's inputs: a hex SHA-256 over its files' URIs and versions. */
export async function caseKey(c: Case): Promise<string> {
  const channels = [...new Set(caseChannels(c).map((ch) => ch.uri))];
  const uris = [...channels, ...(c.seg ? [c.seg] : [])];
  const parts = await Promise.all(uris.map(async (uri) => {
    const info = await headObject(uri);
    const version = info.etag ?? `${info.size}:${info.lastModified?.getTime() ?? 0}`;
    return `${uri}\n${version}`;
  }));
  // The format is part of the key: entries of another format are never looked up, only left behind.
  // A BraTS case is keyed by its enhancing label, another by its dataset's channels and labels.
  const labels = c.enhancingLabel !== undefined
    ? String(c.enhancingLabel)
    : JSON.stringify({ channels: c.channels, dataset: c.dataset });
  const text = [MAGIC, `v${PREPROCESS_VERSION}`, c.id, labels, ...parts].join("\n");
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Serialises a preprocessed case to the cache format. */
export function encodeCachedCase(p: PreprocessedCase, key: string): Uint8Array {
  const image = new Uint8Array(p.image.buffer, p.image.byteOffset, p.image.byteLength);
  const payload = createHash("sha256").update(image);
  if (p.regions) payload.update(p.regions);
  const meta = new TextEncoder().encode(JSON.stringify({
    id: p.id,
    dims: p.dims,
    box: p.box,
    stats: p.stats,
    labelled: p.regions !== undefined,
    key,
    sha256: payload.digest("hex"),
    // Entries of BraTS cases (4 channels) are as before this field existed.
    ...(imageChannels(p) !== 4 ? { channels: imageChannels(p) } : {}),
    ...(p.regions ? { regionsOutside: p.regionsOutside ?? [0, 0, 0] } : {}),
  }));
  const head = 8 + 4 + meta.length;
  const pad = (4 - (head % 4)) % 4;
  const out = new Uint8Array(head + pad + p.image.byteLength + (p.regions?.length ?? 0));
  out.set(new TextEncoder().encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, meta.length, true);
  out.set(meta, 12);
  const imageAt = head + pad;
  out.set(image, imageAt);
  if (p.regions) out.set(p.regions, imageAt + p.image.byteLength);
  return out;
}

/** Options of {@linkcode decodeCachedCase} and {@linkcode loadPreprocessed}. */
export interface CaseMemoryOptions {
  /**
   * Put the case's image and regions in SharedArrayBuffers, so that worker threads (the batch
   * prefetcher's) read them where they are instead of each holding a copy.
   * @default false
   */
  shared?: boolean;
  /**
   * Let the case's arrays view the entry's bytes instead of copying them, when they are aligned
   * for float32 (they are in a buffer of their own, as a file just read is): no second copy while
   * decoding. The caller must not reuse `bytes`. Ignored with `shared`.
   * @default false
   */
  inPlace?: boolean;
  /** Where {@linkcode loadPreprocessed} says why it rebuilds a damaged entry. @default nowhere */
  log?: (message: string) => void;
  /**
   * {@linkcode loadPreprocessed} preprocesses and rewrites the entry without reading it: the
   * caller found it damaged (and said so).
   * @default false
   */
  rebuild?: boolean;
}

function allocate<T extends Float32Array | Uint8Array>(
  kind: { new (b: ArrayBuffer | SharedArrayBuffer): T; BYTES_PER_ELEMENT: number },
  length: number,
  shared: boolean,
): T {
  const bytes = length * kind.BYTES_PER_ELEMENT;
  return new kind(shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
}

/**
 * The case with its arrays in shared memory (the same object when they already are). The ordinary
 * arrays it held become garbage, so only one case at a time exists twice while a dataset loads.
 */
export function sharedCase(p: PreprocessedCase): PreprocessedCase {
  const move = <T extends Float32Array | Uint8Array>(a: T): T => {
    if (a.buffer instanceof SharedArrayBuffer) return a;
    const out = allocate(a.constructor as typeof Float32Array, a.length, true) as T;
    out.set(a);
    return out;
  };
  return { ...p, image: move(p.image), ...(p.regions ? { regions: move(p.regions) } : {}) };
}

/** What a cache entry's header says about the case, without its arrays. */
export interface CachedCaseHeader {
  id: string;
  dims: Dims;
  box: Box;
  stats: { mean: number; std: number }[];
  labelled: boolean;
  key: string;
  /** Hex SHA-256 of the entry's payload (its arrays, as stored). */
  sha256: string;
  /** Input channels of the image, when not 4 (the BraTS modalities). */
  channels?: number;
  /** When labelled: each region's voxels of the reference outside the box (WT, TC, ET for BraTS). */
  regionsOutside?: number[];
}

/**
 * The bytes of a case's arrays in memory: float32 image [z, y, x, channels] (4 unless given) and,
 * if labelled, regions.
 */
export function caseBytes(box: Box, labelled: boolean, channels = 4): number {
  return box.size[0] * box.size[1] * box.size[2] * (4 * channels + (labelled ? 1 : 0));
}

/**
 * Parses the header at the start of an entry (at least its first 12 bytes, more when the JSON is
 * longer) and checks that the whole entry has `totalBytes`.
 * @returns the header, where the image starts, and how many bytes the header needs (when `bytes`
 * holds too few of them, `header` is undefined: read that many and call again)
 */
function parseHeader(
  bytes: Uint8Array,
  totalBytes: number,
  name: string,
): { header?: CachedCaseHeader; imageAt: number; needed: number } {
  const bad = (why: string) =>
    new RangeError(`${name}: not a preprocessed-case cache entry (${why})`);
  if (totalBytes < 12 || bytes.length < 12) throw bad(`${totalBytes} bytes`);
  const magic = new TextDecoder().decode(bytes.subarray(0, 8));
  if (magic !== MAGIC) {
    throw bad(
      magic.startsWith("RVCASE")
        ? `format ${magic.slice(6)}, this build reads ${MAGIC.slice(6)}`
        : "bad magic",
    );
  }
  const metaLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(8, true);
  const head = 12 + metaLength;
  if (head > totalBytes) throw bad("truncated header");
  const imageAt = head + ((4 - (head % 4)) % 4);
  if (bytes.length < head) return { imageAt, needed: head };
  let meta: CachedCaseHeader;
  try {
    meta = JSON.parse(new TextDecoder().decode(bytes.subarray(12, head)));
  } catch (e) {
    throw bad(`header is not JSON: ${(e as Error).message}`);
  }
  const size = meta?.box?.size;
  if (
    !Array.isArray(size) || size.length !== 3 || !size.every((d) => Number.isInteger(d) && d > 0)
  ) {
    throw bad(`box size ${JSON.stringify(size)}`);
  }
  const outside = meta.regionsOutside;
  if (
    meta.labelled &&
    !(Array.isArray(outside) && outside.length >= 1 &&
      outside.every((v) => Number.isInteger(v) && v >= 0))
  ) {
    throw bad(`regionsOutside ${JSON.stringify(outside)}`);
  }
  if (typeof meta.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(meta.sha256)) {
    throw bad(`sha256 ${JSON.stringify(meta.sha256)}`);
  }
  const channels = meta.channels ?? 4;
  if (!Number.isInteger(channels) || channels < 1) {
    throw bad(`channels ${JSON.stringify(channels)}`);
  }
  const expected = imageAt + caseBytes(meta.box, meta.labelled, channels);
  if (totalBytes !== expected) throw bad(`${totalBytes} bytes, expected ${expected}`);
  return { header: meta, imageAt, needed: head };
}

/** The payload of an entry disagrees with the SHA-256 its header records. */
export class CacheChecksumError extends RangeError {
  constructor(name: string, recorded: string, found: string) {
    super(
      `${name}: damaged preprocessed-case cache entry (SHA-256 of its arrays is ${found}, ` +
        `its header records ${recorded})`,
    );
    this.name = "CacheChecksumError";
  }
}

function checkPayload(bytes: Uint8Array, meta: CachedCaseHeader, imageAt: number, name: string) {
  const found = sha256Hex(bytes.subarray(imageAt));
  if (found !== meta.sha256) throw new CacheChecksumError(name, meta.sha256, found);
}

/**
 * Parses a cache entry and checks its payload against the SHA-256 in its header; `name` is used
 * in errors.
 * @throws {RangeError} naming the entry when it is not one, or {@linkcode CacheChecksumError}
 *   when its arrays are not those it was written with
 */
export function decodeCachedCase(
  bytes: Uint8Array,
  name: string,
  options: CaseMemoryOptions = {},
): PreprocessedCase & { key: string } {
  const { header: meta, imageAt } = parseHeader(bytes, bytes.length, name);
  if (!meta) {
    throw new RangeError(`${name}: not a preprocessed-case cache entry (truncated header)`);
  }
  checkPayload(bytes, meta, imageAt, name);
  const voxels = meta.box.size[0] * meta.box.size[1] * meta.box.size[2];
  const ch = meta.channels ?? 4;
  const shared = options.shared ?? false;
  let image: Float32Array;
  let regions: Uint8Array | undefined;
  if (options.inPlace && !shared && (bytes.byteOffset + imageAt) % 4 === 0) {
    image = new Float32Array(bytes.buffer as ArrayBuffer, bytes.byteOffset + imageAt, voxels * ch);
    if (meta.labelled) {
      regions = bytes.subarray(imageAt + voxels * 4 * ch, imageAt + voxels * (4 * ch + 1));
    }
  } else {
    image = allocate(Float32Array, voxels * ch, shared);
    new Uint8Array(image.buffer).set(bytes.subarray(imageAt, imageAt + voxels * 4 * ch));
    if (meta.labelled) {
      regions = allocate(Uint8Array, voxels, shared);
      regions.set(bytes.subarray(imageAt + voxels * 4 * ch, imageAt + voxels * (4 * ch + 1)));
    }
  }
  return {
    id: meta.id,
    dims: meta.dims,
    box: meta.box,
    stats: meta.stats,
    image,
    key: meta.key,
    ...(regions ? { regions, regionsOutside: meta.regionsOutside } : {}),
  };
}

/**
 * Reads the header of the cache entry at `uri` and checks the entry's size against it: what is
 * known about the case without keeping its arrays. With `verify`, the whole entry is read (and
 * dropped) to check its payload's SHA-256 too.
 * @throws {RangeError} naming `uri` when it is not a whole entry, or
 *   {@linkcode CacheChecksumError} (with `verify`) when it is damaged
 * @throws {ObjectNotFoundError} when it does not exist
 */
export async function readCachedHeader(
  uri: string,
  options: { verify?: boolean } = {},
): Promise<CachedCaseHeader> {
  if (options.verify) {
    const bytes = await getObject(uri);
    const { header, imageAt } = parseHeader(bytes, bytes.length, uri);
    if (!header) {
      throw new RangeError(`${uri}: not a preprocessed-case cache entry (truncated header)`);
    }
    checkPayload(bytes, header, imageAt, uri);
    return header;
  }
  const { size } = await headObject(uri);
  let bytes = await getObjectRange(uri, 0, Math.min(size, 4096));
  let parsed = parseHeader(bytes, size, uri);
  if (!parsed.header) {
    bytes = await getObjectRange(uri, 0, parsed.needed);
    parsed = parseHeader(bytes, size, uri);
  }
  return parsed.header!;
}

/** Where a case's cache entry lives under `cacheUri`. */
export async function cacheEntryUri(cacheUri: string, c: Case): Promise<string> {
  return joinUri(cacheUri, `${c.id}-${(await caseKey(c)).slice(0, 24)}.rvcase`);
}

/**
 * A preprocessed case: read from the cache under `cacheUri` when an entry for the current inputs
 * exists, else preprocessed from the NIfTI files and written there. Without `cacheUri`, no cache.
 * @returns the case, whether it came from the cache, and the entry's URI (with `cacheUri`)
 */
export async function loadPreprocessed(
  c: Case,
  cacheUri?: string,
  options: CaseMemoryOptions = {},
): Promise<{ case: PreprocessedCase; cached: boolean; uri?: string }> {
  const fresh = async () => {
    const p = await preprocessCase(c);
    return options.shared ? sharedCase(p) : p;
  };
  if (!cacheUri) return { case: await fresh(), cached: false };
  const uri = await cacheEntryUri(cacheUri, c);
  if (!options.rebuild && await exists(uri)) {
    try {
      const { key: _key, ...p } = decodeCachedCase(await getObject(uri), uri, options);
      return { case: p, cached: true, uri };
    } catch (e) {
      // A damaged entry is rebuilt rather than trusted or fatal, and the log says why.
      options.log?.(`cache: ${(e as Error).message}; rebuilding`);
    }
  }
  const p = await fresh();
  await putObject(uri, encodeCachedCase(p, uri));
  return { case: p, cached: false, uri };
}

/**
 * A training case kept on local disk instead of in memory: where its cache entry is, and what
 * is known about it without its arrays. Plain data, so it can be posted to worker threads.
 */
export interface StreamedEntry {
  id: string;
  /** Local path of the case's cache entry. */
  path: string;
  dims: Dims;
  box: Box;
  stats: { mean: number; std: number }[];
  labelled: boolean;
  /** Input channels, when not 4. */
  channels?: number;
}

/** The entry of a case whose cache entry is at `path`, from the case or its entry's header. */
export function streamedEntry(
  p: Omit<PreprocessedCase, "image"> | CachedCaseHeader,
  path: string,
): StreamedEntry {
  const labelled = "labelled" in p ? p.labelled : p.regions !== undefined;
  // A header says its channels when not 4; a preprocessed case has one statistic per channel.
  const channels = "labelled" in p ? p.channels ?? 4 : p.stats.length || 4;
  return {
    id: p.id,
    path,
    dims: p.dims,
    box: p.box,
    stats: p.stats,
    labelled,
    ...(channels !== 4 ? { channels } : {}),
  };
}

/** The bytes a streamed case takes in memory once read. */
export function streamedBytes(e: StreamedEntry): number {
  return caseBytes(e.box, e.labelled, e.channels ?? 4);
}

/** Options of {@linkcode StreamedCases}. */
export interface StreamedCasesOptions {
  /**
   * Cases kept in memory after use, the most recently used first: a case drawn again soon (the
   * same batch, the next step) is not read again.
   * @default 3
   */
  capacity?: number;
}

/**
 * Training cases read from their local cache entries when they are asked for, holding at most
 * `capacity` of them (the most recently used): so a dataset far larger than memory trains with a
 * few cases' worth of it, as nnU-Net reads its preprocessed cases from disk. Reads are
 * synchronous: a sampler worker does nothing else meanwhile, and the batch of a step stays a
 * function of the step alone. The arrays are the entry's bytes, exactly as an in-memory run holds
 * them, so the batches are the same bit for bit.
 */
export class StreamedCases implements CaseSource {
  readonly entries: readonly StreamedEntry[];
  readonly capacity: number;
  /** Resident cases by index; Map order is recency, least recent first. */
  readonly #resident = new Map<number, PreprocessedCase>();
  #reads = 0;

  constructor(entries: readonly StreamedEntry[], options: StreamedCasesOptions = {}) {
    const capacity = options.capacity ?? 3;
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`StreamedCases: capacity must be a positive integer, got ${capacity}`);
    }
    this.entries = entries;
    this.capacity = capacity;
  }

  get length(): number {
    return this.entries.length;
  }

  /** How many cases are in memory now (at most `capacity`). */
  get resident(): number {
    return this.#resident.size;
  }

  /** How many times a case has been read from disk. */
  get reads(): number {
    return this.#reads;
  }

  /**
   * Case `index`, from memory or read from its entry.
   * @throws {Error} naming the entry's file when it is missing, damaged or holds another case
   */
  get(index: number): PreprocessedCase {
    const hit = this.#resident.get(index);
    if (hit) {
      this.#resident.delete(index);
      this.#resident.set(index, hit);
      return hit;
    }
    const e = this.entries[index];
    if (!e) throw new RangeError(`StreamedCases: no case ${index} of ${this.entries.length}`);
    // Evicted first, so that no more than `capacity` cases are held even while reading one.
    while (this.#resident.size >= this.capacity) {
      this.#resident.delete(this.#resident.keys().next().value!);
    }
    const c = this.#read(e);
    this.#reads++;
    this.#resident.set(index, c);
    return c;
  }

  #read(e: StreamedEntry): PreprocessedCase {
    let bytes: Uint8Array;
    try {
      bytes = Deno.readFileSync(e.path);
    } catch (err) {
      const why = err instanceof Deno.errors.NotFound ? "no such file" : (err as Error).message;
      throw new Error(`Cannot read training case "${e.id}" from ${e.path}: ${why}`, {
        cause: err,
      });
    }
    let p: PreprocessedCase;
    try {
      const { key: _key, ...decoded } = decodeCachedCase(bytes, e.path, { inPlace: true });
      p = decoded;
    } catch (err) {
      throw new Error(`Cannot read training case "${e.id}": ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (
      p.id !== e.id || p.box.size.join() !== e.box.size.join() ||
      p.box.start.join() !== e.box.start.join() || (p.regions !== undefined) !== e.labelled
    ) {
      throw new Error(
        `Cannot read training case "${e.id}" from ${e.path}: it holds case "${p.id}" with box ` +
          `${JSON.stringify(p.box)}, expected box ${JSON.stringify(e.box)}`,
      );
    }
    return p;
  }
}
