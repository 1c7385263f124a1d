/**
 * The S3 half of {@link ./storage.ts}: one cached client per configuration, bounded retries with
 * backoff and jitter, multipart uploads for large objects, and errors that name the URI.
 * @module
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { createHash } from "node:crypto";
import { byKey, type ObjectInfo, ObjectNotFoundError } from "./uri.ts";

/** Attempts per request (first try included) unless AWS_MAX_ATTEMPTS says otherwise. */
export const DEFAULT_MAX_ATTEMPTS = 4;
/** No retry starts later than this after a request's first attempt began. */
export const RETRY_WINDOW_MS = 12_000;
/** Time allowed to open a TCP connection. */
export const CONNECTION_TIMEOUT_MS = 3_000;
/** Time a request may sit idle (no bytes either way) before it is abandoned and retried. */
export const REQUEST_TIMEOUT_MS = 30_000;
/** Objects at least this large are uploaded in parts. */
export const DEFAULT_MULTIPART_THRESHOLD = 16 * 1024 * 1024;
/** Size of each part of a multipart upload (S3's minimum is 5 MiB). */
export const DEFAULT_PART_SIZE = 8 * 1024 * 1024;
/** Parts of one multipart upload in flight at once. */
export const DEFAULT_QUEUE_SIZE = 4;

/** Options for writing an object. */
export interface PutOptions {
  /** The object's Content-Type on S3 (ignored locally). @default S3's binary/octet-stream */
  contentType?: string;
  /** Objects of at least this many bytes use a multipart upload. @default 16 MiB */
  multipartThreshold?: number;
  /** Bytes per part of a multipart upload, at least 5 MiB. @default 8 MiB */
  partSize?: number;
}

/** Options for listing. */
export interface ListOptions {
  /** Keys asked for per ListObjectsV2 page (at most 1000). @default 1000 */
  pageSize?: number;
}

// ---------------------------------------------------------------------------------------------
// Retries

/** A network-level failure: no HTTP response came back. */
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

interface SdkErrorLike {
  name?: string;
  message?: string;
  code?: string;
  cause?: unknown;
  $metadata?: { httpStatusCode?: number; attempts?: number; totalRetryDelay?: number };
}

function isNetworkError(e: unknown, depth = 0): boolean {
  if (typeof e !== "object" || e === null || depth > 5) return false;
  const err = e as SdkErrorLike;
  if (err.$metadata?.httpStatusCode !== undefined) return false;
  if (err.code !== undefined && NETWORK_CODES.has(err.code)) return true;
  if (err.name === "TimeoutError") return true;
  return isNetworkError(err.cause, depth + 1);
}

const THROTTLING_NAMES = new Set([
  "SlowDown",
  "Throttling",
  "ThrottlingException",
  "TooManyRequestsException",
  "RequestTimeout",
]);

/**
 * Whether an error (or one of its causes) is S3 being unreachable, throttling or failing on its
 * side (5xx): worth trying again later, unlike a missing object or a denied request.
 */
export function isTransientS3Error(e: unknown, depth = 0): boolean {
  if (typeof e !== "object" || e === null || depth > 8) return false;
  const err = e as SdkErrorLike;
  const status = err.$metadata?.httpStatusCode;
  if (status !== undefined && (status >= 500 || status === 429)) return true;
  if (err.name !== undefined && THROTTLING_NAMES.has(err.name)) return true;
  if (isNetworkError(e)) return true;
  return isTransientS3Error(err.cause, depth + 1);
}

class RetryToken {
  constructor(readonly count: number, readonly delay: number, readonly startedAt: number) {}
  getRetryCount(): number {
    return this.count;
  }
  getRetryDelay(): number {
    return this.delay;
  }
}

/**
 * The SDK's RetryStrategyV2, bounded in attempts and in time: throttling (SlowDown, 429), 5xx and
 * network errors are retried after a full-jitter exponential delay (base 200 ms, 500 ms when
 * throttled, at most 5 s each, a Retry-After hint honoured within that); nothing is retried once
 * {@linkcode RETRY_WINDOW_MS} has passed, so an unreachable endpoint fails in seconds.
 */
class BoundedRetryStrategy {
  constructor(readonly maxAttempts: number) {}

  acquireInitialRetryToken(_scope: string): Promise<RetryToken> {
    return Promise.resolve(new RetryToken(0, 0, Date.now()));
  }

