/**
 * Compiling `kernels.c` on first use into a cached shared library.
 *
 * Why at run time rather than shipped: the library is built for the CPU it runs on
 * (`-march=native`), needs only gcc (Debian's `gcc`, which `deno task setup` installs), and stays
 * out of the repository. The file name carries a hash of the source, the flags and the CPU, so an
 * edited source, other flags or a cache copied to another machine get a fresh build, never a stale
 * or illegal-instruction one. Concurrent processes (parallel test files) each compile to a
 * temporary name and rename it into place, so none ever loads a half-written file.
 * @module
 */
import { createHash } from "node:crypto";
import { envVar } from "../env.ts";

/**
 * The flags gcc is given. `-z nodelete` keeps the library and libgomp mapped after Deno closes
 * them (at exit, or when a test worker ends): unmapping libgomp under its parked OpenMP threads
 * crashes the process (measured: exit status 139 without it).
 */
export const NATIVE_CFLAGS: readonly string[] = Object.freeze([
  "-O3",
  "-march=native",
  "-fopenmp",
  "-fPIC",
  "-shared",
  "-std=gnu11",
  "-Wl,-z,nodelete",
]);

/**
 * Returns the path of the compiled kernel library, building it with gcc when the cache has none
 * for this source, these flags and this CPU.
 *
 * The cache directory is `REVUNET_CACHE_DIR` when set, else the repository's (gitignored)
 * `.cache/native/`, else `$TMPDIR/revunet-native/` when the repository is not writable.
 *
 * @returns The absolute path of the `.so` file.
 * @throws {Error} When the source cannot be read, no cache directory is writable, gcc is missing,
 *   or the build fails; the message names which, with gcc's first error lines.
 */
export function buildKernelLibrary(): string {
  const sourceUrl = new URL("./kernels.c", import.meta.url);
  if (sourceUrl.protocol !== "file:") {
    throw new Error(`Native kernels: the C source must be a local file, found ${sourceUrl.href}`);
  }
  const sourcePath = decodeURIComponent(sourceUrl.pathname);
  let source: string;
  try {
    source = Deno.readTextFileSync(sourcePath);
  } catch (e) {
    throw new Error(`Native kernels: cannot read the C source "${sourcePath}"`, { cause: e });
  }
  const key = createHash("sha256")
    .update(source).update("\0").update(NATIVE_CFLAGS.join(" ")).update("\0").update(cpuIdentity())
    .digest("hex").slice(0, 16);
  const name = `kernels-${key}.so`;
  const dirs = cacheDirectories();
  for (const dir of dirs) {
    const path = `${dir}/${name}`;
    if (isFile(path)) return path;
  }
  const failures: string[] = [];
  for (const dir of dirs) {
    try {
      Deno.mkdirSync(dir, { recursive: true });
    } catch (e) {
      failures.push(`${dir}: ${messageOf(e)}`);
      continue;
    }
    const path = `${dir}/${name}`;
    const tmp = `${path}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    try {
      Deno.writeFileSync(tmp, new Uint8Array()); // is the directory writable?
    } catch (e) {
      failures.push(`${dir}: ${messageOf(e)}`);
      continue;
    }
    compile(sourcePath, tmp, path);
    return path;
  }
  throw new Error(`Native kernels: no writable cache directory (${failures.join("; ")})`);
}

/** Runs gcc into the temporary name `tmp` beside `path`, then renames it into place. */
function compile(sourcePath: string, tmp: string, path: string): void {
  let out: Deno.CommandOutput;
  try {
    out = new Deno.Command("gcc", {
      args: [...NATIVE_CFLAGS, "-o", tmp, sourcePath, "-lm"],
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
  } catch (e) {
    removeQuietly(tmp);
    if (e instanceof Deno.errors.NotFound) {
      throw new Error("Native kernels: gcc not found (Debian package gcc; `deno task setup`)");
    }
    throw new Error(`Native kernels: cannot run gcc: ${messageOf(e)}`, { cause: e });
  }
  if (!out.success) {
    removeQuietly(tmp);
    const errors = new TextDecoder().decode(out.stderr).trim().split("\n").slice(0, 4).join(" | ");
    throw new Error(
      `Native kernels: gcc failed on "${sourcePath}" (status ${out.code}): ${errors}`,
    );
  }
  try {
    Deno.renameSync(tmp, path);
  } catch (e) {
    removeQuietly(tmp);
    throw new Error(`Native kernels: cannot move the built library to "${path}"`, { cause: e });
  }
}

/** Candidate cache directories, most preferred first. */
function cacheDirectories(): string[] {
  const dirs: string[] = [];
  const fromEnv = envOr("REVUNET_CACHE_DIR", "");
  if (fromEnv) dirs.push(`${fromEnv.replace(/\/+$/, "")}/native`);
  const repo = new URL("../../.cache/native", import.meta.url);
  if (repo.protocol === "file:") dirs.push(decodeURIComponent(repo.pathname));
  dirs.push(`${envOr("TMPDIR", "/tmp").replace(/\/+$/, "")}/revunet-native`);
  return dirs;
}

/**
 * What `-march=native` depends on: the CPU's model and feature flags (Linux), so a cached library
 * is never loaded on a CPU that lacks an instruction it uses.
 */
function cpuIdentity(): string {
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    const line = (field: string) => info.match(new RegExp(`^${field}\\s*:(.*)$`, "m"))?.[1] ?? "";
    return `${line("model name")}|${line("flags")}`;
  } catch {
    return `${Deno.build.os}-${Deno.build.arch}`;
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function removeQuietly(path: string): void {
  try {
    Deno.removeSync(path);
  } catch {
    // Nothing was written, or it is already gone.
  }
}

function envOr(name: string, fallback: string): string {
  return envVar(name) ?? fallback;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
