/**
 * pipeline/cases/shard.ts: the worker's shard from a flag, AWS Batch or Kubernetes, and a stable
 * assignment of case ids to shards; and `segment --shard` over a dataset, each case done once.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { createUNet, disposeUNet, resolveConfig } from "../../model/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { saveModel } from "../../pipeline/training/model_store.ts";
import { inShard, parseShard, type Shard, shardOf } from "../../pipeline/cases/shard.ts";
import { decodeNifti } from "../../pipeline/nifti/mod.ts";
import { ROOT, runMain } from "../_cli.ts";

Deno.test("parseShard() reads --shard i/n, and auto/n or auto from the environment", () => {
  assertEquals(parseShard("0/3", {}), { index: 0, count: 3 });
  assertEquals(parseShard(" 2 / 3 ", {}), { index: 2, count: 3 });
  assertEquals(parseShard("0/1", {}), { index: 0, count: 1 });
  // An explicit flag wins over the environment.
  assertEquals(
    parseShard("1/4", { AWS_BATCH_JOB_ARRAY_INDEX: "3", AWS_BATCH_JOB_ARRAY_SIZE: "9" }),
    { index: 1, count: 4 },
  );
  assertEquals(parseShard("auto/5", { JOB_COMPLETION_INDEX: "4" }), { index: 4, count: 5 });
  assertEquals(
    parseShard("auto", { JOB_COMPLETION_INDEX: "1", REVUNET_SHARD_COUNT: "2" }),
    { index: 1, count: 2 },
  );
});

Deno.test("parseShard() reads AWS Batch array jobs, then Kubernetes Indexed Jobs", () => {
  assertEquals(
    parseShard(undefined, { AWS_BATCH_JOB_ARRAY_INDEX: "7", AWS_BATCH_JOB_ARRAY_SIZE: "10" }),
    { index: 7, count: 10 },
  );
  // Without the size AWS Batch normally sets, REVUNET_SHARD_COUNT gives the count.
  assertEquals(
    parseShard(undefined, { AWS_BATCH_JOB_ARRAY_INDEX: "0", REVUNET_SHARD_COUNT: "2" }),
    { index: 0, count: 2 },
  );
  assertEquals(
    parseShard(undefined, { JOB_COMPLETION_INDEX: "2", REVUNET_SHARD_COUNT: "3" }),
    { index: 2, count: 3 },
  );
  // AWS Batch first when both are present.
  assertEquals(
    parseShard(undefined, {
      AWS_BATCH_JOB_ARRAY_INDEX: "1",
      AWS_BATCH_JOB_ARRAY_SIZE: "2",
      JOB_COMPLETION_INDEX: "0",
      REVUNET_SHARD_COUNT: "5",
    }),
    { index: 1, count: 2 },
  );
  assertEquals(parseShard(undefined, {}), undefined);
  assertEquals(parseShard(undefined, { JOB_COMPLETION_INDEX: "" }), undefined);
});

Deno.test("parseShard() names the flag or variable and the value that is wrong", () => {
  const bad: [string | undefined, Record<string, string>, string][] = [
    ["3", {}, `--shard must be "i/n"`],
    ["a/b", {}, `found "a/b"`],
    ["-1/3", {}, `found "-1/3"`],
    ["1.5/3", {}, `found "1.5/3"`],
    ["1/0", {}, "--shard must be a positive integer"],
    ["3/3", {}, "shard index 3 must be below the shard count 3"],
    ["auto/3", {}, "no array job index in the environment"],
    ["auto", {}, "no array job index in the environment"],
    [undefined, { JOB_COMPLETION_INDEX: "1" }, "set REVUNET_SHARD_COUNT"],
    [
      undefined,
      { AWS_BATCH_JOB_ARRAY_INDEX: "1" },
      "AWS_BATCH_JOB_ARRAY_SIZE or REVUNET_SHARD_COUNT",
    ],
    [
      undefined,
      { JOB_COMPLETION_INDEX: "x", REVUNET_SHARD_COUNT: "2" },
      'JOB_COMPLETION_INDEX must be a non-negative integer, found "x"',
    ],
    [
      undefined,
      { JOB_COMPLETION_INDEX: "0", REVUNET_SHARD_COUNT: "0" },
      "REVUNET_SHARD_COUNT must be a positive integer",
    ],
    [
      undefined,
      { AWS_BATCH_JOB_ARRAY_INDEX: "4", AWS_BATCH_JOB_ARRAY_SIZE: "4" },
      "AWS_BATCH_JOB_ARRAY_INDEX: shard index 4",
    ],
    [
      undefined,
      { REVUNET_SHARD_COUNT: "4" },
      "REVUNET_SHARD_COUNT=4 is set but no array job index",
    ],
  ];
  for (const [flag, env, text] of bad) {
    assertThrows(() => parseShard(flag, env), RangeError, text);
  }
});

const ids = (n: number, prefix = "BraTS2021_") =>
  Array.from({ length: n }, (_, k) => `${prefix}${String(k + 1).padStart(5, "0")}`);

Deno.test("inShard(): 3 shards over 7 cases take each case exactly once", () => {
  const cases = ids(7);
  const shards: Shard[] = [0, 1, 2].map((index) => ({ index, count: 3 }));
  const taken = shards.map((s) => cases.filter((id) => inShard(id, s)));
  assertEquals(taken.flat().sort(), cases);
  for (const id of cases) assertEquals(taken.filter((t) => t.includes(id)).length, 1, id);
  assert(cases.every((id) => inShard(id, undefined)));
  assert(cases.every((id) => inShard(id, { index: 0, count: 1 })));
});

Deno.test("shardOf() depends on the id and count only: stable as cases are added, even on average", () => {
  // Pinned: a change here would move cases between the shards of batch jobs already running.
  assertEquals(ids(7).map((id) => shardOf(id, 3)), [0, 1, 2, 0, 0, 0, 0]);
  assertEquals(shardOf("BraTS2021_00001", 1000), 118);
  const before = new Map(ids(50).map((id) => [id, shardOf(id, 4)]));
  const after = ids(500, "BraTS-GLI-").concat(ids(50));
  for (const id of after) if (before.has(id)) assertEquals(shardOf(id, 4), before.get(id));
  const counts = [0, 0, 0];
  for (const id of ids(3000, "BraTS-GLI-")) counts[shardOf(id, 3)]++;
  for (const c of counts) assert(Math.abs(c - 1000) < 100, `uneven shards: ${counts}`);
  assertThrows(() => shardOf("x", 0), RangeError, "positive integer");
});

/** `segment`'s --json summary: the last line of its stdout. */
function summary(stdout: string): { cases: { id: string; status: string }[]; failed: unknown[] } {
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

/** The names in a folder. */
async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

async function tinyModel(dir: string): Promise<string> {
  const net = createUNet(
    resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
    { seed: 2 },
  );
  await saveModel(join(dir, "model"), net, undefined, { train_crop: "16" });
  disposeUNet(net);
  return join(dir, "model");
}

Deno.test("segment --shard / AWS Batch / Kubernetes index: 3 workers over 7 cases into one output, each case once; evaluate per shard, then merged", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "shard-test-" });
  try {
    const model = await tinyModel(tmp);
    const all = await writePhantomDataset(join(tmp, "cases"), {
      cases: 7,
      dims: [32, 32, 32],
      seed: 9,
    });
    const out = join(tmp, "out");
    const common = ["segment", "--model", model, "--input", join(tmp, "cases"), "--out", out];
    const runs = [
      await runMain([...common, "--shard", "0/3", "--quiet", "--json"]),
      await runMain([...common, "--quiet", "--json"], {
        AWS_BATCH_JOB_ARRAY_INDEX: "1",
        AWS_BATCH_JOB_ARRAY_SIZE: "3",
      }),
      await runMain([...common, "--quiet", "--json"], {
        JOB_COMPLETION_INDEX: "2",
        REVUNET_SHARD_COUNT: "3",
      }),
    ];
    const done: string[][] = [];
    for (const [i, run] of runs.entries()) {
      assertEquals(run.code, 0, `shard ${i}: ${run.stderr}`);
      const ids = summary(run.stdout).cases.map((c) => c.id);
      assertEquals(ids, all.filter((id) => inShard(id, { index: i, count: 3 })), `shard ${i}`);
      assert(summary(run.stdout).cases.every((c) => c.status === "done"));
      done.push(ids);
    }
    assertEquals(done.flat().sort(), all);
    const outputs = (await names(out)).filter((n) => /^BraTS2021_\d+\.nii\.gz$/.test(n));
    assertEquals(outputs, all.map((id) => `${id}.nii.gz`));

    // Each shard evaluates its own cases into the shared output, under its own file names.
    const evaluate = ["evaluate", "--pred", out, "--truth", join(tmp, "cases"), "--out", out];
    const shardFiles: string[] = [];
    for (const [i, ids] of done.entries()) {
      const ev = await runMain([...evaluate, "--shard", `${i}/3`, "--json"]);
      assertEquals(ev.code, 0, ev.stderr);
      const result = JSON.parse(ev.stdout);
      assertEquals(result.cases.map((c: { case: string }) => c.case), ids);
      assertEquals([result.missing, result.extra], [[], []]);
      const file = await Deno.readTextFile(join(out, `metrics-shard-${i}-of-3.json`));
      assertEquals(JSON.parse(file), result);
      assert(await Deno.stat(join(out, `metrics-shard-${i}-of-3.csv`)));
      shardFiles.push(file);
    }
    assertEquals((await names(out)).includes("metrics.json"), false, "shards leave metrics.json");

    // A shard that holds no case (7 cases over 16 shards leave some empty) succeeds, empty.
    const empty = [...Array(16).keys()].find((k) => all.every((id) => shardOf(id, 16) !== k))!;
    const none = await runMain([...evaluate, "--shard", `${empty}/16`, "--json"]);
    assertEquals(none.code, 0, none.stderr);
    assertEquals(JSON.parse(none.stdout).cases, []);
    assertEquals(JSON.parse(none.stdout).missing, []);
    assert(await Deno.stat(join(out, `metrics-shard-${empty}-of-16.json`)));
    // Each shard in its own (possibly never written) folder: an empty shard still succeeds.
    const alone = await runMain([
      "evaluate",
      "--pred",
      join(tmp, `out-${empty}`),
      "--truth",
      join(tmp, "cases"),
      "--shard",
      `${empty}/16`,
      "--json",
    ]);
    assertEquals(alone.code, 0, alone.stderr);
    assertEquals(JSON.parse(alone.stdout).cases, []);

    // The merge: evaluate over the whole output scores every case.
    const merged = await runMain([...evaluate, "--json"]);
    assertEquals(merged.code, 0, merged.stderr);
    const result = JSON.parse(merged.stdout);
    assertEquals(result.cases.map((c: { case: string }) => c.case), all);
    assertEquals([result.missing, result.extra], [[], []]);
    assertEquals(JSON.parse(await Deno.readTextFile(join(out, "metrics.json"))), result);
    for (const [i, file] of shardFiles.entries()) {
      assertEquals(await Deno.readTextFile(join(out, `metrics-shard-${i}-of-3.json`)), file);
      // The merged per-case rows are the shards' rows.
      for (const c of JSON.parse(file).cases) {
        assertEquals(result.cases.find((m: { case: string }) => m.case === c.case), c);
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("segment --shard killed (SIGKILL) mid-run, then re-run: every case of the shard complete, nothing partial", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "shard-kill-test-" });
  try {
    const model = await tinyModel(tmp);
    const dims: [number, number, number] = [48, 48, 40];
    const all = await writePhantomDataset(join(tmp, "cases"), { cases: 8, dims, seed: 11 });
    // The shard of 2 with more cases: about 0.7 s each here, time to kill between two cases.
    const index = all.filter((id) => shardOf(id, 2) === 0).length >= 4 ? 0 : 1;
    const mine = all.filter((id) => shardOf(id, 2) === index);
    assert(mine.length >= 4, `shard ${index} of 2 has ${mine.length} cases`);
    const out = join(tmp, "out");
    const args = [
      "segment",
      "--model",
      model,
      "--input",
      join(tmp, "cases"),
      "--out",
      out,
      "--shard",
      `${index}/2`,
      "--save-probabilities",
      "--quiet",
      "--json",
    ];
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts", ...args],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    let exited = false;
    const status = child.status.then((s) => (exited = true, s));
    const labelsIn = async () =>
      (await names(out).catch(() => [])).filter((n) => /^BraTS2021_\d+\.nii\.gz$/.test(n));
    let atKill: string[] = [];
    while (!exited) {
      atKill = await labelsIn();
      if (atKill.length > 0) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    assert(!exited, "the shard finished before the first output was seen");
    child.kill("SIGKILL");
    const killed = await status;
    assertEquals(killed.signal, "SIGKILL", "killed, not finished");
    assert(atKill.length < mine.length, `killed after ${atKill.length} of ${mine.length} cases`);
    const left = await names(out);
    console.log(
      `killed with ${atKill.length} of ${mine.length} cases written; left: ${
        left.filter((n) => n.startsWith(".")).length
      } temporary file(s), ${left.filter((n) => /^BraTS2021_\d+\.json$/.test(n)).length} record(s)`,
    );

    // What a kill during a write leaves locally: a temporary file beside its target. The re-run
    // removes those of the cases it redoes, never another worker's (its write may be in flight).
    const otherShard = all.find((id) => !mine.includes(id))!;
    const stale = `.${mine.at(-1)}_probabilities.nii.gz.tmp-0123456789ab`;
    const othersTemp = `.${otherShard}.nii.gz.tmp-abcdef012345`;
    await Deno.writeTextFile(join(out, stale), "partial");
    await Deno.writeTextFile(join(out, othersTemp), "another worker's write in flight");

    const rerun = await runMain(args);
    assertEquals(rerun.code, 0, rerun.stderr);
    const result = summary(rerun.stdout);
    assertEquals(result.cases.map((c) => c.id), mine);
    assertEquals(result.failed, []);
    assert(result.cases.some((c) => c.status === "done"), "the re-run finished the rest");

    // Complete outputs for every case of the shard, none for the other shard, nothing else.
    const expected = mine.flatMap((id) => [
      `${id}.json`,
      `${id}.metrics.json`,
      `${id}.nii.gz`,
      `${id}_probabilities.nii.gz`,
    ]).concat(othersTemp).sort();
    assertEquals(await names(out), expected, "no temporary, error or other shard's files");
    for (const id of mine) {
      const flair = decodeNifti(
        await Deno.readFile(join(tmp, "cases", id, `${id}_flair.nii.gz`)),
        id,
      );
      const labels = decodeNifti(await Deno.readFile(join(out, `${id}.nii.gz`)), id);
      assertEquals(labels.header.dims, flair.header.dims);
      assertEquals(labels.header.affine, flair.header.affine);
      const probs = decodeNifti(await Deno.readFile(join(out, `${id}_probabilities.nii.gz`)), id);
      assertEquals(probs.header.dims, [...dims, 3]);
      const record = JSON.parse(await Deno.readTextFile(join(out, `${id}.json`)));
      assertEquals(record.outputs.length, 3);
      const metrics = JSON.parse(await Deno.readTextFile(join(out, `${id}.metrics.json`)));
      assert(Number.isFinite(metrics.WT.dice), JSON.stringify(metrics));
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
