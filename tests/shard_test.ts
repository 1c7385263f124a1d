/**
 * pipeline/shard.ts: the worker's shard from a flag, AWS Batch or Kubernetes, and a stable
 * assignment of case ids to shards; and `segment --shard` over a dataset, each case done once.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { createUNet, disposeUNet, resolveConfig } from "../model/mod.ts";
import { writePhantomDataset } from "../pipeline/phantom.ts";
import { saveModel } from "../pipeline/model_store.ts";
import { inShard, parseShard, type Shard, shardOf } from "../pipeline/shard.ts";
import { segmentCommand } from "../tasks/segment.ts";
import { runMain } from "./_cli.ts";

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

// `segment` takes --shard once it is wired there.
const SEGMENT_SHARDS = segmentCommand.help.includes("--shard");

Deno.test({
  name: "segment --shard / AWS Batch / Kubernetes index: 3 workers over 7 cases, each case once",
  ignore: !SEGMENT_SHARDS,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "shard-test-" });
    try {
      const net = createUNet(
        resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
        { seed: 2 },
      );
      await saveModel(join(tmp, "model"), net);
      disposeUNet(net);
      const all = await writePhantomDataset(join(tmp, "cases"), {
        cases: 7,
        dims: [32, 32, 32],
        seed: 9,
      });
      const common = ["segment", "--model", join(tmp, "model"), "--input", join(tmp, "cases")];
      const runs = [
        await runMain([...common, "--out", join(tmp, "out0"), "--shard", "0/3", "--quiet"]),
        await runMain([...common, "--out", join(tmp, "out1"), "--quiet"], {
          AWS_BATCH_JOB_ARRAY_INDEX: "1",
          AWS_BATCH_JOB_ARRAY_SIZE: "3",
        }),
        await runMain([...common, "--out", join(tmp, "out2"), "--quiet"], {
          JOB_COMPLETION_INDEX: "2",
          REVUNET_SHARD_COUNT: "3",
        }),
      ];
      const done: string[][] = [];
      for (const [i, run] of runs.entries()) {
        assertEquals(run.code, 0, `shard ${i}: ${run.stderr}`);
        const outputs: string[] = [];
        for await (const e of Deno.readDir(join(tmp, `out${i}`))) {
          if (e.name.endsWith(".nii.gz")) outputs.push(e.name.replace(/\.nii\.gz$/, ""));
        }
        assertEquals(
          outputs.sort(),
          all.filter((id) => inShard(id, { index: i, count: 3 })),
          `shard ${i}`,
        );
        done.push(outputs);
      }
      assertEquals(done.flat().sort(), all);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
