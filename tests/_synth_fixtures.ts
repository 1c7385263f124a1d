/**
 * Temporary folders and file trees for the tests of generated datasets (tests/synth/ and
 * tests/tasks/synth_test.ts).
 * @module
 */
import { join } from "node:path";

/** A temporary folder removed when disposed: `await using tmp = await tempDir()`. */
export async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "synth-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Every file under `dir`, by path relative to it. */
export async function readTree(dir: string, prefix = ""): Promise<Map<string, Uint8Array>> {
  const files = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(join(dir, prefix))) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) { for (const [k, v] of await readTree(dir, rel)) files.set(k, v); }
    else files.set(rel, await Deno.readFile(join(dir, rel)));
  }
  return files;
}
