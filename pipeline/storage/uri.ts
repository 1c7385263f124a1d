/**
 * Object URIs: `s3://bucket/key`, local paths and `file://` URLs, and the errors and types shared
 * by the S3 and local halves of {@link ./storage.ts}.
 * @module
 */
import { fileURLToPath } from "node:url";

/** One stored object, as listed or looked up. */
export interface ObjectInfo {
  /** The object's full URI, in the same style (s3, path or file URL) as the URI it was found under. */
  uri: string;
  /**
   * The object's path relative to the prefix it was listed under ('/'-separated); for
   * {@linkcode headObject} the object's last path segment, for a `Store` the key relative to its root.
   */
  key: string;
  /** Size in bytes. */
  size: number;
  /** S3 entity tag without its quotes (an MD5 for single PUTs, `<md5>-<parts>` for multipart on S3). */
  etag?: string;
  /** When the object was last written. */
  lastModified?: Date;
}

/** Thrown when an object does not exist (or, locally, when the path is a folder, not a file). */
export class ObjectNotFoundError extends Error {
  /** The URI that was looked for. */
  readonly uri: string;

  /**
   * @param uri the URI that was looked for
   * @param detail why it is missing, when more can be said than "not found"
   */
  constructor(uri: string, detail = "no such object", options?: ErrorOptions) {
    super(`Object "${uri}" not found: ${detail}`, options);
    this.name = "ObjectNotFoundError";
    this.uri = uri;
  }
}

/** A parsed object URI. */
export type ParsedUri =
  | { kind: "s3"; bucket: string; key: string }
  | { kind: "local"; path: string };

const SCHEME = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//;

/**
 * Splits an object URI into its parts.
 *
 * `s3://bucket/key` keeps the key as written (no percent-decoding, like the AWS CLI); a `file://` URL
 * is decoded to a path; anything else without a scheme is a local path, absolute or relative.
 *
 * @throws {TypeError} for an empty URI, an S3 URI without a bucket, or another scheme
 * @example
 * ```ts
 * import { parseUri } from "./uri.ts";
 * parseUri("s3://brats/cases/a.nii.gz"); // { kind: "s3", bucket: "brats", key: "cases/a.nii.gz" }
 * parseUri("data/a.nii.gz"); // { kind: "local", path: "data/a.nii.gz" }
 * ```
 */
export function parseUri(uri: string): ParsedUri {
  if (typeof uri !== "string" || uri === "") {
    throw new TypeError(`Cannot parse object URI ${JSON.stringify(uri)}: it is empty`);
  }
  const scheme = SCHEME.exec(uri)?.[1]?.toLowerCase();
  if (scheme === undefined) return { kind: "local", path: uri };
  if (scheme === "s3") {
    const rest = uri.slice("s3://".length);
    const slash = rest.indexOf("/");
    const bucket = slash < 0 ? rest : rest.slice(0, slash);
    if (bucket === "") {
      throw new TypeError(`Cannot parse object URI "${uri}": no bucket after "s3://"`);
    }
    return { kind: "s3", bucket, key: slash < 0 ? "" : rest.slice(slash + 1) };
  }
  if (scheme === "file") {
    try {
      return { kind: "local", path: fileURLToPath(uri) };
    } catch (e) {
      throw new TypeError(`Cannot parse object URI "${uri}": ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
  throw new TypeError(
    `Cannot parse object URI "${uri}": scheme "${scheme}://" is not supported (use s3://, file:// or a path)`,
  );
}

/**
 * Appends '/'-separated parts to a URI, with exactly one '/' between them.
 *
 * Empty segments are dropped. Parts appended to a `file://` URL are percent-encoded. No segment is
 * interpreted: `..` stays literal (use a `Store` to keep keys inside a root).
 *
 * @example
 * ```ts
 * import { joinUri } from "./uri.ts";
 * joinUri("s3://brats/cases/", "/001", "t1.nii.gz"); // "s3://brats/cases/001/t1.nii.gz"
 * ```
 */
export function joinUri(base: string, ...parts: string[]): string {
  let segments = parts.flatMap((p) => p.split("/")).filter((s) => s !== "");
  if (segments.length === 0) return base;
  if (/^file:\/\//i.test(base)) segments = segments.map(encodeURIComponent);
  return (base.endsWith("/") ? base : base + "/") + segments.join("/");
}

/** The last '/'-separated segment of a key or path (ignoring a trailing '/'). */
export function baseName(path: string): string {
  const trimmed = path.replace(/[/\\]+$/, "");
  return trimmed.slice(Math.max(trimmed.lastIndexOf("/"), trimmed.lastIndexOf("\\")) + 1);
}

/**
 * Checks that a store key stays inside its root: relative, '/'-separated, no `.`/`..` or empty
 * segments, no backslashes or NUL characters, no drive letters.
 *
 * @param allowEmpty whether "" (the root itself, e.g. to list everything) is accepted
 * @throws {RangeError} naming the key and the rule it breaks
 */
export function checkKey(key: string, root: string, allowEmpty = false): void {
  const refuse = (why: string): never => {
    throw new RangeError(`Invalid key ${JSON.stringify(key)} for store "${root}": ${why}`);
  };
  if (typeof key !== "string") refuse("a key must be a string");
  if (key === "") {
    if (allowEmpty) return;
    refuse("a key may not be empty");
  }
  if (key.includes("\\")) refuse("a key may not contain backslashes");
  if (key.includes("\0")) refuse("a key may not contain NUL characters");
  if (key.startsWith("/")) refuse("a key may not be absolute");
  if (/^[a-zA-Z]:/.test(key)) refuse("a key may not start with a drive letter");
  const segments = key.split("/");
  // A trailing '/' is allowed for prefixes ("cases/"), nowhere else may a segment be empty.
  if (allowEmpty && segments.at(-1) === "") segments.pop();
  for (const s of segments) {
    if (s === "..") refuse('a key may not contain ".." segments');
    if (s === ".") refuse('a key may not contain "." segments');
    if (s === "") refuse("a key may not contain empty segments");
  }
}

/** Orders object infos by key, the same way for S3 and local listings. */
export function byKey(a: ObjectInfo, b: ObjectInfo): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

/** The message of an unknown thrown value. */
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
