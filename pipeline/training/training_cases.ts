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
  const loader = new CaseLoader([...trainList, ...valList], trainList.length, o);
  await mapConcurrent(loader.all, 2, (c, i) => loader.load(c, i));
  return loader.dir ? await loader.streamed() : loader.inMemory();
}

/** The state of one {@linkcode loadCases}: which case is where, and what the cases take. */
class CaseLoader {
  readonly local: boolean;
  readonly held: (PreprocessedCase | undefined)[];
  readonly entryUris: (string | undefined)[];
  readonly entries: (StreamedEntry | undefined)[];
  used = 0;
  fromCache = 0;
  done = 0;
  /** The local folder cases are streamed from, once the budget is crossed. */
  dir?: Promise<string>;

  constructor(readonly all: Case[], readonly trainCount: number, readonly o: LoadOptions) {
    this.local = o.cacheUri !== undefined && parseUri(o.cacheUri).kind === "local";
    this.held = new Array(all.length);
    this.entryUris = new Array(all.length);
    this.entries = new Array(all.length);
  }

  streamDir(): Promise<string> {
    return this.dir ??= this.local
      ? Promise.resolve(localPath(this.o.cacheUri!))
      : Deno.makeTempDir({ prefix: "revunet-train-cases-" }).then((d) => {
        this.o.onTemporaryDir(d);
        return d;
      });
  }

  /** Where case `i` is on local disk: its cache entry, or a copy written to the temporary folder. */
  async spill(i: number, p: PreprocessedCase): Promise<StreamedEntry> {
    const uri = this.entryUris[i];
    if (this.local) return streamedEntry(p, localPath(uri!));
    const path = joinUri(await this.streamDir(), `${p.id}.rvcase`);
    await putObject(path, encodeCachedCase(p, uri ?? p.id));
    return streamedEntry(p, path);
  }

  /**
   * Streaming from the local cache already: an entry there is read only to check its checksum,
   * not kept. Returns whether it was there; `rebuild` when it is damaged.
   */
  async fromLocalCache(c: Case, i: number): Promise<"found" | "missing" | "rebuild"> {
    const uri = await cacheEntryUri(this.o.cacheUri!, c);
    try {
      this.entries[i] = streamedEntry(
        await readCachedHeader(uri, { verify: true }),
        localPath(uri),
      );
      return "found";
    } catch (e) {
      if (e instanceof ObjectNotFoundError) return "missing";
      this.o.log(`cache: ${(e as Error).message}; rebuilding`);
      return "rebuild";
    }
  }

  /** Loads case `i`, in memory while the budget holds, else onto local disk. */
  async load(c: Case, i: number): Promise<void> {
    const o = this.o;
    if (o.aborted()) return;
    let rebuild = false;
    if (this.dir && this.local) {
      const cached = await this.fromLocalCache(c, i);
      if (cached === "found") {
        this.fromCache++;
        o.onCase(c.id, ++this.done, this.all.length);
        return;
      }
      rebuild = cached === "rebuild";
    }
    const r = await loadPreprocessed(c, o.cacheUri, {
      shared: o.shared && i < this.trainCount && !this.dir,
      log: o.log,
      rebuild,
    });
    if (r.cached) this.fromCache++;
    this.entryUris[i] = r.uri;
    const bytes = caseBytes(r.case.box, r.case.regions !== undefined, imageChannels(r.case));
    if (!this.dir && this.used + bytes > o.budget) void this.streamDir();
    if (this.dir) this.entries[i] = await this.spill(i, r.case);
    else {
      this.held[i] = r.case;
      this.used += bytes;
    }
    o.onCase(c.id, ++this.done, this.all.length);
  }

  inMemory(): LoadedCases {
    return {
      train: this.held.slice(0, this.trainCount) as PreprocessedCase[],
      val: this.held.slice(this.trainCount) as PreprocessedCase[],
      fromCache: this.fromCache,
    };
  }

  /** The cases held so far go to disk too; all are then read from there. */
  async streamed(): Promise<LoadedCases> {
    const o = this.o;
    for (let i = 0; i < this.all.length; i++) {
      const p = this.held[i];
      if (p && !o.aborted()) this.entries[i] = await this.spill(i, p);
      this.held[i] = undefined;
    }
    const from = await this.dir!;
    const present = this.entries.filter((e): e is StreamedEntry => e !== undefined);
    if (!o.aborted()) {
      const total = present.reduce((sum, e) => sum + streamedBytes(e), 0);
      o.log(
        `the ${this.all.length} cases take ${gib(total)} GiB, more than --case-memory ${
          gib(o.budget)
        } GiB: streaming them from ${from}${
          this.local ? "" : " (a temporary folder, removed at the end of the run)"
        }, ${STREAMED_CASES_PER_SAMPLER} cases in memory per sampler`,
      );
    }
    return {
      train: new StreamedCases(this.entries.slice(0, this.trainCount) as StreamedEntry[], {
        capacity: STREAMED_CASES_PER_SAMPLER,
      }),
      // Validation goes through its cases one after another: one in memory at a time.
      val: new StreamedCases(this.entries.slice(this.trainCount) as StreamedEntry[], {
        capacity: 1,
      }),
      fromCache: this.fromCache,
      streamedFrom: from,
    };
  }
}
