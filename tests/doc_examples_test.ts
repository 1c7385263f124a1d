/**
 * The `@example` blocks of pipeline/ and model/ are tests: `deno task test` runs them
 * (`deno test --doc`), and none is marked `ignore`, so an example that stops compiling or running
 * fails the suite.
 * @module
 */
import { assert, assertEquals } from "@std/assert";
import { join } from "node:path";

const ROOT = join(import.meta.dirname!, "..");
/** Blocks allowed to stay marked `ignore` (none now), each with why. */
const KNOWN_IGNORED: Record<string, string> = {};

async function* sources(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(join(ROOT, dir))) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) yield* sources(path);
    else if (e.name.endsWith(".ts")) yield path;
  }
}

Deno.test("deno task test runs the doc examples of pipeline/, model/ and tasks/ with the tests", async () => {
  const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
  const test: string = config.tasks.test;
  const run = test.split("&&").map((s) => s.trim()).find((s) => s.startsWith("deno test"));
  assert(run, `deno.json tasks.test runs no deno test: ${test}`);
  const words = run.split(/\s+/);
  for (
    const w of ["--doc", "--junit-path=.tmp/junit.xml", "tests/", "pipeline/", "model/", "tasks/"]
  ) {
    assert(words.includes(w), `deno.json tasks.test lacks ${w}: ${run}`);
  }
});

Deno.test("no code block in a doc comment of pipeline/, model/ or tasks/ is marked ignore", async () => {
  const ignored: string[] = [];
  for (const dir of ["pipeline", "model", "tasks"]) {
    for await (const path of sources(dir)) {
      const lines = (await Deno.readTextFile(join(ROOT, path))).split("\n");
      lines.forEach((line, i) => {
        if (/^\s*\*\s*```(ts|typescript|js)\b.*\bignore\b/.test(line) && !(path in KNOWN_IGNORED)) {
          ignored.push(`${path}:${i + 1}`);
        }
      });
    }
  }
  assertEquals(ignored, [], "examples that deno test --doc skips");
});
