/**
 * One interface over object URIs: `s3://bucket/key`, local paths and `file://` URLs.
 *
 * Every function takes a URI and does the same thing on S3 and on disk: reads whole objects or byte
 * ranges, writes them atomically (a single PUT or a multipart upload on S3; a temporary file and a
 * rename locally), lists recursively, and throws errors that name the URI. A {@linkcode Store} is
 * rooted at a URI and takes keys that cannot escape it.
 *
 * S3 configuration comes from the environment: the SDK's standard credential chain, AWS_REGION
 * (else the shared config profile's region, else us-east-1), AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL
 * for S3-compatible servers (path-style addressing), AWS_MAX_ATTEMPTS (default 4). Requests are
 * retried with exponential backoff and jitter on throttling, 5xx and network errors, within a
 * bounded time.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { getObject, listObjects, putObject } from "./objects.ts";
 * const root = await Deno.makeTempDir(); // the same calls take s3://bucket/prefix URIs
 * await putObject(`${root}/run/report.json`, JSON.stringify({ dice: 0.9 }));
 * const listed = await listObjects(`${root}/run/`);
 * assertEquals(listed.map((o) => [o.key, o.size]), [["report.json", 12]]);
 * const bytes = await getObject(`${root}/run/report.json`);
 * assertEquals(JSON.parse(new TextDecoder().decode(bytes)), { dice: 0.9 });
 * await Deno.remove(root, { recursive: true });
 * ```
 * @module
 */
import {
  createLocal,
  deleteLocal,
  getLocal,
  getLocalRange,
  headLocal,
  listLocal,
  putLocal,
  removeStaleTemporaries,
  removeTemporariesUnder,
} from "./local.ts";
import {
  createS3,
  deleteS3,
  getS3,
  getS3Range,
  headS3,
  type ListOptions,
  listS3,
  type PutOptions,
  putS3,
} from "./s3.ts";
import { checkKey, joinUri, type ObjectInfo, ObjectNotFoundError, parseUri } from "./uri.ts";

export { joinUri, type ObjectInfo, ObjectNotFoundError, parseUri };
export type { ParsedUri } from "./uri.ts";
export type { ListOptions, PutOptions };
export {
  DEFAULT_MULTIPART_THRESHOLD,
  DEFAULT_PART_SIZE,
  resetS3Clients,
  RETRY_WINDOW_MS,
} from "./s3.ts";

/**
 * Lists every object under a prefix, recursively, sorted by key.
 *
 * The prefix names a folder (a trailing '/' is optional; `s3://bucket` lists the whole bucket);
 * each {@linkcode ObjectInfo.key} is relative to it. A prefix with nothing under it lists as empty;
 * a missing bucket is an error.
 *
 * @param prefixUri folder to list, e.g. `s3://brats/train/` or `data/train`
 * @param opts `pageSize` of each S3 ListObjectsV2 request (1..1000)
 * @returns every object under the prefix, all pages, sorted by key
 */
export async function listObjects(prefixUri: string, opts?: ListOptions): Promise<ObjectInfo[]> {
  const p = parseUri(prefixUri);
  if (p.kind === "local") return await listLocal(prefixUri, p.path);
  const prefix = p.key === "" || p.key.endsWith("/") ? p.key : p.key + "/";
  return await listS3(prefixUri, p.bucket, prefix, opts);
}

/**
 * Why {@linkcode listObjects} found nothing under `prefixUri`, for error messages: "the folder
 * does not exist" (a local path that is not there; an S3 prefix no object has, which on S3 is the
 * same thing) or "the folder is empty".
 */
export async function emptyFolderReason(prefixUri: string): Promise<string> {
  const p = parseUri(prefixUri);
  if (p.kind !== "local") return "the folder does not exist (no object has this prefix)";
  try {
    await Deno.stat(p.path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
      return "the folder does not exist";
    }
    throw e;
  }
  return "the folder is empty";
}

/**
 * Reads a whole object.
 * @throws {ObjectNotFoundError} when it does not exist
 */
export async function getObject(uri: string): Promise<Uint8Array> {
  const p = parseUri(uri);
  return p.kind === "local" ? await getLocal(uri, p.path) : await getS3(uri, p.bucket, p.key);
}

