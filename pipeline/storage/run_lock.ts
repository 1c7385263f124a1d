/**
 * A lock on a training run's output, so that two processes never write one run's checkpoints.
 *
 * The lock is the object `<out>/train.lock`, created only if absent ({@linkcode createObject}:
 * a hard link locally, a PUT with `If-None-Match: *` on S3), holding who took it: pid, host, the
 * process's start time (from /proc on Linux) and a random token. It is removed when the run ends,
 * fails or stops on a signal; a run killed outright (SIGKILL, a lost machine) leaves it.
 *
 * Stale-lock rule: a lock taken on this host by a process that is no longer running (no such
 * pid, or a pid now belonging to a process started at another time) is stale, and the next run
 * removes it, saying so. A lock of another host is never judged from here: the run is refused
 * with the holder named, and the lock file must be removed by hand once that run is known to be
 * gone (as with nnU-Net's or any shared-folder tool's lock files, no host can see another's
 * processes). On non-Linux hosts, where /proc is missing, a lock is held to be alive.
 * @module
 */
import { basename, dirname, join, resolve } from "node:path";
import { createObject, deleteObject, getObject, joinUri, parseUri } from "./objects.ts";

/** File name of the lock inside a run's output. */
export const LOCK_FILE = "train.lock";

/** What a lock file says about its holder. */
export interface LockHolder {
  pid: number;
  host: string;
  /** When the lock was taken (ISO 8601). */
  since: string;
  /** The holder's start time in clock ticks since boot (/proc/<pid>/stat), where known. */
  processStart?: string;
  command: string;
  token: string;
}

/** The output is locked by another run. */
export class RunLockedError extends Error {
  constructor(readonly uri: string, readonly holder: LockHolder | undefined, detail: string) {
    super(detail);
    this.name = "RunLockedError";
  }
}

/** A process's start time from /proc (Linux), or undefined where it cannot be read. */
function processStart(pid: number | "self"): string | undefined | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Field 22 (starttime); the command name (field 2) may hold spaces, so count after its ")".
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      // No such process, unless there is no /proc at all.
      try {
        Deno.statSync("/proc/self/stat");
        return null;
      } catch {
        return undefined;
      }
    }
    return undefined;
  }
}

/**
 * Why a lock of this host is stale, or undefined when its holder may still run (or it is
 * another host's, which this host cannot judge).
 */
export function staleReason(holder: LockHolder, host = Deno.hostname()): string | undefined {
  if (holder.host !== host) return undefined;
  const start = processStart(holder.pid);
  if (start === null) return `process ${holder.pid} is not running`;
  if (start !== undefined && holder.processStart !== undefined && start !== holder.processStart) {
    return `process ${holder.pid} is another process now (started at ${start}, the lock's at ${holder.processStart})`;
  }
  return undefined;
}

function describe(h: LockHolder): string {
  return `${h.command} pid ${h.pid} on host ${h.host}, since ${h.since}`;
}

async function readHolder(uri: string): Promise<LockHolder | undefined> {
  try {
    const v = JSON.parse(new TextDecoder().decode(await getObject(uri)));
    if (
      typeof v === "object" && v !== null && Number.isInteger(v.pid) &&
      typeof v.host === "string" && typeof v.token === "string"
    ) return v as LockHolder;
    return undefined;
  } catch {
    return undefined;
  }
}

/** A lock held by this process; {@linkcode RunLock.release} removes it. */
export class RunLock {
  constructor(readonly uri: string, readonly holder: LockHolder) {}

  /** Removes the lock, if it is still this process's (never another's that replaced it). */
  async release(): Promise<void> {
    const now = await readHolder(this.uri);
    if (now?.token === this.holder.token) await deleteObject(this.uri);
  }
}

/**
 * Takes the lock on the run output `out`, removing a stale one of this host first.
 * @param log told when a stale lock is removed
 * @throws {RunLockedError} naming the holder and the lock file when another run holds it
 */
export async function acquireRunLock(
  out: string,
  command: string,
  log: (message: string) => void = () => {},
): Promise<RunLock> {
  const uri = joinUri(out, LOCK_FILE);
  const start = processStart("self");
  const holder: LockHolder = {
    pid: Deno.pid,
    host: Deno.hostname(),
    since: new Date().toISOString(),
    ...(start ? { processStart: start } : {}),
    command,
    token: crypto.randomUUID(),
  };
  const bytes = new TextEncoder().encode(JSON.stringify(holder) + "\n");
  for (let attempt = 0; attempt < 3; attempt++) {
    // On S3 the lock is looked for first: a server that ignores If-None-Match (s3rver 3.7, some
    // S3-compatible stores) would otherwise let a second run overwrite it.
    const present = parseUri(uri).kind !== "local" && await readHolder(uri);
    if (!present && await createObject(uri, bytes)) {
      if (parseUri(uri).kind === "local") return new RunLock(uri, holder);
      // Read back: with a server that ignored the condition, the last writer holds it.
      const now = await readHolder(uri);
      if (now?.token === holder.token) return new RunLock(uri, holder);
    }
    const other = await readHolder(uri);
    if (!other) {
      // Gone meanwhile (released), or not a lock this project wrote.
      const text = await getObject(uri).then((b) => new TextDecoder().decode(b)).catch(() => null);
      if (text === null) continue;
      throw new RunLockedError(
        uri,
        undefined,
        `${out} is locked by ${uri}, which is not a lock file this project reads ` +
          `(${JSON.stringify(text.slice(0, 80))}); remove it if no run is using ${out}`,
      );
    }
    const why = staleReason(other);
    if (why) {
      // Removed only while it is still the stale one: never a lock another run just took.
      if ((await readHolder(uri))?.token === other.token) await deleteObject(uri);
      log(`removed the stale lock ${uri} of ${describe(other)}: ${why}`);
      continue;
    }
    throw new RunLockedError(
      uri,
      other,
      `${out} is in use by another run: ${describe(other)} holds ${uri}. Wait for it to end, ` +
        `or choose another --out; if that run is gone (${
          other.host === holder.host ? "its process is still running here" : "another host's"
        }), remove ${uri}`,
    );
  }
  throw new RunLockedError(uri, undefined, `${out}: could not take the lock ${uri}`);
}

/**
 * Whether `inner` is `outer` or lies under it: both local paths (compared resolved, and through
 * symbolic links where they exist) or both S3 prefixes of one bucket.
 */
export async function isWithin(inner: string, outer: string): Promise<boolean> {
  const a = parseUri(inner), b = parseUri(outer);
  if (a.kind !== b.kind) return false;
  if (a.kind === "local" && b.kind === "local") {
    // The nearest existing folder's real path, the rest appended: `inner` may not exist yet.
    const real = async (p: string) => {
      let head = resolve(p);
      const rest: string[] = [];
      for (;;) {
        try {
          return join(await Deno.realPath(head), ...rest);
        } catch {
          const up = dirname(head);
          if (up === head) return resolve(p);
          rest.unshift(basename(head));
          head = up;
        }
      }
    };
    const x = await real(a.path), y = await real(b.path);
    return x === y || x.startsWith(y.endsWith("/") ? y : `${y}/`);
  }
  if (a.kind === "local" || b.kind === "local" || a.bucket !== b.bucket) return false;
  const x = a.key.replace(/\/+$/, ""), y = b.key.replace(/\/+$/, "");
  return y === "" || x === y || x.startsWith(`${y}/`);
}
