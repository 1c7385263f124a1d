/**
 * A real S3 server for tests: s3rver on 127.0.0.1 with an ephemeral port and its files in a temporary
 * folder, with the AWS_* environment pointed at it for the SDK (and pipeline/storage.ts).
 *
 * ```ts ignore
 * import { startS3rver } from "./_s3rver.ts";
 * Deno.test("reads a case from S3", async () => {
 *   await using s3 = await startS3rver({ buckets: ["brats"] });
 *   await putObject("s3://brats/a.txt", "hi");
 *   // s3.requests lists what the server received; s3.events the S3 events it emitted
 * });
 * ```
 *
 * Stopping destroys the cached storage clients (their kept-alive sockets), closes every connection,
 * removes the folder and restores the environment, so tests pass Deno's resource and op
 * sanitizers. Test files that make their own S3Client must `destroy()` it before the test ends.
 * Run one server with `setEnv` at a time: the environment is process-wide.
 *
 * s3rver quirks worked around or worth knowing:
 * - It lists with continuation tokens encrypted with single DES, which Deno's node:crypto lacks: any
 *   truncated ListObjectsV2 page fails with HTTP 500 InternalError. While a server runs, this helper
 *   maps `createCipheriv("des")` to DES-EDE3 with the key repeated three times (the same cipher), so
 *   paging works. ListObjects v1 with Marker never needed DES.
 * - A multipart upload's ETag is the MD5 of the whole object, without S3's "-<parts>" suffix; look
 *   for UploadPart requests in {@linkcode TestS3rver.requests} instead.
 * - Its event for a completed multipart upload is "ObjectCreated:Post" (S3 says
 *   "ObjectCreated:CompleteMultipartUpload").
 * - HEAD of a missing key and HEAD in a missing bucket are both a bodiless 404, as on S3.
 * - Bucket names need at least 3 characters; path-style addressing is required.
 * @module
 */
import crypto from "node:crypto";
import { Buffer } from "node:buffer";
// A full specifier, not an import map entry: the map is what every user installs, and s3rver is
// for tests only (it pulls in ~270 packages and a core-js build script).
// deno-lint-ignore no-import-prefix -- kept out of deno.json on purpose (above)
import S3rver from "npm:s3rver@3.7.1";
import { resetS3Clients } from "../pipeline/storage/objects.ts";

/** Credentials s3rver accepts (its built-in dummy account). */
export const S3RVER_CREDENTIALS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" } as const;

/** Options for {@linkcode startS3rver}. */
export interface S3rverOptions {
  /** Buckets to create before the server starts. @default [] */
  buckets?: string[];
  /** Point AWS_ENDPOINT_URL_S3, AWS_REGION and the credentials at this server. @default true */
  setEnv?: boolean;
}

/** One request the server received. */
export interface S3rverRequest {
  method: string;
  /** The URL path, e.g. "/bucket/key". */
  path: string;
  /** The query parameters, e.g. { partNumber: "1", uploadId: "..." }. */
  query: Record<string, string>;
  /** The HTTP status of the response. */
  status: number;
}

/** A running s3rver; stop it with {@linkcode TestS3rver.stop} or `await using`. */
export interface TestS3rver extends AsyncDisposable {
  /** e.g. "http://127.0.0.1:43123" */
  readonly endpoint: string;
  readonly port: number;
  /** Where s3rver keeps its buckets. */
  readonly directory: string;
  /** Every request the server received, in order of completion. */
  readonly requests: S3rverRequest[];
  /** The S3 event notifications s3rver emitted (`{ Records: [...] }`), in order. */
  readonly events: S3EventLike[];
  /** Creates a bucket (directly in s3rver's store). */
  createBucket(name: string): Promise<void>;
  /** Stops the server, removes its folder, restores the environment. Safe to call twice. */
  stop(): Promise<void>;
}

/** An S3-shaped event notification as s3rver emits it. */
export interface S3EventLike {
  Records: {
    eventName: string;
    s3: { bucket: { name: string }; object: { key: string; size?: number; eTag?: string } };
  }[];
}

// The parts of s3rver (an untyped CommonJS Koa app) this helper uses.
interface S3rverApp {
  middleware: ((ctx: KoaContext, next: () => Promise<void>) => Promise<void>)[];
  store: { putBucket(name: string): Promise<unknown> };
  httpServer?: { closeAllConnections?(): void };
  run(): Promise<{ port: number }>;
  close(): Promise<void>;
  on(event: "event", listener: (e: S3EventLike) => void): void;
}
interface KoaContext {
  method: string;
  path: string;
  query: Record<string, string>;
  status: number;
}

const ENV_NAMES = [
  "AWS_ENDPOINT_URL_S3",
  "AWS_ENDPOINT_URL",
  "AWS_REGION",
  "AWS_DEFAULT_REGION",
  "AWS_ACCESS_KEY_ID",
  "AWS_SECRET_ACCESS_KEY",
  "AWS_SESSION_TOKEN",
  "AWS_PROFILE",
  "AWS_EC2_METADATA_DISABLED",
];

