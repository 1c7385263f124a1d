/**
 * Sharding a case list over the workers of a batch job: which worker am I, and is a case mine?
 *
 * The worker's place comes from `--shard i/n` (0-based), else from the array job it runs in:
 * AWS Batch array jobs (`AWS_BATCH_JOB_ARRAY_INDEX`, `AWS_BATCH_JOB_ARRAY_SIZE`) or Kubernetes
 * Indexed Jobs (`JOB_COMPLETION_INDEX`, with the count in `REVUNET_SHARD_COUNT` because Kubernetes
 * does not pass `.spec.completions` to the pod).
 *
 * A case belongs to shard `hash(id) mod n`. Unlike "sort the ids and deal them out", the assignment
 * depends on the id and `n` alone, so workers that list the dataset at different moments (cases
 * still arriving, a listing retried) still agree, and adding a case never moves another. The price
 * is balance: shards get n-ish equal shares only on average (7 cases over 3 shards may split 4/2/1).
 * @module
 */

/** One worker's place among `count` workers: it processes the cases whose shard is `index`. */
export interface Shard {
  /** 0-based, below `count`. */
  index: number;
  /** Workers in all, at least 1. */
  count: number;
}

/** The environment variables {@linkcode parseShard} reads. */
export const SHARD_ENV = {
  awsIndex: "AWS_BATCH_JOB_ARRAY_INDEX",
  awsSize: "AWS_BATCH_JOB_ARRAY_SIZE",
  k8sIndex: "JOB_COMPLETION_INDEX",
  count: "REVUNET_SHARD_COUNT",
} as const;

/**
 * Works out this worker's shard.
 *
 * - `flag` `"i/n"`: shard i of n (0 ≤ i < n), whatever the environment says;
 * - `flag` `"auto/n"`: the index from the environment (AWS Batch or Kubernetes), n workers;
 * - `flag` `"auto"` or undefined: both from the environment: AWS Batch's index and array size,
 *   else Kubernetes' `JOB_COMPLETION_INDEX` and `REVUNET_SHARD_COUNT`.
 *
 * @returns the shard, or undefined when there is no flag and no array job (process every case)
 * @throws {RangeError} for a malformed flag or variable, an index out of range, or an index without
 *   a count (and the reverse), naming the flag or variable and the value found
 * @example
 * ```ts
 * import { parseShard } from "./shard.ts";
 * parseShard("2/8", {}); // { index: 2, count: 8 }
 * parseShard(undefined, { AWS_BATCH_JOB_ARRAY_INDEX: "3", AWS_BATCH_JOB_ARRAY_SIZE: "10" }); // { index: 3, count: 10 }
 * parseShard(undefined, { JOB_COMPLETION_INDEX: "0", REVUNET_SHARD_COUNT: "4" }); // { index: 0, count: 4 }
 * parseShard(undefined, {}); // undefined
 * ```
 */
