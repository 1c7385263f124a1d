/**
 * The local-filesystem half of {@link ./storage.ts}: paths behave like object keys, writes are
 * atomic (temporary file in the same folder, then rename), listings are recursive.
 * @module
 */
import { dirname, join } from "node:path";
import { baseName, byKey, joinUri, type ObjectInfo, ObjectNotFoundError } from "./uri.ts";

/** Names of the temporary files {@linkcode putLocal} writes before renaming; listings skip them. */
const TEMP_NAME = /^\..+\.tmp-[0-9a-f]{12}$/;

function tempName(path: string): string {
  const hex = crypto.randomUUID().replaceAll("-", "").slice(0, 12);
  return join(dirname(path), `.${baseName(path)}.tmp-${hex}`);
}

/** Rethrows a filesystem error as one that names the action and the URI; keeps Deno's class. */
function fail(action: string, uri: string, e: unknown): never {
  if (e instanceof ObjectNotFoundError) throw e;
  if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
    throw new ObjectNotFoundError(uri, "no such file", { cause: e });
  }
  if (e instanceof Deno.errors.IsADirectory) {
    throw new ObjectNotFoundError(uri, "it is a folder, not a file", { cause: e });
  }
  const message = `Cannot ${action} "${uri}": ${e instanceof Error ? e.message : String(e)}`;
  if (e instanceof Deno.errors.PermissionDenied) {
    throw new Deno.errors.PermissionDenied(message, { cause: e });
  }
  throw new Error(message, { cause: e });
}

/**
 * Refuses what is not a regular file (after following links) before it is opened: a folder as a
 * missing object, a device, FIFO or socket with a TypeError. Reading `/dev/zero` or `/dev/urandom`
 * never ends, and opening a FIFO blocks until something writes to it.
 */
async function statRegular(uri: string, action: string, path: string): Promise<Deno.FileInfo> {
  const st = await Deno.stat(path);
  if (st.isFile) return st;
  if (st.isDirectory) throw new Deno.errors.IsADirectory(path);
  const kind = st.isCharDevice
    ? "a character device"
    : st.isBlockDevice
    ? "a block device"
    : st.isFifo
    ? "a FIFO (named pipe)"
    : st.isSocket
    ? "a socket"
    : "not a file";
  throw new TypeError(`Cannot ${action} "${uri}": it is ${kind}, not a regular file`);
}

/** Reads a whole file. */
export async function getLocal(uri: string, path: string): Promise<Uint8Array> {
  try {
    await statRegular(uri, "read", path);
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof TypeError) throw e;
    fail("read", uri, e);
  }
}

/** Reads bytes [start, end) of a file, fewer if the file is shorter. */
export async function getLocalRange(
  uri: string,
  path: string,
  start: number,
  end: number,
): Promise<Uint8Array> {
  let file: Deno.FsFile | undefined;
  const buf = new Uint8Array(end - start);
  let filled = 0;
  try {
    await statRegular(uri, "read", path);
    file = await Deno.open(path, { read: true });
    await file.seek(start, Deno.SeekMode.Start);
    while (filled < buf.length) {
      const n = await file.read(buf.subarray(filled));
      if (n === null) break;
      filled += n;
    }
  } catch (e) {
    if (e instanceof TypeError) throw e;
    fail("read", uri, e);
  } finally {
    file?.close();
  }
  return buf.subarray(0, filled);
}

/** Looks up a file's size and modification time. */
export async function headLocal(uri: string, path: string): Promise<ObjectInfo> {
  try {
    const st = await statRegular(uri, "look up", path);
    return { uri, key: baseName(path), size: st.size, lastModified: st.mtime ?? undefined };
  } catch (e) {
    if (e instanceof TypeError) throw e;
    fail("look up", uri, e);
  }
}

/** Writes `data` to the new file `tmp` (beside `path`, whose folders are created) and flushes it. */
async function writeTemporary(tmp: string, path: string, data: Uint8Array): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const file = await Deno.open(tmp, { write: true, createNew: true });
  try {
    let written = 0;
    while (written < data.length) written += await file.write(data.subarray(written));
    await file.syncData();
  } finally {
    file.close();
  }
}

/**
 * Writes a file atomically: the bytes go to a temporary name in the same folder, are flushed to disk,
 * and the temporary file is renamed over the target, so readers see the old file or the whole new
 * one. Parent folders are created; the temporary file is removed if anything fails.
 */
