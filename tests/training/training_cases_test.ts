/**
 * Training with cases streamed from local disk (`--case-memory`): the reader and its LRU, batches
 * equal to those of cases in memory, whole runs equal bit for bit (also resumed), the temporary
 * folder removed (also on SIGTERM), errors naming the file, and the flag's usage errors.
 * @module
 */
import { createHash } from "node:crypto";
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import {
  decodeCachedCase,
  encodeCachedCase,
  readCachedHeader,
  StreamedCases,
  streamedEntry,
} from "../../pipeline/cases/case_cache.ts";
import {
  batchForStep,
  BatchPrefetcher,
  type PrefetchOptions,
} from "../../pipeline/cases/prefetch.ts";
import type { PreprocessedCase } from "../../pipeline/cases/preprocess.ts";
import { streamRandom } from "../../pipeline/cases/random.ts";
import { train, type TrainRuntime } from "../../pipeline/training/mod.ts";
import { defaultCaseMemory } from "../../pipeline/training/training_cases.ts";
import { runMain } from "../_cli.ts";
import {
  pathMissing,
  phantomDataset,
  spawnTrain,
  TINY_JSON,
  tinySettings,
  weightsOf,
} from "../_train_fixtures.ts";
import { type Dims } from "../../pipeline/volume/mod.ts";

await tf.setBackend("cpu");

const dataset = () => phantomDataset("revunet-train-stream-");

/** A labelled case with a ball of tumor and random intensities. */
function syntheticCase(size: Dims, seed: number): PreprocessedCase {
  const n = size[0] * size[1] * size[2];
  const rand = streamRandom(seed, 0);
  const regions = new Uint8Array(n);
  const image = new Float32Array(n * 4).map(() => rand() * 2 - 1);
  for (let i = 0; i < n; i++) {
    const x = i % size[0], y = Math.floor(i / size[0]) % size[1];
    const z = Math.floor(i / (size[0] * size[1]));
    const r = Math.hypot(x - size[0] / 2, y - size[1] / 2, z - size[2] / 2);
    regions[i] = r < 2 ? 7 : r < 3 ? 3 : r < 4 ? 1 : 0;
  }
  return {
    id: `c${seed}`,
    dims: size,
    box: { start: [1, 2, 3], size },
    stats: [],
    image,
    regions,
  };
}

/** The cases written as cache entries under `dir`, and their streamed entries. */
async function writeEntries(dir: string, cases: PreprocessedCase[]) {
  return await Promise.all(cases.map(async (c) => {
    const path = `${dir}/${c.id}.rvcase`;
    await Deno.writeFile(path, encodeCachedCase(c, c.id));
    return streamedEntry(c, path);
  }));
}

