/**
 * A cache of preprocessed cases, so that a run does not decode and normalise the same NIfTI files
 * again. Entries live under any storage URI (a local folder or an S3 prefix beside the data) and are
 * keyed by the identity of the case's files: each file's URI with its ETag (S3) or size and
 * modification time (local files), plus the preprocessing version. Changing a file changes the key,
 * so a stale entry is never read; it is simply left behind.
 *
 * Format of one entry (`<case id>-<key>.rvcase`), little-endian:
 * `"RVCASE01"` · u32 JSON length · JSON {id, dims, box, stats, labelled, key} · zero padding to a
 * multiple of 4 · float32 image [z, y, x, 4] over the box · uint8 region bits [z, y, x] if labelled.
 * @module
 */
import { type Case, MODALITIES } from "./cases.ts";
import { preprocessCase, type PreprocessedCase } from "./preprocess.ts";
import { exists, getObject, headObject, joinUri, putObject } from "./storage.ts";

/** Bumped whenever preprocessing changes what it produces. */
export const PREPROCESS_VERSION = 1;
const MAGIC = "RVCASE01";

/** The identity of a case's inputs: a hex SHA-256 over its files' URIs and versions. */
export async function caseKey(c: Case): Promise<string> {
  const uris = [...MODALITIES.map((m) => c.images[m]), ...(c.seg ? [c.seg] : [])];
  const parts = await Promise.all(uris.map(async (uri) => {
    const info = await headObject(uri);
    const version = info.etag ?? `${info.size}:${info.lastModified?.getTime() ?? 0}`;
    return `${uri}\n${version}`;
  }));
  const text = [`v${PREPROCESS_VERSION}`, c.id, String(c.enhancingLabel), ...parts].join("\n");
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Serialises a preprocessed case to the cache format. */
export function encodeCachedCase(p: PreprocessedCase, key: string): Uint8Array {
  const meta = new TextEncoder().encode(JSON.stringify({
    id: p.id,
    dims: p.dims,
    box: p.box,
    stats: p.stats,
    labelled: p.regions !== undefined,
    key,
  }));
  const head = 8 + 4 + meta.length;
  const pad = (4 - (head % 4)) % 4;
  const out = new Uint8Array(head + pad + p.image.byteLength + (p.regions?.length ?? 0));
  out.set(new TextEncoder().encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, meta.length, true);
  out.set(meta, 12);
  const imageAt = head + pad;
  out.set(new Uint8Array(p.image.buffer, p.image.byteOffset, p.image.byteLength), imageAt);
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

/** Parses a cache entry; `name` is used in errors. */
export function decodeCachedCase(
  bytes: Uint8Array,
  name: string,
  options: CaseMemoryOptions = {},
): PreprocessedCase & { key: string } {
  const bad = (why: string) =>
    new RangeError(`${name}: not a preprocessed-case cache entry (${why})`);
  if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    throw bad("bad magic");
  }
  const metaLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(8, true);
  if (12 + metaLength > bytes.length) throw bad("truncated header");
  const meta = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + metaLength)));
  const voxels = meta.box.size[0] * meta.box.size[1] * meta.box.size[2];
  const head = 12 + metaLength;
  const imageAt = head + ((4 - (head % 4)) % 4);
  const expected = imageAt + voxels * 16 + (meta.labelled ? voxels : 0);
  if (bytes.length !== expected) throw bad(`${bytes.length} bytes, expected ${expected}`);
  const shared = options.shared ?? false;
  const image = allocate(Float32Array, voxels * 4, shared);
  new Uint8Array(image.buffer).set(bytes.subarray(imageAt, imageAt + voxels * 16));
  let regions: Uint8Array | undefined;
  if (meta.labelled) {
    regions = allocate(Uint8Array, voxels, shared);
    regions.set(bytes.subarray(imageAt + voxels * 16, imageAt + voxels * 17));
  }
  return {
    id: meta.id,
    dims: meta.dims,
    box: meta.box,
    stats: meta.stats,
    image,
    key: meta.key,
    ...(regions ? { regions } : {}),
  };
}

/** Where a case's cache entry lives under `cacheUri`. */
export async function cacheEntryUri(cacheUri: string, c: Case): Promise<string> {
  return joinUri(cacheUri, `${c.id}-${(await caseKey(c)).slice(0, 24)}.rvcase`);
}

/**
 * A preprocessed case: read from the cache under `cacheUri` when an entry for the current inputs
 * exists, else preprocessed from the NIfTI files and written there. Without `cacheUri`, no cache.
 * @returns the case and whether it came from the cache
 */
export async function loadPreprocessed(
  c: Case,
  cacheUri?: string,
  options: CaseMemoryOptions = {},
): Promise<{ case: PreprocessedCase; cached: boolean }> {
  const fresh = async () => {
    const p = await preprocessCase(c);
    return options.shared ? sharedCase(p) : p;
  };
  if (!cacheUri) return { case: await fresh(), cached: false };
  const uri = await cacheEntryUri(cacheUri, c);
  if (await exists(uri)) {
    try {
      const { key: _key, ...p } = decodeCachedCase(await getObject(uri), uri, options);
      return { case: p, cached: true };
    } catch (e) {
      // A damaged entry is rebuilt rather than trusted or fatal.
      console.error(`cache: ${(e as Error).message}; rebuilding`);
    }
  }
  const p = await fresh();
  await putObject(uri, encodeCachedCase(p, uri));
  return { case: p, cached: false };
}