export async function putLocal(uri: string, path: string, data: Uint8Array): Promise<void> {
  const tmp = tempName(path);
  try {
    await writeTemporary(tmp, path, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`Cannot write "${uri}": ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
}

/**
 * Writes a file only if none exists at `path`, atomically: the whole bytes go to a temporary file
 * that is then hard-linked to `path`, which fails when `path` exists, so two writers never both
 * succeed and a reader never sees part of the file.
 * @returns whether the file was created (false: something was already there)
 */
export async function createLocal(uri: string, path: string, data: Uint8Array): Promise<boolean> {
  const tmp = tempName(path);
  try {
    await writeTemporary(tmp, path, data);
    await Deno.link(tmp, path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return false;
    throw new Error(`Cannot write "${uri}": ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
}

/**
 * Removes the temporary files that writes of `path` left behind when their process was killed
 * between writing and renaming ({@linkcode putLocal}'s `.<name>.tmp-<hex>`; listings never show
 * them). Only `path`'s own: other writers in the same folder are left alone.
 */
export async function removeStaleTemporaries(path: string): Promise<void> {
  const dir = dirname(path);
  const prefix = `.${baseName(path)}.tmp-`;
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && e.name.startsWith(prefix) && TEMP_NAME.test(e.name)) {
        await Deno.remove(join(dir, e.name)).catch(() => {});
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/**
 * Removes every temporary file of a killed write ({@linkcode putLocal}'s `.<name>.tmp-<hex>`)
 * under the folder `root`, recursively, and the folders that held nothing else (a checkpoint
 * folder whose first file was being written). For a folder no other process writes (one that is
 * locked): a live writer's temporary file would go too.
 * @returns the paths removed
 */
export async function removeTemporariesUnder(root: string): Promise<string[]> {
  const removed: string[] = [];
  /** Whether `dir` is left empty, and whether a temporary file was removed under it. */
  const walk = async (dir: string): Promise<{ empty: boolean; cleared: boolean }> => {
    let empty = true, cleared = false;
    for await (const e of Deno.readDir(dir)) {
      const path = join(dir, e.name);
      if (e.isDirectory) {
        const sub = await walk(path);
        cleared ||= sub.cleared;
        // Only a folder emptied by this removal goes, never one that was empty already.
        if (sub.empty && sub.cleared) {
          await Deno.remove(path).then(() => removed.push(path), () => (empty = false));
        } else empty = false;
      } else if (e.isFile && TEMP_NAME.test(e.name)) {
        await Deno.remove(path);
        removed.push(path);
        cleared = true;
      } else empty = false;
    }
    return { empty, cleared };
  };
  try {
    await walk(root);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return removed;
}

/**
 * Deletes a file; a missing file is not an error (as on S3), a folder is. The file's own folder
 * goes with its last file, as an S3 prefix does (so pruned checkpoints leave no empty folders);
 * folders above it are left alone.
 */
export async function deleteLocal(uri: string, path: string): Promise<void> {
  try {
    const st = await Deno.lstat(path);
    if (st.isDirectory) {
      throw new Error(`Cannot delete "${uri}": it is a folder, not a file`);
    }
    await Deno.remove(path);
    // Fails, harmlessly, while the folder holds anything else.
    await Deno.remove(dirname(path)).catch(() => {});
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return;
    if (e instanceof Error && e.message.startsWith("Cannot delete")) throw e;
    fail("delete", uri, e);
  }
}

/**
 * Lists every file under a folder, recursively, with keys relative to it. A missing folder lists
 * as empty (as a missing S3 prefix does); temporary files of unfinished writes are skipped;
 * symbolic links are followed, each real folder visited once.
 */
export async function listLocal(prefixUri: string, root: string): Promise<ObjectInfo[]> {
  let rootStat: Deno.FileInfo;
  try {
    rootStat = await Deno.stat(root);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return [];
    fail("list", prefixUri, e);
  }
  if (!rootStat.isDirectory) {
    throw new TypeError(`Cannot list "${prefixUri}": it is a file, not a folder`);
  }
  const out: ObjectInfo[] = [];
  const seen = new Set<string>();
  const walk = async (dir: string, rel: string): Promise<void> => {
    const real = await Deno.realPath(dir);
    if (seen.has(real)) return;
    seen.add(real);
    for await (const entry of Deno.readDir(dir)) {
      const path = join(dir, entry.name);
      const key = rel === "" ? entry.name : `${rel}/${entry.name}`;
      let st: Deno.FileInfo;
      try {
        st = await Deno.stat(path); // follows symbolic links
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) continue; // a dangling link, or deleted meanwhile
        throw e;
      }
      if (st.isDirectory) await walk(path, key);
      else if (st.isFile && !TEMP_NAME.test(entry.name)) {
        out.push({
          uri: joinUri(prefixUri, key),
          key,
          size: st.size,
          lastModified: st.mtime ?? undefined,
        });
      }
    }
  };
  try {
    await walk(root, "");
  } catch (e) {
    fail("list", prefixUri, e);
  }
  return out.sort(byKey);
}