/**
 * Reads bytes `[start, endExclusive)` of an object, e.g. a file header. Returns fewer bytes when the
 * object is shorter (none when it ends before `start`).
 * @throws {RangeError} unless 0 ≤ start ≤ endExclusive are integers
 * @throws {ObjectNotFoundError} when the object does not exist
 */
export async function getObjectRange(
  uri: string,
  start: number,
  endExclusive: number,
): Promise<Uint8Array> {
  if (
    !Number.isSafeInteger(start) || !Number.isSafeInteger(endExclusive) || start < 0 ||
    endExclusive < start
  ) {
    throw new RangeError(
      `Cannot read bytes of "${uri}": range [${start}, ${endExclusive}) must satisfy 0 <= start <= end`,
    );
  }
  const p = parseUri(uri);
  if (start === endExclusive) {
    await headObject(uri); // still report a missing object
    return new Uint8Array(0);
  }
  return p.kind === "local"
    ? await getLocalRange(uri, p.path, start, endExclusive)
    : await getS3Range(uri, p.bucket, p.key, start, endExclusive);
}

/**
 * Looks up an object's size (and on S3 its ETag) without reading it. Its `key` is the object's last
 * path segment.
 * @throws {ObjectNotFoundError} when it does not exist (locally: or is a folder)
 */
export async function headObject(uri: string): Promise<ObjectInfo> {
  const p = parseUri(uri);
  return p.kind === "local" ? await headLocal(uri, p.path) : await headS3(uri, p.bucket, p.key);
}

/** Whether an object exists. Other failures (a missing bucket, access denied) still throw. */
export async function exists(uri: string): Promise<boolean> {
  try {
    await headObject(uri);
    return true;
  } catch (e) {
    if (e instanceof ObjectNotFoundError) return false;
    throw e;
  }
}

/**
 * Writes an object atomically: readers see the previous object or the whole new one, never part.
 * On S3 a single PUT, or a multipart upload from `opts.multipartThreshold` (16 MiB) on; locally a
 * temporary file in the same folder renamed over the target, parent folders created.
 * Strings are written as UTF-8.
 */
export async function putObject(
  uri: string,
  data: Uint8Array | string,
  opts?: PutOptions,
): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const p = parseUri(uri);
  if (p.kind === "local") return await putLocal(uri, p.path, bytes);
  if (p.key === "" || p.key.endsWith("/")) {
    throw new TypeError(`Cannot write "${uri}": an object key may not be empty or end in '/'`);
  }
  await putS3(uri, p.bucket, p.key, bytes, opts);
}

/**
 * Writes an object only if none exists at `uri` (a lock, a claim), whole or not at all: locally a
 * hard link that fails on an existing file; on S3 a PUT with `If-None-Match: *` (conditional
 * writes, S3 since 2024; a server that ignores the header overwrites, so check first as well).
 * @returns whether this call created it
 */
export async function createObject(uri: string, data: Uint8Array | string): Promise<boolean> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const p = parseUri(uri);
  if (p.kind === "local") return await createLocal(uri, p.path, bytes);
  if (p.key === "" || p.key.endsWith("/")) {
    throw new TypeError(`Cannot write "${uri}": an object key may not be empty or end in '/'`);
  }
  return await createS3(uri, p.bucket, p.key, bytes);
}

/** Deletes an object. Deleting one that does not exist is not an error. */
export async function deleteObject(uri: string): Promise<void> {
  const p = parseUri(uri);
  return p.kind === "local" ? await deleteLocal(uri, p.path) : await deleteS3(uri, p.bucket, p.key);
}

/**
 * Clears what killed writes of these objects left behind: local temporary files (see
 * `putLocal`); nothing on S3, where a PUT is whole or absent.
 */
export async function removeStaleWrites(uris: string[]): Promise<void> {
  for (const uri of uris) {
    const p = parseUri(uri);
    if (p.kind === "local") await removeStaleTemporaries(p.path);
  }
}

/**
 * Clears what killed writes left anywhere under the folder `prefixUri` (local temporary files, and
 * folders that held only them); nothing on S3, where a PUT is whole or absent. Only for a folder
 * that no other process writes meanwhile (a locked run's output).
 * @returns the local paths removed
 */