  refreshRetryTokenForRetry(
    token: RetryToken,
    info: { error?: unknown; errorType: string; retryAfterHint?: Date },
  ): Promise<RetryToken> {
    const retryable = info.errorType === "THROTTLING" || info.errorType === "TRANSIENT" ||
      info.errorType === "SERVER_ERROR" || isNetworkError(info.error);
    const attempt = token.count + 1; // attempts made so far
    if (!retryable || attempt >= this.maxAttempts) {
      return Promise.reject(new Error("no more retries"));
    }
    const base = info.errorType === "THROTTLING" ? 500 : 200;
    let delay = Math.random() * Math.min(5_000, base * 2 ** token.count);
    if (info.retryAfterHint) {
      delay = Math.min(5_000, Math.max(delay, info.retryAfterHint.getTime() - Date.now()));
    }
    if (Date.now() + delay - token.startedAt > RETRY_WINDOW_MS) {
      return Promise.reject(new Error("retry window exceeded"));
    }
    return Promise.resolve(new RetryToken(attempt, Math.round(delay), token.startedAt));
  }

  recordSuccess(_token: RetryToken): void {}
}

// ---------------------------------------------------------------------------------------------
// Clients

interface S3Context {
  client: S3Client;
  /** Where requests go, for messages. */
  endpoint: string;
}

const contexts = new Map<string, Promise<S3Context>>();

function env(name: string): string | undefined {
  const v = Deno.env.get(name);
  return v === undefined || v === "" ? undefined : v;
}

/**
 * The client for the current environment: region from AWS_REGION / AWS_DEFAULT_REGION / the shared
 * config profile, else us-east-1; endpoint from AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (then
 * path-style addressing); credentials from the SDK's standard chain. One client is kept per distinct
 * configuration; {@linkcode resetS3Clients} drops them.
 */
function s3Context(): Promise<S3Context> {
  const endpoint = env("AWS_ENDPOINT_URL_S3") ?? env("AWS_ENDPOINT_URL");
  const region = env("AWS_REGION") ?? env("AWS_DEFAULT_REGION");
  const maxAttempts = Number(env("AWS_MAX_ATTEMPTS") ?? DEFAULT_MAX_ATTEMPTS);
  // Credentials are part of the configuration (tests switch them); keep only a digest of them.
  const secrets = createHash("sha256")
    .update(JSON.stringify([env("AWS_SECRET_ACCESS_KEY"), env("AWS_SESSION_TOKEN")]))
    .digest("hex");
  const cacheKey = JSON.stringify([
    endpoint,
    region,
    maxAttempts,
    env("AWS_PROFILE"),
    env("AWS_ACCESS_KEY_ID"),
    secrets,
  ]);
  let ctx = contexts.get(cacheKey);
  if (!ctx) {
    ctx = makeContext(endpoint, region, maxAttempts);
    contexts.set(cacheKey, ctx);
    ctx.catch(() => contexts.delete(cacheKey));
  }
  return ctx;
}

