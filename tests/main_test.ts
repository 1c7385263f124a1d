/**
 * main.ts as a user runs it: `deno run -A main.ts <command>` in a subprocess, checked by its stdout,
 * stderr and exit code (0 ok, 1 failure, 2 usage). `inspect` is checked against nibabel.
 * @module
 */
import { join } from "node:path";
import { assert, assertAlmostEquals, assertEquals, assertStringIncludes } from "@std/assert";
import { createNiftiHeader, encodeNifti } from "../pipeline/nifti/mod.ts";
import { putObject } from "../pipeline/storage/objects.ts";
import { HAS_NIBABEL, PYTHON } from "./_nifti_fixtures.ts";
import { startS3rver } from "./_s3rver.ts";
import { ROOT, type Run, runMain } from "./_cli.ts";
import { commands } from "../tasks/mod.ts";

const CH2BET = "/usr/share/mricron/templates/ch2bet.nii.gz";
const HAS_CH2BET = (() => {
  try {
    return Deno.statSync(CH2BET).isFile;
  } catch {
    return false;
  }
})();

/**
 * Runs several command lines one after another: concurrent runs would only queue on Deno's
 * node_modules lock.
 */
async function runEach(argsList: string[][], env: Record<string, string> = {}): Promise<Run[]> {
  const runs: Run[] = [];
  for (const args of argsList) runs.push(await runMain(args, env));
  return runs;
}

/** Says what a run did, for assertion messages. */
function show(run: Run): string {
  return `exit ${run.code}\n--- stdout\n${run.stdout}--- stderr\n${run.stderr}`;
}

/** The single JSON object a run printed (and nothing else on stdout). */
function onlyJson(run: Run): Record<string, unknown> {
  const lines = run.stdout.split("\n").filter((l) => l !== "");
  assertEquals(lines.length, 1, show(run));
  const value = JSON.parse(lines[0]);
  assert(value !== null && typeof value === "object" && !Array.isArray(value), show(run));
  return value;
}

/** A temporary folder removed when disposed: `await using tmp = await tempDir()`. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "cli-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

const LPS = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]];

/** An int16 volume with values -100 … n-101, x fastest. */
function int16Volume(dims: number[], affine: number[][] = LPS, name = "x.nii.gz"): Uint8Array {
  const n = dims.reduce((a, b) => a * b, 1);
  const data = Int16Array.from({ length: n }, (_, i) => i - 100);
  return encodeNifti(data, "int16", createNiftiHeader(dims, affine, "int16"), {
    name,
    gzip: name.endsWith(".gz"),
  });
}

/** Writes a BraTS 2020-style case folder with tiny volumes into `root`. */
async function writeCase(root: string, id: string, parts: string[], dims = [6, 5, 4]) {
  await Deno.mkdir(join(root, id), { recursive: true });
  for (const p of parts) {
    const name = `${id}_${p}.nii.gz`;
    await Deno.writeFile(join(root, id, name), int16Volume(dims, LPS, name));
  }
}

// nibabel's view of a file, as `inspect` prints it.
const NIBABEL_SUMMARY = String.raw`
import json, sys
import numpy as np
import nibabel as nib
out = []
for path in sys.argv[1:]:
    img = nib.load(path)
    data = img.get_fdata(dtype=np.float64)
    out.append(dict(dims=[int(d) for d in img.shape],
                    pixdim=[float(z) for z in img.header.get_zooms()],
                    datatype=img.get_data_dtype().name, affine=img.affine.tolist(),
                    min=float(data.min()), max=float(data.max()), mean=float(data.mean())))
print(json.dumps(out))
`;

// A scaled int16 volume on a rotated qform-only grid, written by nibabel rather than by us.
const NIBABEL_WRITE = String.raw`
import sys
import numpy as np
import nibabel as nib
data = (np.arange(9 * 7 * 5, dtype=np.int16).reshape((9, 7, 5), order='F') * 13 % 701 - 300)
t = np.radians(20)
affine = np.array([[np.cos(t) * 1.2, -np.sin(t) * 0.9, 0, -40.5],
                   [np.sin(t) * 1.2, np.cos(t) * 0.9, 0, 22.0],
                   [0, 0, 2.5, -7.25], [0, 0, 0, 1]])
img = nib.Nifti1Image(data.astype(np.int16), None)
img.set_qform(affine, code=1)
img.set_sform(None, code=0)
img.header.set_data_dtype(np.int16)
img.header.set_slope_inter(0.5, 10)
nib.save(img, sys.argv[1])
`;