export async function removeStaleWritesUnder(prefixUri: string): Promise<string[]> {
  const p = parseUri(prefixUri);
  return p.kind === "local" ? await removeTemporariesUnder(p.path) : [];
}

/**
 * Maps `fn` over `items` with at most `limit` calls in flight; results keep the input order.
 * After the first failure no new call starts; the calls in flight are awaited, then that first
 * error is thrown.
 * @throws {RangeError} unless `limit` is a positive integer
 * @example
 * ```ts
 * import { mapConcurrent } from "./objects.ts";
 * const sizes = await mapConcurrent(["a", "bb", "ccc"], 2, (s) => Promise.resolve(s.length));
 * // [1, 2, 3]
 * ```
 */
export async function mapConcurrent<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  if (!Number.isInteger(limit) || limit < 1) {
    throw new RangeError(`mapConcurrent: limit must be a positive integer, found ${limit}`);
  }
  const results = new Array<R>(items.length);
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (failure === undefined && next < items.length) {
      const i = next++;
      try {
        results[i] = await fn(items[i], i);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.error;
  return results;
}

/**
 * Objects under a root URI, addressed by keys that cannot leave it: a key is relative and
 * '/'-separated, without `.`/`..` or empty segments, backslashes or drive letters (a
 * {@linkcode RangeError} names any key that breaks this). Listings give keys relative to the root.
 *
 * @example
 * ```ts
 * import { assertEquals, assertRejects } from "@std/assert";
 * import { openStore } from "./objects.ts";
 * const root = await Deno.makeTempDir(); // or "s3://brats/train"
 * const store = openStore(root);
 * await store.put("001/seg.nii.gz", new Uint8Array([1, 2, 3]));
 * assertEquals((await store.list("001/")).map((o) => o.key), ["001/seg.nii.gz"]);
 * await assertRejects(() => store.get("../outside"), RangeError);
 * await Deno.remove(root, { recursive: true });
 * ```
 */
export class Store {
  /** The URI every key is relative to. */
  readonly root: string;

  /** @param root a folder URI: `s3://bucket/prefix`, a path or a `file://` URL */
  constructor(root: string) {
    parseUri(root); // fail now on a malformed root
    this.root = root;
  }

  /** The full URI of `key`. @throws {RangeError} for a key that would leave the root */
  uri(key: string): string {
    checkKey(key, this.root);
    return joinUri(this.root, key);
  }

  /** Reads a whole object. */
  async get(key: string): Promise<Uint8Array> {
    return await getObject(this.uri(key));
  }

  /** Reads bytes `[start, endExclusive)` of an object. */
  async getRange(key: string, start: number, endExclusive: number): Promise<Uint8Array> {
    return await getObjectRange(this.uri(key), start, endExclusive);
  }

  /** Looks up an object; its `key` is the given key. */
  async head(key: string): Promise<ObjectInfo> {
    return { ...(await headObject(this.uri(key))), key };
  }

  /** Whether an object exists. */
  async exists(key: string): Promise<boolean> {
    return await exists(this.uri(key));
  }

  /** Writes an object atomically. */
  async put(key: string, data: Uint8Array | string, opts?: PutOptions): Promise<void> {
    await putObject(this.uri(key), data, opts);
  }

  /** Deletes an object (a missing one is not an error). */
  async delete(key: string): Promise<void> {
    await deleteObject(this.uri(key));
  }

  /**
   * Lists every object under `prefix` (a folder below the root; "" for everything), with keys
   * relative to the root.
   */
  async list(prefix = "", opts?: ListOptions): Promise<ObjectInfo[]> {
    checkKey(prefix, this.root, true);
    const dir = prefix === "" || prefix.endsWith("/") ? prefix : prefix + "/";
    const found = await listObjects(joinUri(this.root, dir), opts);
    return found.map((o) => ({ ...o, key: dir + o.key }));
  }
}

/** Opens a {@linkcode Store} rooted at `rootUri`. */
export function openStore(rootUri: string): Store {
  return new Store(rootUri);
}