export function parseShard(
  flag: string | undefined,
  env: Record<string, string | undefined>,
): Shard | undefined {
  const value = (name: string) => {
    const v = env[name]?.trim();
    return v === undefined || v === "" ? undefined : v;
  };
  let flagCount: number | undefined;
  if (flag !== undefined) {
    const m = /^\s*(\d+|auto)\s*(?:\/\s*(\d+)\s*)?$/.exec(flag);
    if (!m || (m[1] !== "auto" && m[2] === undefined)) {
      throw new RangeError(
        `--shard must be "i/n" (shard i of n, 0-based), "auto/n" or "auto", found "${flag}"`,
      );
    }
    if (m[2] !== undefined) flagCount = count("--shard", m[2]);
    if (m[1] !== "auto") return checked("--shard", index("--shard", m[1]), flagCount!, flag);
  }

  const awsIndex = value(SHARD_ENV.awsIndex);
  const k8sIndex = value(SHARD_ENV.k8sIndex);
  const envCount = value(SHARD_ENV.count);
  if (awsIndex !== undefined) {
    const awsSize = value(SHARD_ENV.awsSize);
    const n = flagCount ??
      (awsSize !== undefined
        ? count(SHARD_ENV.awsSize, awsSize)
        : envCount !== undefined
        ? count(SHARD_ENV.count, envCount)
        : missingCount(SHARD_ENV.awsIndex, `${SHARD_ENV.awsSize} or ${SHARD_ENV.count}`));
    return checked(SHARD_ENV.awsIndex, index(SHARD_ENV.awsIndex, awsIndex), n, awsIndex);
  }
  if (k8sIndex !== undefined) {
    const n = flagCount ??
      (envCount !== undefined
        ? count(SHARD_ENV.count, envCount)
        : missingCount(SHARD_ENV.k8sIndex, SHARD_ENV.count));
    return checked(SHARD_ENV.k8sIndex, index(SHARD_ENV.k8sIndex, k8sIndex), n, k8sIndex);
  }
  if (flag !== undefined) {
    throw new RangeError(
      `--shard ${flag}: no array job index in the environment (${SHARD_ENV.awsIndex} or ` +
        `${SHARD_ENV.k8sIndex}); give the index as --shard i/n`,
    );
  }
  if (envCount !== undefined) {
    throw new RangeError(
      `${SHARD_ENV.count}=${envCount} is set but no array job index is (${SHARD_ENV.awsIndex} or ` +
        `${SHARD_ENV.k8sIndex}); use --shard i/n to pick a shard by hand`,
    );
  }
  return undefined;
}

function index(name: string, text: string): number {
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new RangeError(`${name} must be a non-negative integer, found "${text}"`);
  }
  return Number(text);
}

function count(name: string, text: string): number {
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text)) || Number(text) < 1) {
    throw new RangeError(
      `${name} must be a positive integer (the number of shards), found "${text}"`,
    );
  }
  return Number(text);
}

function missingCount(indexName: string, countNames: string): never {
  throw new RangeError(
    `${indexName} is set but the number of shards is not: set ${countNames}, or give --shard auto/n`,
  );
}

function checked(name: string, i: number, n: number, found: string): Shard {
  if (i >= n) {
    throw new RangeError(
      `${name}: shard index ${i} must be below the shard count ${n} ("${found}")`,
    );
  }
  return { index: i, count: n };
}

/**
 * The shard (0 … count-1) a case id belongs to: FNV-1a over the id's UTF-8 bytes, mixed by
 * MurmurHash3's finalizer, modulo `count`. Depends on nothing but the id and the count.
 * @throws {RangeError} unless count is a positive integer
 * @example
 * ```ts
 * import { shardOf } from "./shard.ts";
 * shardOf("BraTS2021_00000", 1); // 0
 * ```
 */
export function shardOf(caseId: string, count: number): number {
  if (!Number.isSafeInteger(count) || count < 1) {
    throw new RangeError(`The shard count must be a positive integer, found ${count}`);
  }
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(caseId)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193);
  }
  // FNV-1a's low bits vary little between ids that differ in their last digit; the finalizer
  // spreads every input bit over every output bit before the modulo.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) % count;
}

/**
 * Whether a case is this worker's to process. Every case id is in exactly one of the `count`
 * shards; with no shard (undefined) every case is.
 * @example
 * ```ts
 * import { inShard } from "./shard.ts";
 * const ids = ["a", "b", "c", "d"];
 * const mine = ids.filter((id) => inShard(id, { index: 0, count: 2 }));
 * ```
 */
export function inShard(caseId: string, shard: Shard | undefined): boolean {
  return shard === undefined || shardOf(caseId, shard.count) === shard.index;
}

/**
 * The name of a shard's own files and folders in an output that shards share (its report, its
 * metrics): `shard-<i>-of-<n>`.
 */
export function shardName(shard: Shard): string {
  return `shard-${shard.index}-of-${shard.count}`;
}