Deno.test("StreamedCases reads cases from their entries and holds at most `capacity`, least recently used evicted", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases = [1, 2, 3].map((s) => syntheticCase([10, 9, 8], s));
    const streamed = new StreamedCases(await writeEntries(dir, cases), { capacity: 2 });
    assertEquals([streamed.length, streamed.resident, streamed.reads], [3, 0, 0]);
    const first = streamed.get(0);
    assertEquals(first.image, cases[0].image);
    assertEquals(first.regions, cases[0].regions);
    assertEquals([first.id, first.box, first.dims], [cases[0].id, cases[0].box, cases[0].dims]);
    // 0 read · 1 read · 0 in memory · 2 read, evicting 1 · 0 in memory · 1 read, evicting 2
    const order = [1, 0, 2, 0, 1];
    const reads = [2, 2, 3, 3, 4];
    for (const [k, i] of order.entries()) {
      const c = streamed.get(i);
      assertEquals(c.image, cases[i].image, `case ${i}`);
      assert(streamed.resident <= 2, `${streamed.resident} cases in memory`);
      assertEquals(streamed.reads, reads[k], `reads after getting case ${i}`);
    }
    assert(streamed.get(0) === first, "a case still in memory is not read again");
    assertEquals(streamed.reads, 4);
    assertThrows(() => new StreamedCases([], { capacity: 0 }), RangeError, "capacity");
    assertThrows(() => streamed.get(3), RangeError, "no case 3 of 3");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("streamed cases give the batches of cases in memory: main thread, 1 and 2 workers, each with its own LRU", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases = [
      syntheticCase([16, 14, 12], 1),
      syntheticCase([12, 16, 14], 2),
      syntheticCase([9, 10, 11], 3),
    ];
    const entries = await writeEntries(dir, cases);
    for (const workers of [0, 1, 2]) {
      const options: PrefetchOptions = { batch: 2, seed: 4, sampling: { crop: 8 }, workers };
      const streamed = new StreamedCases(entries, { capacity: 1 });
      assertEquals(batchForStep(streamed, options, 0), batchForStep(cases, options, 0));
      const p = new BatchPrefetcher(new StreamedCases(entries, { capacity: 1 }), options);
      try {
        for (let step = 0; step < 6; step++) {
          const b = await p.next(step);
          const expected = batchForStep(cases, options, step);
          assertEquals(b.image, expected.image, `workers ${workers}, step ${step}`);
          assertEquals(b.target, expected.target);
          assertEquals(b.ids, expected.ids);
        }
      } finally {
        p.close();
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("StreamedCases and readCachedHeader: a missing, damaged or replaced entry is an error naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases = [syntheticCase([10, 9, 8], 1), syntheticCase([8, 9, 10], 2)];
    const entries = await writeEntries(dir, cases);
    const header = await readCachedHeader(entries[0].path);
    const { image: _i, regions: _r, ...meta } = decodeCachedCase(
      await Deno.readFile(entries[0].path),
      "x",
    );
    assertEquals({ ...header }, { ...meta, labelled: true, sha256: header.sha256 });
    const payload = new Uint8Array([
      ...new Uint8Array(cases[0].image.buffer),
      ...cases[0].regions!,
    ]);
    assertEquals(
      header.sha256,
      createHash("sha256").update(payload).digest("hex"),
      "the header records the payload's SHA-256",
    );

    const missing = new StreamedCases([{ ...entries[0], path: `${dir}/gone.rvcase` }]);
    assertThrows(() => missing.get(0), Error, `"c1" from ${dir}/gone.rvcase: no such file`);

    const bytes = await Deno.readFile(entries[1].path);
    await Deno.writeFile(entries[1].path, bytes.subarray(0, bytes.length - 5));
    const damaged = new StreamedCases(entries);
    assertThrows(
      () => damaged.get(1),
      Error,
      `${entries[1].path}: not a preprocessed-case cache entry (${bytes.length - 5} bytes`,
    );
    await assertRejects(() => readCachedHeader(entries[1].path), RangeError, entries[1].path);

    const replaced = new StreamedCases([{ ...entries[1], path: entries[0].path }]);
    assertThrows(() => replaced.get(0), Error, `it holds case "c1"`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train: streamed runs equal the in-memory run bit for bit (local cache, a temporary folder, a budget crossed mid-load, resumed); the temporary folder is removed", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    const before = tf.memory().numTensors;
    const settings = tinySettings(data, { epochs: 3, valEvery: 2 });
    const quiet = { workers: 1 };
    const memory = await train(settings, { out: `${dir}/memory`, ...quiet });
    assertEquals(memory.streamed, undefined, "the default budget holds three tiny cases");

    // Streamed from the run's own (local) cache, every case from the start.
    const local = await train(settings, { out: `${dir}/local`, ...quiet, caseMemory: 0 });
    assertEquals(local.streamed, { dir: `${dir}/local/cache`, temporary: false });
    // The cache is filled now: a second streamed run reads only the entries' headers to start.
    const again = await train(settings, {
      out: `${dir}/again`,
      ...quiet,
      workers: 2,
      cache: `${dir}/local/cache`,
      caseMemory: 0,
    });
    assertEquals(again.streamed, { dir: `${dir}/local/cache`, temporary: false });

    // No cache: a temporary folder. The budget holds one case, so the first is loaded into memory
    // and moved to disk when the second does not fit; stopped after an epoch, then resumed.
    const oneCase = 24 * 28 * 20 * 17;
    const runtime: TrainRuntime = {
      out: `${dir}/temp`,
      workers: 0,
      cache: "",
      caseMemory: oneCase,
    };
    const first = await train(settings, { ...runtime, stopAfterEpoch: 1 });
    assert(first.streamed?.temporary, JSON.stringify(first.streamed));
    assert(await pathMissing(first.streamed.dir), `${first.streamed.dir} removed`);
    const resumed = await train({}, { ...runtime, workers: 1, resume: true });
    assert(resumed.streamed?.temporary && resumed.streamed.dir !== first.streamed.dir);
    assert(await pathMissing(resumed.streamed.dir), `${resumed.streamed.dir} removed`);
    assertEquals(resumed.epochs, 3);

    const expected = await weightsOf(`${dir}/memory/${memory.checkpoint}`);
    for (const run of ["local", "again", "temp"]) {
      const w = await weightsOf(`${dir}/${run}/${memory.checkpoint}`);
      for (const [name, v] of expected) assertEquals(w.get(name), v, `${run}: ${name}`);
      const lines = (await Deno.readTextFile(`${dir}/${run}/metrics.jsonl`)).trim().split("\n");
      const dice = lines.map((l) => JSON.parse(l).val_dice);
      const memoryLines = await Deno.readTextFile(`${dir}/memory/metrics.jsonl`);
      const memoryDice = memoryLines.trim().split("\n").map((l) => JSON.parse(l).val_dice);
      assertEquals(dice, memoryDice, `${run}: validation Dice of streamed validation cases`);
    }
    assertEquals(tf.memory().numTensors, before, "every run disposed its tensors");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train: a streamed case whose file is gone is an error naming it, and no checkpoint is written", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    const cache = `${dir}/cache`;
    for (const workers of [1, 0]) {
      const out = `${dir}/run-${workers}`;
      const error = await assertRejects(() =>
        train(tinySettings(data, { valCases: 0 }), {
          out,
          workers,
          cache,
          caseMemory: 0,
          onProgress: (e) => {
            // Every case is on disk once the last is loaded; remove them before the first step.
            if (e.kind !== "case-loaded" || e.done < e.total) return;
            for (const f of Deno.readDirSync(cache)) Deno.removeSync(`${cache}/${f.name}`);
          },
        })
      );
      const message = (error as Error).message;
      assert(
        new RegExp(`Cannot read training case "\\S+" from ${cache}/\\S+\\.rvcase: no such file`)
          .test(message),
        message,
      );
      assert(await pathMissing(`${out}/latest.json`), "no checkpoint");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train CLI: --case-memory usage errors; --cache none streams from a temporary folder named in the log, removed on SIGTERM", async () => {
  for (const value of ["-1", "lots", ""]) {
    const r = await runMain(["train", "--data", "x", "--out", "y", `--case-memory=${value}`]);
    assertEquals(r.code, 2, r.stderr);
    assert(r.stderr.includes(`--case-memory must be a number`), r.stderr);
  }
  const missing = await runMain(["train", "--data", "x", "--out", "y", "--case-memory"]);
  assertEquals(missing.code, 2, missing.stderr);
  assert(missing.stderr.includes("case-memory"), missing.stderr);
  const budget = defaultCaseMemory();
  assert(budget > 0 && budget <= Deno.systemMemoryInfo().total / 2, `default ${budget}`);

  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    const run = spawnTrain([
      "--data",
      data,
      "--out",
      `${dir}/run`,
      "--cache",
      "none",
      "--case-memory",
      "0",
      "--epochs",
      "1",
      "--steps-per-epoch",
      "1000",
      "--crop",
      "8",
      "--config",
      TINY_JSON,
    ]);
    await run.waitFor(/epoch 1\/1 \[[#.]+\] step 1\//);
    const stderr = run.stderr();
    const m = /streaming them from (\S+) \(a temporary folder, removed at the end of the run\)/
      .exec(stderr);
    assert(m, stderr);
    assert(!(await pathMissing(m[1])), "the folder exists while the run streams from it");
    run.child.kill("SIGTERM");
    const { code, stderr: all } = await run.finish();
    assertEquals(code, 143, all);
    assert(await pathMissing(m[1]), `${m[1]} removed after SIGTERM`);
    const latest = JSON.parse(await Deno.readTextFile(`${dir}/run/latest.json`));
    assert(latest.step >= 1, "the signal's checkpoint was written");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
