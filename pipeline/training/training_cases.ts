/**
 * The cases of a training run, loaded once: in memory while they fit a budget, else kept on local
 * disk as case-cache entries that each sampler reads as it draws them (nnU-Net reads its
 * preprocessed cases from disk the same way). Which of the two does not change a single batch:
 * what a step draws depends only on the number of cases and the cases' data.
 * @module
 */
import {
  cacheEntryUri,
  caseBytes,
  encodeCachedCase,
  loadPreprocessed,
  readCachedHeader,
  streamedBytes,
  StreamedCases,
  type StreamedEntry,
  streamedEntry,
} from "../cases/mod.ts";
import type { Case } from "../cases/mod.ts";
import { imageChannels, type PreprocessedCase } from "../cases/mod.ts";
import {
  joinUri,
  mapConcurrent,
  ObjectNotFoundError,
  parseUri,
  putObject,
} from "../storage/mod.ts";

const GIB = 2 ** 30;
const gib = (bytes: number) => (bytes / GIB).toFixed(bytes < 10 * GIB ? 2 : 1);

/** Used when the machine's memory cannot be read. */
const FALLBACK_MEMORY = 16 * GIB;

/** The cgroup (container) memory limit, v2 or v1, when one is set and readable. */
function cgroupMemoryLimit(): number | undefined {
  for (const file of ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]) {
    try {
      const n = Number(Deno.readTextFileSync(file).trim()); // "max" (no limit) is NaN
      if (Number.isFinite(n) && n > 0 && n < 2 ** 60) return n;
    } catch {
      // not in a cgroup with a memory controller, or not readable: no limit known
    }
  }
  return undefined;
}

/**
 * The default memory budget of the run's cases: half of the machine's memory (the smaller of
 * `Deno.systemMemoryInfo().total` and a container's cgroup limit), or 8 GiB when neither can be
 * read. The other half is left to the network, the optimizer and everything else.
 */
export function defaultCaseMemory(): number {
  let total: number | undefined;
  try {
    total = Deno.systemMemoryInfo().total;
  } catch {
    // no permission or not supported here: fall back below
  }
  const limit = cgroupMemoryLimit();
  const known = [total, limit].filter((v): v is number => v !== undefined && v > 0);
  return (known.length > 0 ? Math.min(...known) : FALLBACK_MEMORY) / 2;
}

/** Cases each sampler (worker or main thread) keeps in memory when streaming. */
export const STREAMED_CASES_PER_SAMPLER = 3;

/** The path of a local URI (a path or `file://` URL). */
function localPath(uri: string): string {
  const p = parseUri(uri);
  if (p.kind !== "local") throw new TypeError(`${uri} is not a local path`);
  return p.path;
}

/** Options of {@linkcode loadCases}. */
export interface LoadOptions {
  cacheUri?: string;
  /** Bytes the cases may take in memory; more, and they are streamed from local disk. */
  budget: number;
  /** Training cases in memory go to shared memory (for sampler workers). */
  shared: boolean;
  aborted: () => boolean;
  onCase: (id: string, done: number, total: number) => void;
  /** Told of a temporary folder as soon as it is made, so that it is removed whatever happens. */
  onTemporaryDir: (dir: string) => void;
  log: (message: string) => void;
}

/** The run's cases, in memory or streamed. */
export interface LoadedCases {
  train: PreprocessedCase[] | StreamedCases;
  val: PreprocessedCase[] | StreamedCases;
  fromCache: number;
  /** The local folder of cache entries the cases are read from, when streamed. */
  streamedFrom?: string;
}

/**
 * Loads (preprocessing or reading the cache) the training and validation cases, in memory while
 * their total fits `budget`. Once it would not, every case is kept on local disk instead: in the
 * case cache when that is a local folder (where a case already cached costs one read to check it),
 * else in a temporary folder; the cases held so far go there too and are released. A signal stops
 * the loading between cases (a case in flight finishes, so no cache entry is left half written);
 * the result is then partial and must not be used.
 */