async function makeContext(
  endpoint: string | undefined,
  region: string | undefined,
  maxAttempts: number,
): Promise<S3Context> {
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1) {
    throw new RangeError(`AWS_MAX_ATTEMPTS must be a positive integer, found "${maxAttempts}"`);
  }
  region ??= await regionFromSharedConfig();
  const client = new S3Client({
    region,
    endpoint,
    forcePathStyle: endpoint !== undefined,
    followRegionRedirects: endpoint === undefined,
    maxAttempts,
    retryStrategy: new BoundedRetryStrategy(maxAttempts),
    requestHandler: {
      connectionTimeout: CONNECTION_TIMEOUT_MS,
      requestTimeout: REQUEST_TIMEOUT_MS,
    },
    // Otherwise the SDK sends aws-chunked bodies with trailing checksums, which S3-compatible
    // servers (s3rver among them) store verbatim, framing included.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
  return { client, endpoint: endpoint ?? `https://s3.${region}.amazonaws.com` };
}

/** The region the SDK finds in the shared config files (AWS_PROFILE), or us-east-1. */
async function regionFromSharedConfig(): Promise<string> {
  const probe = new S3Client({});
  try {
    return await probe.config.region();
  } catch {
    return "us-east-1";
  } finally {
    probe.destroy();
  }
}

/**
 * Destroys the cached S3 clients (closing their kept-alive connections), so the next call reads the
 * environment afresh. Tests call it after changing AWS_* variables and before checking for leaks.
 */
export async function resetS3Clients(): Promise<void> {
  const all = [...contexts.values()];
  contexts.clear();
  for (const ctx of await Promise.allSettled(all)) {
    if (ctx.status === "fulfilled") ctx.value.client.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

const DENIED = new Set([
  "AccessDenied",
  "Forbidden",
  "InvalidAccessKeyId",
  "SignatureDoesNotMatch",
  "AllAccessDisabled",
  "ExpiredToken",
  "InvalidToken",
]);

/** Turns an SDK error into one that names the action, the URI and the problem. */
function s3Failure(
  action: string,
  uri: string,
  bucket: string,
  ctx: S3Context,
  e: unknown,
): Error {
  if (e instanceof ObjectNotFoundError) return e;
  const err = (typeof e === "object" && e !== null ? e : {}) as SdkErrorLike;
  const name = err.name ?? "Error";
  const status = err.$metadata?.httpStatusCode;
  const attempts = err.$metadata?.attempts ?? 1;
  // The SDK names bodiless error responses (HEAD) by their status code or "UnknownError".
  const named = name !== "Error" && name !== "UnknownError" && name !== "Unknown" &&
    !/^\d+$/.test(name);
  const text = err.message && err.message !== name && err.message !== "UnknownError"
    ? err.message
    : "";
  const detail = [named ? name : `HTTP ${status ?? "error"}`, text].filter(Boolean).join(": ");
  const after = attempts > 1 ? ` (gave up after ${attempts} attempts)` : "";
  const options = { cause: e };
  if (name === "NoSuchKey" || (status === 404 && (name === "NotFound" || !named))) {
    return new ObjectNotFoundError(uri, "no such key", options);
  }
  if (name === "NoSuchBucket") {
    return new Error(`Cannot ${action} "${uri}": bucket "${bucket}" does not exist`, options);
  }
  if (status === 403 || DENIED.has(name)) {
    return new Deno.errors.PermissionDenied(
      `Cannot ${action} "${uri}": access denied (${detail})`,
      options,
    );
  }
  if (name === "CredentialsProviderError") {
    return new Error(
      `Cannot ${action} "${uri}": no AWS credentials found (set AWS_ACCESS_KEY_ID and ` +
        `AWS_SECRET_ACCESS_KEY, or AWS_PROFILE): ${err.message}`,
      options,
    );
  }
  if (isNetworkError(e)) {
    const reason = err.message || name;
    return new Error(`Cannot reach S3 endpoint ${ctx.endpoint} for ${uri}: ${reason}${after}`, {
      cause: e,
    });
  }
  if (status === 429 || name === "SlowDown" || name === "Throttling") {
    return new Error(`Cannot ${action} "${uri}": S3 kept throttling (${detail})${after}`, options);
  }
  if (status !== undefined && status >= 500) {
    return new Error(
      `Cannot ${action} "${uri}": S3 server error (${detail})${after}`,
      options,
    );
  }
  return new Error(`Cannot ${action} "${uri}": ${detail}`, options);
}

async function run<T>(
  action: string,
  uri: string,
  bucket: string,
  op: (client: S3Client) => Promise<T>,
): Promise<T> {
  const ctx = await s3Context();
  try {
    return await op(ctx.client);
  } catch (e) {
    throw s3Failure(action, uri, bucket, ctx, e);
  }
}

function unquote(etag: string | undefined): string | undefined {
  return etag?.replace(/^"|"$/g, "");
}

// ---------------------------------------------------------------------------------------------
// Operations

/** Reads a whole object. */
export function getS3(uri: string, bucket: string, key: string): Promise<Uint8Array> {
  return run("read", uri, bucket, async (client) => {
    const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    if (!out.Body) throw new Error("the response had no body");
    return await out.Body.transformToByteArray();
  });
}

/** Reads bytes [start, end) of an object, fewer if it is shorter (none if it ends before start). */
export function getS3Range(
  uri: string,
  bucket: string,
  key: string,
  start: number,
  end: number,
): Promise<Uint8Array> {
  return run("read", uri, bucket, async (client) => {
    try {
      const out = await client.send(
        new GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=${start}-${end - 1}` }),
      );
      if (!out.Body) throw new Error("the response had no body");
      const bytes = await out.Body.transformToByteArray();
      // A server that ignores Range sends the whole object.
      return out.ContentRange === undefined && bytes.length > end - start
        ? bytes.subarray(start, end)
        : bytes;
    } catch (e) {
      // 416: the object is shorter than `start`.
      if ((e as SdkErrorLike).name === "InvalidRange") return new Uint8Array(0);
      throw e;
    }
  });
}

/** Looks up an object's size, ETag and modification time. */
export function headS3(uri: string, bucket: string, key: string): Promise<ObjectInfo> {
  return run("look up", uri, bucket, async (client) => {
    try {
      const out = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      return {
        uri,
        key: key.slice(key.lastIndexOf("/") + 1),
        size: out.ContentLength ?? 0,
        etag: unquote(out.ETag),
        lastModified: out.LastModified,
      };
    } catch (e) {
      // HEAD responses have no body, so a missing bucket and a missing key both read "NotFound".
      if ((e as SdkErrorLike).$metadata?.httpStatusCode !== 404) throw e;
      try {
        await client.send(new HeadBucketCommand({ Bucket: bucket }));
      } catch (b) {
        if ((b as SdkErrorLike).$metadata?.httpStatusCode === 404) {
          throw Object.assign(new Error("bucket missing"), { name: "NoSuchBucket", cause: b });
        }
      }
      throw new ObjectNotFoundError(uri, "no such key", { cause: e });
    }
  });
}

/** Writes an object with one PUT, or a multipart upload from `multipartThreshold` bytes on. */
export function putS3(
  uri: string,
  bucket: string,
  key: string,
  data: Uint8Array,
  opts: PutOptions = {},
): Promise<void> {
  const threshold = opts.multipartThreshold ?? DEFAULT_MULTIPART_THRESHOLD;
  // S3 allows at most 10,000 parts.
  const partSize = Math.max(
    opts.partSize ?? DEFAULT_PART_SIZE,
    5 * 1024 * 1024,
    Math.ceil(data.length / 10_000),
  );
  return run("write", uri, bucket, async (client) => {
    if (data.length < threshold) {
      await client.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: data,
          ContentLength: data.length,
          ContentType: opts.contentType,
        }),
      );
      return;
    }
    // Nothing is visible until CompleteMultipartUpload; on failure the upload is aborted
    // (leavePartsOnError: false) so no parts linger.
    const upload = new Upload({
      client,
      params: { Bucket: bucket, Key: key, Body: data, ContentType: opts.contentType },
      partSize,
      queueSize: DEFAULT_QUEUE_SIZE,
      leavePartsOnError: false,
    });
    await upload.done();
  });
}

/**
 * Writes an object only if no object has its key: one PUT with `If-None-Match: *`, which S3
 * answers 412 (or 409 while a concurrent conditional write is in flight) when the key exists.
 * Servers that ignore the header (s3rver 3.7) overwrite instead, so callers check first too.
 * @returns whether the object was created
 */
export function createS3(
  uri: string,
  bucket: string,
  key: string,
  data: Uint8Array,
): Promise<boolean> {
  return run("write", uri, bucket, async (client) => {
    try {
      await client.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: data,
          ContentLength: data.length,
          IfNoneMatch: "*",
        }),
      );
      return true;
    } catch (e) {
      const status = (e as SdkErrorLike).$metadata?.httpStatusCode;
      if (status === 412 || status === 409) return false;
      throw e;
    }
  });
}

/** Deletes an object; a missing key is not an error (S3's own rule). */
export function deleteS3(uri: string, bucket: string, key: string): Promise<void> {
  return run("delete", uri, bucket, async (client) => {
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
  });
}

/**
 * Lists every object under `prefix` (a folder: "" for the whole bucket, else ending in '/'),
 * following continuation tokens page by page. Zero-byte "folder" markers (keys ending in '/') are
 * skipped, as they have no local counterpart.
 */
export async function listS3(
  prefixUri: string,
  bucket: string,
  prefix: string,
  opts: ListOptions = {},
): Promise<ObjectInfo[]> {
  const pageSize = opts.pageSize ?? 1000;
  if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 1000) {
    throw new RangeError(`Cannot list "${prefixUri}": pageSize must be 1..1000, found ${pageSize}`);
  }
  return await run("list", prefixUri, bucket, async (client) => {
    const out: ObjectInfo[] = [];
    let token: string | undefined;
    do {
      const page: ListObjectsV2CommandOutput = await client.send(
        new ListObjectsV2Command({
          Bucket: bucket,
          Prefix: prefix === "" ? undefined : prefix,
          MaxKeys: pageSize,
          ContinuationToken: token,
        }),
      );
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined || o.Key.endsWith("/") || !o.Key.startsWith(prefix)) continue;
        out.push({
          uri: `s3://${bucket}/${o.Key}`,
          key: o.Key.slice(prefix.length),
          size: o.Size ?? 0,
          etag: unquote(o.ETag),
          lastModified: o.LastModified,
        });
      }
      if (page.IsTruncated && !page.NextContinuationToken) {
        throw new Error("the listing was truncated but came without a continuation token");
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return out.sort(byKey);
  });
}