async function python(script: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(PYTHON, {
    args: ["-c", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  if (!out.success) throw new Error(`nibabel script failed:\n${dec.decode(out.stderr)}`);
  return dec.decode(out.stdout);
}

// ---------------------------------------------------------------------------------------------
// inspect

Deno.test({
  name: "inspect prints one JSON object that agrees with nibabel (ch2bet, generated int16 files)",
  ignore: !HAS_NIBABEL,
  async fn() {
    await using tmp = await tempDir();
    const ours = join(tmp.path, "ours_t1.nii.gz");
    const rotated = [[0, -1.5, 0, 30], [2, 0, 0, -12], [0, 0, 0.75, 5.5], [0, 0, 0, 1]];
    await Deno.writeFile(ours, int16Volume([8, 6, 3], rotated, ours));
    const theirs = join(tmp.path, "nibabel_flair.nii");
    await python(NIBABEL_WRITE, [theirs]);
    const paths = [ours, theirs, ...(HAS_CH2BET ? [CH2BET] : [])];

    const [reference, runs] = await Promise.all([
      python(NIBABEL_SUMMARY, paths).then((s) => JSON.parse(s)),
      runEach(paths.map((p) => ["inspect", p])),
    ]);
    for (const [i, run] of runs.entries()) {
      assertEquals(run.code, 0, show(run));
      const got = onlyJson(run);
      const want = reference[i];
      const where = `${paths[i]}\n${show(run)}`;
      assertEquals(
        Object.keys(got).sort(),
        ["affine", "datatype", "dims", "max", "mean", "min", "pixdim"],
        where,
      );
      assertEquals(got.dims, want.dims, where);
      assertEquals(got.datatype, want.datatype, where);
      assertEquals(got.pixdim, want.pixdim, where);
      const affine = got.affine as number[][];
      assertEquals(affine.length, 4, where);
      for (let r = 0; r < 4; r++) {
        for (let c = 0; c < 4; c++) {
          assertAlmostEquals(affine[r][c], want.affine[r][c], 1e-5, where);
        }
      }
      assertEquals(got.min, want.min, where);
      assertEquals(got.max, want.max, where);
      assertAlmostEquals(got.mean as number, want.mean, 1e-9 * Math.max(1, Math.abs(want.mean)));
    }
  },
});

Deno.test("inspect exits 1 on a broken or missing file, naming it on stderr", async () => {
  await using tmp = await tempDir();
  const broken = join(tmp.path, "BraTS20_Training_001_t1.nii.gz");
  await Deno.writeFile(broken, new TextEncoder().encode("<html>Access denied</html>\n"));
  const cut = join(tmp.path, "cut_seg.nii.gz");
  await Deno.writeFile(cut, int16Volume([6, 5, 4]).subarray(0, 40));
  const missing = join(tmp.path, "nowhere_t2.nii.gz");
  const runs = await runEach([broken, cut, missing].map((p) => ["inspect", p]));
  for (const [i, path] of [broken, cut, missing].entries()) {
    const run = runs[i];
    assertEquals(run.code, 1, show(run));
    assertEquals(run.stdout, "", show(run));
    assert(run.stderr.startsWith("error: "), show(run));
    assertStringIncludes(run.stderr, path, show(run));
    assert(!run.stderr.includes("    at "), `no stack trace expected\n${show(run)}`);
  }
});

Deno.test("inspect exits 2 without a path, with two, or with an unknown flag", async () => {
  const runs = await runEach([
    ["inspect"],
    ["inspect", "a.nii", "b.nii"],
    ["inspect", "--frobnicate", "a.nii"],
    ["inspect", "--non-finite", "maybe", "a.nii"],
  ]);
  for (const run of runs) {
    assertEquals(run.code, 2, show(run));
    assertEquals(run.stdout, "", show(run));
    assert(
      run.stderr.startsWith("error: inspect") || run.stderr.startsWith("error: --"),
      show(run),
    );
    assertStringIncludes(run.stderr, "--help", show(run));
  }
  assertStringIncludes(runs[0].stderr, "got 0", show(runs[0]));
  assertStringIncludes(runs[2].stderr, "frobnicate", show(runs[2]));
});

// ---------------------------------------------------------------------------------------------
// cases

Deno.test("cases prints one JSON line per case and exits 0 for a good dataset", async () => {
  await using tmp = await tempDir();
  await writeCase(tmp.path, "BraTS20_Training_001", ["flair", "t1", "t1ce", "t2", "seg"]);
  await writeCase(tmp.path, "BraTS20_Training_002", ["flair", "t1", "t1ce", "t2"]);
  await Deno.writeTextFile(join(tmp.path, "name_mapping.csv"), "id\n");
  const [run, unchecked] = await runEach([
    ["cases", tmp.path],
    ["cases", "--no-check", "--concurrency", "2", tmp.path],
  ]);
  assertEquals(run.code, 0, show(run));
  assertEquals(run.stderr, "", show(run));
  const lines = run.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
  assertEquals(lines.map((c) => [c.id, c.naming, c.enhancingLabel, c.shape, c.spacing]), [
    ["BraTS20_Training_001", "brats2021", 4, [6, 5, 4], [1, 1, 1]],
    ["BraTS20_Training_002", "brats2021", 4, [6, 5, 4], [1, 1, 1]],
  ]);
  assertEquals(
    lines[0].images.t1ce,
    join(tmp.path, "BraTS20_Training_001", "BraTS20_Training_001_t1ce.nii.gz"),
  );
  assertEquals(
    lines[0].seg,
    join(tmp.path, "BraTS20_Training_001", "BraTS20_Training_001_seg.nii.gz"),
  );
  assertEquals("seg" in lines[1], false);

  assertEquals(unchecked.code, 0, show(unchecked));
  const quick = unchecked.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
  assertEquals(quick.map((c) => [c.id, c.shape]), [
    ["BraTS20_Training_001", undefined],
    ["BraTS20_Training_002", undefined],
  ]);
});

Deno.test("cases lists the good cases, names each broken one on stderr and exits 1", async () => {
  await using tmp = await tempDir();
  await writeCase(tmp.path, "BraTS20_Training_001", ["flair", "t1", "t1ce", "t2", "seg"]);
  await writeCase(tmp.path, "BraTS20_Training_002", ["flair", "t1", "t1ce", "seg"]); // no t2
  await writeCase(tmp.path, "BraTS20_Training_003", ["flair", "t1", "t1ce", "t2"]);
  const broken = join(tmp.path, "BraTS20_Training_003", "BraTS20_Training_003_t1ce.nii.gz");
  await Deno.writeFile(broken, new Uint8Array(64));
  await writeCase(tmp.path, "BraTS20_Training_004", ["flair", "t1", "t1ce", "t2", "seg"]);
  const [run, usage, empty] = await runEach([
    ["cases", tmp.path],
    ["cases"],
    ["cases", join(tmp.path, "nothing-here")],
  ]);
  assertEquals(run.code, 1, show(run));
  const ids = run.stdout.trimEnd().split("\n").map((l) => JSON.parse(l).id);
  assertEquals(ids, ["BraTS20_Training_001", "BraTS20_Training_004"]);
  const errors = run.stderr.trimEnd().split("\n").filter((l) => l.startsWith("error: "));
  assertEquals(errors.length, 3, show(run));
  assertStringIncludes(errors[0], "BraTS20_Training_002", show(run));
  assertStringIncludes(errors[0], "missing modality t2", show(run));
  assertStringIncludes(errors[1], broken, show(run));
  assertStringIncludes(errors[2], "2 of 4 cases", show(run));

  assertEquals(usage.code, 2, show(usage));
  assertStringIncludes(usage.stderr, "expected one dataset URI", show(usage));

  // A folder that is not there is an error saying so.
  assertEquals(empty.code, 1, show(empty));
  assertEquals(empty.stdout, "", show(empty));
  assertStringIncludes(empty.stderr, 'nothing-here": the folder does not exist', show(empty));
});

Deno.test("cases, train, segment, evaluate: a missing folder is said to be missing; one without cases lists the names expected", async () => {
  await using tmp = await tempDir();
  const missing = join(tmp.path, "no-such-folder");
  const other = join(tmp.path, "other");
  await Deno.mkdir(join(other, "sub"), { recursive: true });
  await Deno.writeTextFile(join(other, "notes.txt"), "x");
  await Deno.writeFile(join(other, "sub", "brain.nii.gz"), int16Volume([4, 4, 4]));
  const empty = join(tmp.path, "empty");
  await Deno.mkdir(empty);
  const model = join(tmp.path, "model.safetensors"); // never read: the dataset fails first
  const commands = (data: string) => [
    ["cases", data],
    ["train", "--data", data, "--out", join(tmp.path, "run"), "--quiet"],
    ["segment", "--model", model, "--input", data, "--out", join(tmp.path, "seg"), "--quiet"],
    ["evaluate", "--pred", join(tmp.path, "seg"), "--truth", data],
  ];
  const expected = ["<id>_{flair,t1,t1ce,t2,seg}.nii[.gz]", "BraTS-GLI-00000-000-t2f.nii.gz"];
  await Deno.mkdir(join(tmp.path, "seg"));
  await Deno.writeFile(join(tmp.path, "seg", "BraTS2021_00000.nii.gz"), int16Volume([4, 4, 4]));
  const [runsMissing, runsOther, runsEmpty] = [
    await runEach(commands(missing)),
    await runEach(commands(other)),
    await runEach(commands(empty)),
  ];
  for (const run of runsMissing) {
    assertEquals(run.code, 1, show(run));
    assertStringIncludes(run.stderr, `"${missing}": the folder does not exist`, show(run));
  }
  for (const run of [...runsOther.slice(0, 3), ...runsEmpty.slice(0, 3)]) {
    assertEquals(run.code, 1, show(run));
    assertStringIncludes(run.stderr, "No BraTS cases under", show(run));
    for (const e of expected) assertStringIncludes(run.stderr, e, show(run));
  }
  for (const run of runsOther.slice(0, 3)) {
    assertStringIncludes(run.stderr, "it holds 2 files, none named as a case file", show(run));
    assertStringIncludes(run.stderr, '"notes.txt"', show(run));
  }
  for (const run of runsEmpty) {
    assertEquals(run.code, 1, show(run));
    assertStringIncludes(run.stderr, "the folder is empty", show(run));
  }
  // evaluate: a folder of other files gets its list of what a reference is named.
  assertStringIncludes(runsOther[3].stderr, "No reference segmentations under", show(runsOther[3]));
  assertEquals(await Deno.stat(join(tmp.path, "run")).catch(() => undefined), undefined);
});

// ---------------------------------------------------------------------------------------------
// S3

Deno.test("inspect and cases read s3:// URIs from s3rver", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const env: Record<string, string> = {};
  for (const name of Object.keys(Deno.env.toObject())) {
    if (name.startsWith("AWS_")) env[name] = Deno.env.get(name)!;
  }
  assertEquals(env.AWS_ENDPOINT_URL_S3, s3.endpoint);
  const id = "BraTS-GLI-00000-000";
  const aniso = [[1, 0, 0, -3], [0, 1.5, 0, 4], [0, 0, 2, -5], [0, 0, 0, 1]];
  await Promise.all(["t2f", "t1n", "t1c", "t2w", "seg"].map((s) => {
    const name = `${id}-${s}.nii.gz`;
    return putObject(`s3://brats/2023/${id}/${name}`, int16Volume([6, 5, 4], aniso, name));
  }));
  const [inspect, cases, missing, noPrefix] = await runEach([
    ["inspect", `s3://brats/2023/${id}/${id}-t1c.nii.gz`],
    ["cases", "s3://brats/2023/"],
    ["inspect", "s3://brats/2023/none.nii.gz"],
    ["cases", "s3://brats/2024/"],
  ], env);
  assertEquals(noPrefix.code, 1, show(noPrefix));
  assertStringIncludes(
    noPrefix.stderr,
    '"s3://brats/2024/": the folder does not exist',
    show(noPrefix),
  );

  assertEquals(inspect.code, 0, show(inspect));
  assertEquals(onlyJson(inspect), {
    dims: [6, 5, 4],
    pixdim: [1, 1.5, 2],
    datatype: "int16",
    affine: aniso,
    min: -100,
    max: 119 - 100,
    mean: 59.5 - 100,
  });

  assertEquals(cases.code, 0, show(cases));
  assertEquals(JSON.parse(cases.stdout), {
    id,
    naming: "brats2023",
    enhancingLabel: 3,
    images: {
      flair: `s3://brats/2023/${id}/${id}-t2f.nii.gz`,
      t1: `s3://brats/2023/${id}/${id}-t1n.nii.gz`,
      t1ce: `s3://brats/2023/${id}/${id}-t1c.nii.gz`,
      t2: `s3://brats/2023/${id}/${id}-t2w.nii.gz`,
    },
    seg: `s3://brats/2023/${id}/${id}-seg.nii.gz`,
    shape: [6, 5, 4],
    spacing: [1, 1.5, 2],
  });

  assertEquals(missing.code, 1, show(missing));
  assertStringIncludes(missing.stderr, "s3://brats/2023/none.nii.gz", show(missing));
});

// ---------------------------------------------------------------------------------------------
// main.ts

Deno.test("main.ts exits 2 without a command or with an unknown one, 0 for each --help", async () => {
  const [none, unknown, help] = await runEach([[], ["segmentate"], ["--help"]]);
  assertEquals(none.code, 2, show(none));
  assertStringIncludes(none.stdout + none.stderr, "Usage:", show(none));
  assertEquals(unknown.code, 2, show(unknown));
  assertStringIncludes(unknown.stderr, 'error: unknown command "segmentate"', show(unknown));
  assertEquals(help.code, 0, show(help));

  // The commands main.ts lists: "  name  summary" lines after "Commands:".
  const listed = help.stdout.split("Commands:\n")[1]?.split("\n\n")[0] ?? "";
  const names = listed.split("\n").map((l) => l.trim().split(/\s+/)[0]).filter((n) => n);
  for (const expected of ["cases", "inspect"]) assert(names.includes(expected), show(help));
  const helps = await runEach([...names.map((n) => [n, "--help"]), ["cases", "-h"]]);
  for (const run of helps) {
    assertEquals(run.code, 0, show(run));
    assertStringIncludes(run.stdout, "Usage:", show(run));
    assertEquals(run.stderr, "", show(run));
  }
});

Deno.test("demo runs the embedded default end to end: synth, train, segment, evaluate, report", async () => {
  const out = await Deno.makeTempDir();
  try {
    const args = ["demo", "--out", out, "--cases", "3", "--size", "32,32,32", "--epochs", "1"];
    const r = await runMain([...args, "--steps-per-epoch", "2", "--crop", "16"]);
    assertEquals(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    assertEquals(summary.cases.length, 3);
    assertEquals(summary.train.steps, 2);
    assertEquals(summary.model, `${out}/run/best/model.safetensors`);
    assertEquals(summary.held_out.length, 2);
    assertEquals(summary.segmentations.length, 2);
    for (const region of ["WT", "TC", "ET"]) {
      const d = summary.train.validation_dice[region];
      assert(d >= 0 && d <= 1, `${region} dice ${d}`);
      // Validation scored what segment wrote with the same weights: evaluate agrees.
      assertAlmostEquals(d, summary.evaluation.mean_dice[region], 1e-9, region);
    }
    assert((await Deno.stat(`${out}/run/metrics.jsonl`)).size > 0);
    assertEquals(summary.report, `${out}/report/index.html`);
    const html = await Deno.readTextFile(summary.report);
    for (const id of summary.held_out) assertStringIncludes(html, id);
    const metrics = JSON.parse(await Deno.readTextFile(`${out}/eval/metrics.json`));
    assertEquals(
      metrics.cases.map((c: { case: string }) => c.case).sort(),
      [...summary.held_out].sort(),
    );
    assert(metrics.summary.WT.dice.mean >= 0 && metrics.summary.WT.dice.mean <= 1);
    // A re-run replaces the demo's own output; a folder it did not write is refused.
    const again = await runMain([...args, "--steps-per-epoch", "1", "--crop", "16"]);
    assertEquals(again.code, 0, again.stderr);
    assertEquals(JSON.parse(again.stdout.trim().split("\n").at(-1)!).train.steps, 1);
    await Deno.writeTextFile(`${out}/mine.txt`, "x");
    await Deno.remove(`${out}/demo.json`);
    const refused = await runMain([...args, "--crop", "16"]);
    assertEquals(refused.code, 2, refused.stderr);
    assertStringIncludes(refused.stderr, "not written by demo");
    const bad = await runMain(["demo", "--crop", "12", "--out", out]);
    assertEquals(bad.code, 2);
    const badBackend = await runMain(["plan", "--budget", "1", "--backend", "cuda"]);
    assertEquals(badBackend.code, 2);
    assertStringIncludes(badBackend.stderr, "--backend must be one of");
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// Flags shared by several commands

Deno.test("--overlap: segment's and serve's help print the range their check applies", async () => {
  for (const command of ["segment", "serve"]) {
    const base = command === "segment"
      ? ["segment", "--model", "/nonexistent/m", "--input", "/nonexistent/in", "--out", "o"]
      : ["serve", "--model", "/nonexistent/m", "--out", "o", "--no-auth"];
    const [help] = await runEach([[command, "--help"]]);
    const line = help.stdout.split("\n").find((l) => l.trimStart().startsWith("--overlap"));
    const range = line?.match(/\[(\d+(?:\.\d+)?), (\d+(?:\.\d+)?)([\])])/);
    assert(range, `no --overlap range in ${command}'s help:\n${help.stdout}`);
    const [low, high, close] = [Number(range[1]), Number(range[2]), range[3]];
    const above = close === "]" ? String(high + 0.01) : String(high);
    const [highest, tooHigh, negative] = await runEach([
      [...base, "--overlap", close === "]" ? String(high) : String(high - 0.01)],
      [...base, "--overlap", above],
      [...base, `--overlap=${low - 0.1}`],
    ]);
    // The largest value the help allows gets past the flag check (to the missing model or input).
    assertEquals(highest.code, 1, show(highest));
    assert(!highest.stderr.includes("--overlap"), show(highest));
    for (const run of [tooHigh, negative]) {
      assertEquals(run.code, 2, show(run));
      assertStringIncludes(run.stderr, `--overlap must be a number in ${range[0]}`, show(run));
    }
  }
});

// ---------------------------------------------------------------------------------------------
// version

Deno.test("main.ts --version and version print the project's, Deno's and tfjs's versions and the auto backend", async () => {
  const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
  assert(/^\d+\.\d+\.\d+/.test(config.version), `deno.json version: ${config.version}`);
  const tfjsPin = String(config.imports["@tensorflow/tfjs"]).split("@").pop();
  const [flag, short, command, json] = await runEach([
    ["--version"],
    ["-V"],
    ["version"],
    ["version", "--json"],
  ]);
  for (const run of [flag, short, command]) {
    assertEquals(run.code, 0, show(run));
    const lines = run.stdout.trimEnd().split("\n");
    assertEquals(lines[0], `revunet-deno ${config.version}`, show(run));
    assert(lines[1].startsWith(`deno ${Deno.version.deno} (v8 `), show(run));
    assertEquals(lines[2], `tfjs ${tfjsPin}`, show(run));
    assert(
      /^backend \(--backend auto\): (tensorflow|webgpu|cpu) on .+ \(auto: /.test(lines[3]),
      show(run),
    );
  }
  assertEquals(json.code, 0, show(json));
  const info = onlyJson(json);
  assertEquals([info.revunet, info.deno, info.tfjs], [config.version, Deno.version.deno, tfjsPin]);
  const backend = info.backend as Record<string, string>;
  assert(["tensorflow", "webgpu", "cpu"].includes(backend.name), show(json));
  assertStringIncludes(backend.reason, "auto", show(json));
});

// ---------------------------------------------------------------------------------------------
// What a user installs

/** The JSON of `deno info --json main.ts`: the modules and npm packages of the main graph. */
async function mainGraph(): Promise<{
  modules: { specifier: string; kind?: string; npmPackage?: string }[];
  npmPackages: Record<string, unknown>;
}> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "main.ts"],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/**
 * The lockfile a clone gets: the committed one (HEAD) in a git checkout, since a `deno test` or
 * `deno check` of the tests run without the test task's `--lock=tests/deno.lock` writes s3rver
 * into the working tree's copy; else the working tree's.
 */
async function committedLock(): Promise<string> {
  try {
    const out = await new Deno.Command("git", {
      args: ["show", "HEAD:deno.lock"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "null",
    }).output();
    if (out.success) return new TextDecoder().decode(out.stdout);
  } catch { /* no git */ }
  return await Deno.readTextFile(join(ROOT, "deno.lock"));
}

Deno.test("the main module graph, import map and committed lockfile exclude s3rver (test-only)", async () => {
  const graph = await mainGraph();
  // The graph's own npm imports (npmPackages is the lockfile's whole snapshot instead).
  const roots = graph.modules.filter((m) => m.kind === "npm").map((m) => m.npmPackage!);
  assert(roots.some((p) => p.startsWith("@tensorflow/tfjs@")), roots.join(", "));
  assertEquals(roots.filter((p) => p.startsWith("s3rver@")), []);
  const local = graph.modules.map((m) => m.specifier).filter((s) => s.startsWith("file://"));
  assertEquals(local.filter((s) => s.includes("/tests/")), [], "main.ts imports nothing of tests/");
  const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
  assertEquals(
    Object.entries(config.imports).filter(([, v]) => String(v).includes("s3rver")),
    [],
    "s3rver is imported by full specifier in tests/_s3rver.ts, not mapped in deno.json",
  );
  const hasS3rver = (text: string) =>
    Object.keys(JSON.parse(text).npm ?? {}).some((k) => k.startsWith("s3rver@"));
  assert(
    !hasS3rver(await committedLock()),
    "the committed deno.lock lists s3rver: restore it without (git show of an earlier commit) and " +
      "run tests and `deno check` of test files with --lock=tests/deno.lock (deno task test does)",
  );
  if (hasS3rver(await Deno.readTextFile(join(ROOT, "deno.lock")))) {
    console.warn(
      "note: the working tree's deno.lock lists s3rver (a test run without " +
        "--lock=tests/deno.lock wrote it): `git checkout deno.lock` before committing",
    );
  }
});

Deno.test("a first run in a fresh checkout installs only the main graph's packages, no build-script warning", async () => {
  const graph = await mainGraph();
  await using tmp = await tempDir();
  const root = ROOT.endsWith("/") ? ROOT : ROOT + "/";
  for (const m of graph.modules) {
    if (!m.specifier.startsWith("file://")) continue;
    const path = decodeURIComponent(new URL(m.specifier).pathname);
    if (!path.startsWith(root)) continue;
    const to = join(tmp.path, path.slice(root.length));
    await Deno.mkdir(join(to, ".."), { recursive: true });
    await Deno.copyFile(path, to);
  }
  await Deno.writeTextFile(join(tmp.path, "deno.lock"), await committedLock());
  // As a clone's first `deno task <command>`, without -q so that every install line shows.
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "--help"],
    cwd: tmp.path,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, stderr);
  const lines = stderr.split("\n").filter((l) => l.trim() !== "");
  const installed = lines.filter((l) => l.startsWith("Initialize ")).map((l) => l.slice(11));
  assertEquals(lines.filter((l) => !l.startsWith("Initialize ")), [], "only Deno's install lines");
  // The committed lock's packages (keys carry peer suffixes, "@tensorflow/tfjs@4.22.0_seedrandom@
  // 3.0.5"; install lines do not).
  const lock = JSON.parse(await committedLock());
  const wanted = new Set(Object.keys(lock.npm).map((k) => /^@?[^@]+@[^_]+/.exec(k)![0]));
  assertEquals(installed.filter((p) => !wanted.has(p)), [], "packages outside the lock");
  assertEquals(installed.filter((p) => p.startsWith("s3rver@")), []);
  const dirs = [...Deno.readDirSync(join(tmp.path, "node_modules", ".deno"))].map((e) => e.name);
  assertEquals(dirs.filter((d) => d.startsWith("s3rver@")), []);
});

// ---------------------------------------------------------------------------------------------
// Help texts and messages

Deno.test("every command's help: lines of at most 100 columns, placeholders written <name>", async () => {
  const [main] = await runEach([["--help"]]);
  assertEquals(main.code, 0, show(main));
  const texts: [string, string][] = [
    ["main.ts --help", main.stdout],
    ...commands.map((c) => [c.name, c.help] as [string, string]),
  ];
  const problems: string[] = [];
  for (const [name, text] of texts) {
    for (const line of text.split("\n")) {
      if (line.length > 100) problems.push(`${name}: ${line.length} columns: ${line}`);
      // A flag followed by an upper-case metavariable (--model URI, --epochs N, --budget GiB).
      const bare = /--[a-z][a-z0-9-]* (?:[A-Z][A-Za-z]*|i\/n)(?=[\s\],|.;)]|$)/.exec(line);
      if (bare) problems.push(`${name}: placeholder not written <name>: "${bare[0]}" in: ${line}`);
    }
  }
  assertEquals(problems, []);
});

Deno.test("every error names its command once: usage errors and failures of each command", async () => {
  const runs = await runEach([
    ["train", "--data", "/nonexistent/data"],
    ["segment", "--model", "m", "--input", "i"],
    ["serve", "--out", "o", "--no-auth"],
    ["evaluate", "--pred", "/nonexistent/p", "--truth", "/nonexistent/t"],
    ["inspect", "/nonexistent/x.nii.gz"],
    ["cases"],
    ["plan"],
    ["synth", "--cases", "two", "--out", "o"],
    ["demo", "--crop", "12"],
    ["bench", "nothing"],
  ]);
  for (const run of runs) {
    assert(run.code === 1 || run.code === 2, show(run));
    const first = run.stderr.split("\n").find((l) => l.startsWith("error: "));
    const name = /^error: ([a-z]+): /.exec(first ?? "")?.[1];
    assert(name !== undefined, `no "error: <command>: " line\n${show(run)}`);
    assert(!first!.startsWith(`error: ${name}: ${name}:`), `prefix twice\n${show(run)}`);
  }
  assertEquals(
    runs.map((r) => /^error: ([a-z]+): /m.exec(r.stderr)![1]),
    ["train", "segment", "serve", "evaluate", "inspect", "cases", "plan", "synth", "demo", "bench"],
  );
  assertStringIncludes(runs[0].stderr, "error: train: --out is required", show(runs[0]));
});

Deno.test("negative numbers are values: --seed -1, --lr -1, --shard -1/3 get the flag's range error", async () => {
  const train = ["train", "--data", "/nonexistent/d", "--out", "/nonexistent/o"];
  const segment = ["segment", "--model", "m", "--input", "i", "--out", "o"];
  const runs = await runEach([
    [...train, "--seed", "-1"],
    [...train, "--lr", "-1"],
    [...train, "--lr", "-.5"],
    [...segment, "--shard", "-1/3"],
    [...segment, "--overlap", "-0.5"],
    ["synth", "--out", "o", "--cases", "-3"],
  ]);
  const expected = [
    'train: --seed must be an integer >= 0, got "-1"',
    'train: --lr must be a number >= 0, got "-1"',
    'train: --lr must be a number >= 0, got "-.5"',
    'segment: --shard must be "i/n"',
    'segment: --overlap must be a number in [0, 0.95], got "-0.5"',
    "synth: --cases",
  ];
  for (const [i, run] of runs.entries()) {
    assertEquals(run.code, 2, show(run));
    assertStringIncludes(run.stderr, `error: ${expected[i]}`, show(run));
    assert(!run.stderr.includes("ambiguous"), show(run));
  }
});

Deno.test("train refuses --crop 33 and oversized --config before loading a backend, with the limits", async () => {
  const train = ["train", "--data", "/nonexistent/d", "--out", "/nonexistent/o"];
  const [crop, wide, deep, huge, planWide] = await runEach([
    [...train, "--crop", "33"],
    [...train, "--config", '{"baseChannels":100000}'],
    [...train, "--config", '{"levels":100}'],
    [...train, "--config", '{"levels":9,"baseChannels":64}'],
    ["plan", "--budget", "1", "--config", '{"baseChannels":100000}'],
  ]);
  for (const run of [crop, wide, deep, huge, planWide]) {
    assertEquals(run.code, 2, show(run));
    assert(!run.stderr.includes("backend:"), `refused before the backend loads\n${show(run)}`);
    assert(!run.stderr.includes("allocation failed"), show(run));
  }
  assertStringIncludes(crop.stderr, "error: train: --crop 33 must be a multiple of 8", show(crop));
  assertStringIncludes(wide.stderr, "baseChannels must be at most 4096, found 100000", show(wide));
  assertStringIncludes(deep.stderr, "levels must be at most 10, found 100", show(deep));
  assertStringIncludes(huge.stderr, "parameters, more than the 4.29e+9 allowed", show(huge));
  assertStringIncludes(
    planWide.stderr,
    "error: plan: --config: Network configuration",
    show(planWide),
  );
});

// ---------------------------------------------------------------------------------------------
// README

Deno.test("README: relative links name files inside the repository; no pretrained weights is said", async () => {
  const readme = await Deno.readTextFile(join(ROOT, "README.md"));
  const root = ROOT.endsWith("/") ? ROOT : ROOT + "/";
  const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1])
    .filter((t) => !/^(https?:|mailto:|#)/.test(t));
  assert(links.length > 0, "README has relative links");
  for (const target of links) {
    const path = new URL(target.split("#")[0], `file://${root}`).pathname;
    assert(path.startsWith(root), `README links outside the repository: ${target}`);
    assert(await Deno.stat(path).then(() => true, () => false), `README links a missing ${target}`);
  }
  assertStringIncludes(readme, "No pretrained weights are published yet");
  assertStringIncludes(readme, "How long training takes");
});

// The README's inspect figures are of a case on the ch2bet brain (mricron-data), not the procedural head.
Deno.test({
  name: "README: the synth and inspect examples run and print what the README shows (needs ch2bet)",
  ignore: !HAS_CH2BET,
}, async () => {
  const readme = await Deno.readTextFile(join(ROOT, "README.md"));
  const lines = readme.split("\n");
  const synthLine = lines.find((l) => l.startsWith("deno task synth --out out/synth "));
  const at = lines.findIndex((l) => l.startsWith("deno task inspect out/synth/"));
  assert(synthLine && at >= 0, "README has a synth example and an inspect example on its output");
  const shown = JSON.parse(lines[at + 1].replace(/^# /, ""));
  await using tmp = await tempDir();
  const words = (l: string) => l.replace(/\s+#.*$/, "").split(/\s+/).slice(2);
  // Case k of a seed does not depend on --cases: one case stands for the README's twenty.
  const synthArgs = words(synthLine).map((w) => w.replace(/^out\/synth$/, tmp.path));
  synthArgs[synthArgs.indexOf("--cases") + 1] = "1";
  const inspectArgs = words(lines[at]).map((w) => w.replace(/^out\/synth\//, `${tmp.path}/`));
  const [synth, inspect] = await runEach([synthArgs, inspectArgs]);
  assertEquals(synth.code, 0, show(synth));
  assertEquals(inspect.code, 0, show(inspect));
  assertEquals(onlyJson(inspect), shown);
});