export async function loadCases(
  trainList: Case[],
  valList: Case[],
  o: LoadOptions,
): Promise<LoadedCases> {
  const all = [...trainList, ...valList];
  const local = o.cacheUri !== undefined && parseUri(o.cacheUri).kind === "local";
  const inMemory: (PreprocessedCase | undefined)[] = new Array(all.length);
  const entryUris: (string | undefined)[] = new Array(all.length);
  const entries: (StreamedEntry | undefined)[] = new Array(all.length);
  let used = 0;
  let fromCache = 0;
  let done = 0;
  let dir: Promise<string> | undefined;
  const streamDir = () =>
    dir ??= local
      ? Promise.resolve(localPath(o.cacheUri!))
      : Deno.makeTempDir({ prefix: "revunet-train-cases-" }).then((d) => {
        o.onTemporaryDir(d);
        return d;
      });
  /** Where case `i` is on local disk: its cache entry, or a copy written to the temporary folder. */
  const spill = async (i: number, p: PreprocessedCase) => {
    const uri = entryUris[i];
    if (local) return streamedEntry(p, localPath(uri!));
    const path = joinUri(await streamDir(), `${p.id}.rvcase`);
    await putObject(path, encodeCachedCase(p, uri ?? p.id));
    return streamedEntry(p, path);
  };
  await mapConcurrent(all, 2, async (c, i) => {
    if (o.aborted()) return;
    let rebuild = false;
    if (dir && local) {
      // Streaming from the local cache already: an entry there is read only to check its
      // checksum, not kept.
      const uri = await cacheEntryUri(o.cacheUri!, c);
      try {
        entries[i] = streamedEntry(await readCachedHeader(uri, { verify: true }), localPath(uri));
        fromCache++;
        o.onCase(c.id, ++done, all.length);
        return;
      } catch (e) {
        if (!(e instanceof ObjectNotFoundError)) {
          o.log(`cache: ${(e as Error).message}; rebuilding`);
          rebuild = true;
        }
      }
    }
    const r = await loadPreprocessed(c, o.cacheUri, {
      shared: o.shared && i < trainList.length && !dir,
      log: o.log,
      rebuild,
    });
    if (r.cached) fromCache++;
    entryUris[i] = r.uri;
    const bytes = caseBytes(r.case.box, r.case.regions !== undefined, imageChannels(r.case));
    if (!dir && used + bytes > o.budget) void streamDir();
    if (dir) entries[i] = await spill(i, r.case);
    else {
      inMemory[i] = r.case;
      used += bytes;
    }
    o.onCase(c.id, ++done, all.length);
  });
  if (!dir) {
    return {
      train: inMemory.slice(0, trainList.length) as PreprocessedCase[],
      val: inMemory.slice(trainList.length) as PreprocessedCase[],
      fromCache,
    };
  }
  for (let i = 0; i < all.length; i++) {
    const p = inMemory[i];
    if (p && !o.aborted()) entries[i] = await spill(i, p);
    inMemory[i] = undefined;
  }
  const from = await dir;
  const present = entries.filter((e): e is StreamedEntry => e !== undefined);
  if (!o.aborted()) {
    const total = present.reduce((sum, e) => sum + streamedBytes(e), 0);
    o.log(
      `the ${all.length} cases take ${gib(total)} GiB, more than --case-memory ${
        gib(o.budget)
      } GiB: streaming them from ${from}${
        local ? "" : " (a temporary folder, removed at the end of the run)"
      }, ${STREAMED_CASES_PER_SAMPLER} cases in memory per sampler`,
    );
  }
  return {
    train: new StreamedCases(entries.slice(0, trainList.length) as StreamedEntry[], {
      capacity: STREAMED_CASES_PER_SAMPLER,
    }),
    // Validation goes through its cases one after another: one in memory at a time.
    val: new StreamedCases(entries.slice(trainList.length) as StreamedEntry[], { capacity: 1 }),
    fromCache,
    streamedFrom: from,
  };
}
