/**
 * The README's Layout, checked on the source: the imports go one way (main → tasks → pipeline →
 * model), only pipeline/training and pipeline/segmentation import model/, a pipeline group enters
 * another only through its mod.ts, no task imports another, and nothing under pipeline/ or model/
 * prints, exits or throws the command line's UsageError.
 * @module
 */
import { assert, assertEquals } from "@std/assert";

const ROOT = new URL("../", import.meta.url);

/** The .ts files under `dir` (relative to the repository root), sorted. */
async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(new URL(dir + "/", ROOT))) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) out.push(...await sources(path));
    else if (entry.name.endsWith(".ts")) out.push(path);
  }
  return out.sort();
}

/** `path` with `.` and `..` segments resolved. */
function normalize(path: string): string {
  const parts: string[] = [];
  for (const part of path.split("/")) {
    if (part === "..") parts.pop();
    else if (part !== "." && part !== "") parts.push(part);
  }
  return parts.join("/");
}

/** The repository paths a file's static, dynamic and worker imports of relative modules name. */
function relativeImports(file: string, text: string): string[] {
  const dir = file.split("/").slice(0, -1).join("/");
  const specifier =
    /(?:\bfrom\s+|\bimport\s*\(\s*|^import\s+|new URL\(\s*)"(\.{1,2}\/[^"]+\.ts)"/gm;
  return [...text.matchAll(specifier)].map((m) => normalize(`${dir}/${m[1]}`));
}

/**
 * The group a file belongs to: `pipeline/<folder>` (or a single file directly under pipeline/,
 * such as labels.ts), else its top-level folder or file.
 */
function group(path: string): string {
  const parts = path.split("/");
  return parts[0] === "pipeline" ? `pipeline/${parts[1]}` : parts[0];
}

/** Every relative import of main.ts, tasks/, pipeline/ and model/, as [importer, imported]. */
async function importEdges(): Promise<[string, string][]> {
  const files = ["main.ts", ...await sources("tasks"), ...await sources("pipeline")];
  files.push(...await sources("model"));
  const edges: [string, string][] = [];
  for (const file of files) {
    const text = await Deno.readTextFile(new URL(file, ROOT));
    for (const target of relativeImports(file, text)) edges.push([file, target]);
  }
  return edges;
}

Deno.test("layout: the import scan reads the forms the code uses", () => {
  const text = [
    `import { a } from "../../model/mod.ts";`,
    `import type { B } from "./b.ts";`,
    `export { c } from "../cases/mod.ts";`,
    `const w = new Worker(new URL("./serve_worker.ts", import.meta.url));`,
    `const m = await import("../report/mod.ts");`,
    `import "./side_effect.ts";`,
    `import { d } from "npm:left-out";`,
  ].join("\n");
  assertEquals(relativeImports("pipeline/segmentation/x.ts", text), [
    "model/mod.ts",
    "pipeline/segmentation/b.ts",
    "pipeline/cases/mod.ts",
    "pipeline/segmentation/serve_worker.ts",
    "pipeline/report/mod.ts",
    "pipeline/segmentation/side_effect.ts",
  ]);
  assertEquals(group("pipeline/labels.ts"), "pipeline/labels.ts");
  assertEquals(group("pipeline/training/bench/speed.ts"), "pipeline/training");
});

Deno.test("layout: imports go main → tasks → pipeline → model, through each group's mod.ts", async () => {
  const edges = await importEdges();
  assert(edges.length > 200, `only ${edges.length} imports found: the scan is broken`);
  const problems: string[] = [];
  for (const [from, to] of edges) {
    const [fromTop, toTop] = [from.split("/")[0], to.split("/")[0]];
    const say = (why: string) => problems.push(`${from} → ${to}: ${why}`);
    if (!(await Deno.stat(new URL(to, ROOT)).then(() => true, () => false))) say("no such file");
    if (fromTop === "model" && toTop !== "model") say("model/ imports only model/");
    if (fromTop === "pipeline" && (toTop === "tasks" || to === "main.ts")) say("upward");
    if (fromTop === "tasks" && to === "main.ts") say("upward");
    if (fromTop === "tasks" && toTop === "tasks") {
      const shared = ["tasks/_cli.ts", "tasks/_flags.ts"].includes(to);
      if (!shared && from !== "tasks/mod.ts") say("a task imports another task");
    }
    if (toTop === "model" && fromTop !== "model") {
      if (!/^pipeline\/(training|segmentation)\//.test(from)) {
        say("only pipeline/training and pipeline/segmentation import model/");
      }
    }
    if (toTop === "pipeline" && group(from) !== group(to)) {
      if (!to.endsWith("/mod.ts") && group(to) !== to) say(`bypasses ${group(to)}/mod.ts`);
    }
  }
  assertEquals(problems, []);
});

Deno.test("layout: pipeline/ and model/ do not print, exit or throw UsageError", async () => {
  const problems: string[] = [];
  const forbidden = /\bconsole\.(log|error|warn|info|debug)\(|\bDeno\.exit\(|\bUsageError\b/;
  for (const file of [...await sources("pipeline"), ...await sources("model")]) {
    const lines = (await Deno.readTextFile(new URL(file, ROOT))).split("\n");
    lines.forEach((line, i) => {
      const code = line.replace(/\/\/.*$/, "");
      if (/^\s*\*/.test(line) || !forbidden.test(code)) return;
      problems.push(`${file}:${i + 1}: ${line.trim()}`);
    });
  }
  assertEquals(problems, []);
});
