/**
 * tasks/synth.ts, the `synth` command: usage errors naming the flag, and main.ts synth writing a
 * JSON line per case (the generator itself: tests/synth/synth_test.ts).
 * @module
 */
import { join } from "node:path";
import { assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { findCases } from "../../pipeline/cases/cases.ts";
import { UsageError } from "../../tasks/_cli.ts";
import { synthCommand } from "../../tasks/synth.ts";
import { runMain } from "../_cli.ts";
import { readTree, tempDir } from "../_synth_fixtures.ts";

Deno.test("synth names the flag that is wrong, as a usage error", async () => {
  await using tmp = await tempDir();
  const out = join(tmp.path, "out");
  const cases: [string[], string][] = [
    [[], "--out"],
    [["--cases", "2"], "--out"],
    [["--out", out, "--naming", "brats2019"], "--naming"],
    [["--out", out, "--size", "64,64"], "--size"],
    [["--out", out, "--size", "64,0,48"], "--size"],
    [["--out", out, "--size", "64,-8,48"], "--size"],
    [["--out", out, "--size", "64,16,48"], "--size"],
    [["--out", out, "--size", "64,x,48"], "--size"],
    [["--out", out, "--cases", "0"], "--cases"],
    [["--out", out, "--seed", "1.5"], "--seed"],
    [["--out", out, "--concurrency", "0"], "--concurrency"],
    [["--out", out, "--colour", "red"], "colour"],
  ];
  for (const [args, flag] of cases) {
    const e = await assertRejects(() => synthCommand.run(args), UsageError);
    assertStringIncludes(e.message, flag, `synth ${args.join(" ")}`);
  }
  assertEquals(await readTree(tmp.path), new Map());
});

Deno.test("main.ts synth: exit 2 naming a bad flag, exit 0 with a JSON line per case", async () => {
  await using tmp = await tempDir();
  const bad = await runMain(["synth", "--out", tmp.path, "--naming", "brats2019"]);
  assertEquals(bad.code, 2, bad.stderr);
  assertStringIncludes(bad.stderr, "--naming must be one of brats2020, brats2021, brats2023");
  assertStringIncludes(bad.stderr, "deno task synth --help");

  const ok = await runMain([
    "synth",
    "--out",
    tmp.path,
    "--cases",
    "2",
    "--seed",
    "3",
    "--size",
    "40,44,32",
    "--naming",
    "brats2023",
    "--template",
    "procedural",
  ]);
  assertEquals(ok.code, 0, ok.stderr);
  const lines = ok.stdout.trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(lines.map((l) => l.id), ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]);
  assertEquals(
    lines[1].files.t2,
    join(tmp.path, "BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2w.nii.gz"),
  );
  assertStringIncludes(ok.stderr, "wrote 2 cases (brats2023, 40×44×32, enhancing label 3");
  const { cases } = await findCases(tmp.path);
  assertEquals(cases.length, 2);
});