/**
 * Points the AWS_* environment at `endpoint` with s3rver's credentials (or `credentials`) and drops
 * cached storage clients; disposing restores the previous values. Use it alone to aim the SDK at a
 * closed port.
 */
export function useS3Env(
  endpoint: string,
  credentials: { accessKeyId: string; secretAccessKey: string } = S3RVER_CREDENTIALS,
): AsyncDisposable & { restore(): Promise<void> } {
  const saved = new Map(ENV_NAMES.map((n) => [n, Deno.env.get(n)]));
  for (const n of ENV_NAMES) Deno.env.delete(n);
  Deno.env.set("AWS_ENDPOINT_URL_S3", endpoint);
  Deno.env.set("AWS_REGION", "us-east-1");
  Deno.env.set("AWS_ACCESS_KEY_ID", credentials.accessKeyId);
  Deno.env.set("AWS_SECRET_ACCESS_KEY", credentials.secretAccessKey);
  Deno.env.set("AWS_EC2_METADATA_DISABLED", "true");
  let restored = false;
  const restore = async () => {
    if (restored) return;
    restored = true;
    for (const [n, v] of saved) v === undefined ? Deno.env.delete(n) : Deno.env.set(n, v);
    await resetS3Clients();
  };
  // Clients cached under the old environment stay valid for it; nothing to close here.
  return { restore, [Symbol.asyncDispose]: restore };
}

/** A TCP port on 127.0.0.1 with nothing listening (bound, read, released). */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Starts s3rver on 127.0.0.1 with an ephemeral port; see the module doc. */
export async function startS3rver(options: S3rverOptions = {}): Promise<TestS3rver> {
  const directory = await Deno.makeTempDir({ prefix: "s3rver-" });
  const server = new S3rver({
    address: "127.0.0.1",
    port: 0,
    silent: true,
    directory,
    configureBuckets: (options.buckets ?? []).map((name) => ({ name })),
  }) as unknown as S3rverApp;
  const requests: S3rverRequest[] = [];
  const events: S3EventLike[] = [];
  // First in the chain, so it sees every request and the final status, errors included.
  server.middleware.unshift(async (ctx, next) => {
    const record = (status: number) =>
      requests.push({ method: ctx.method, path: ctx.path, query: { ...ctx.query }, status });
    try {
      await next();
    } catch (e) {
      // Koa sets the error's status only after the chain returns.
      record((e as { status?: number }).status ?? 500);
      throw e;
    }
    record(ctx.status);
  });
  server.on("event", (e) => events.push(e));
  installDesShim();
  let port: number;
  try {
    ({ port } = await server.run());
  } catch (e) {
    uninstallDesShim();
    await Deno.remove(directory, { recursive: true }).catch(() => {});
    throw e;
  }
  const endpoint = `http://127.0.0.1:${port}`;
  const env = options.setEnv === false ? undefined : useS3Env(endpoint);
  if (!env) await resetS3Clients();

  let stopped: Promise<void> | undefined;
  const stop = () =>
    stopped ??= (async () => {
      await resetS3Clients(); // closes the storage clients' kept-alive sockets
      server.httpServer?.closeAllConnections?.();
      await server.close();
      uninstallDesShim();
      await env?.restore();
      await Deno.remove(directory, { recursive: true });
    })();
  return {
    endpoint,
    port,
    directory,
    requests,
    events,
    createBucket: async (name) => {
      await server.store.putBucket(name);
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

// -----------------------------------------------------------------------------------------------
// s3rver encrypts continuation tokens with single DES ("des", 8-byte key), which Deno's node:crypto
// does not offer. DES-EDE3 with K1 = K2 = K3 = K is single DES, so map one onto the other while a
// server runs. Reference-counted so overlapping servers share one patch.

type CipherFactory = (alg: string, key: Uint8Array, iv: Uint8Array, opts?: unknown) => unknown;
interface MutableCrypto {
  createCipheriv: CipherFactory;
  createDecipheriv: CipherFactory;
}
const mutableCrypto = crypto as unknown as MutableCrypto;
let shimUsers = 0;
let originals: MutableCrypto | undefined;

function desAsTripleDes(original: CipherFactory): CipherFactory {
  return (alg, key, iv, opts) =>
    alg.toLowerCase() === "des" || alg.toLowerCase() === "des-cbc"
      ? original("des-ede3-cbc", Buffer.concat([key, key, key]), iv, opts)
      : original(alg, key, iv, opts);
}

function installDesShim(): void {
  if (shimUsers++ > 0) return;
  originals = {
    createCipheriv: mutableCrypto.createCipheriv,
    createDecipheriv: mutableCrypto.createDecipheriv,
  };
  mutableCrypto.createCipheriv = desAsTripleDes(originals.createCipheriv);
  mutableCrypto.createDecipheriv = desAsTripleDes(originals.createDecipheriv);
}

function uninstallDesShim(): void {
  if (--shimUsers > 0 || !originals) return;
  mutableCrypto.createCipheriv = originals.createCipheriv;
  mutableCrypto.createDecipheriv = originals.createDecipheriv;
  originals = undefined;
}
