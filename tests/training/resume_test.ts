/**
 * `train` stopped and continued: an abort (what SIGTERM/SIGINT do on the command line, tested in
 * tests/tasks/train_test.ts) while cases load, mid-epoch and during validation; resuming bit for bit; resuming with another --epochs or with
 * conflicting flags; best/ without validation; and bad input that must fail before any checkpoint.
 * Tiny network and crops, so every run takes a second or two on the cpu backend.
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { disposeUNet, resolveConfig } from "../../model/mod.ts";
import { decodeCachedCase } from "../../pipeline/cases/case_cache.ts";
import { loadModel } from "../../pipeline/training/model_store.ts";
import {
  resumedSettings,
  SettingsError,
  train,
  type TrainEvent,
  type TrainSettings,
} from "../../pipeline/training/mod.ts";
import { runMain } from "../_cli.ts";
import {
  pathMissing,
  phantomDataset,
  TINY,
  TINY_JSON,
  tinySettings as tinyRun,
  weightsOf,
} from "../_train_fixtures.ts";

await tf.setBackend("cpu");

/** The phantom dataset of this file's tests. */
const dataset = () => phantomDataset("revunet-resume-");

/** Short runs of 3 steps per epoch, so that a stop can land inside an epoch. */
const tinySettings = (data: string, over: Partial<TrainSettings> = {}): TrainSettings =>
  tinyRun(data, { stepsPerEpoch: 3, ...over });

const oneWorker = { workers: 1 };

async function readJson(path: string) {
  return JSON.parse(await Deno.readTextFile(path));
}

async function assertSameWeights(a: string, b: string, what: string) {
  const wa = await weightsOf(a);
  const wb = await weightsOf(b);
  assertEquals([...wb.keys()], [...wa.keys()]);
  for (const [name, v] of wa) assertEquals(wb.get(name), v, `${what}: ${name}`);
}

/** The metrics of each epoch without its wall-clock seconds. */
async function metricsOf(out: string) {
  const text = await Deno.readTextFile(`${out}/metrics.jsonl`);
  return text.trim().split("\n").map((l) => {
    const { seconds: _s, ...m } = JSON.parse(l);
    return m;
  });
}

/** An abort controller and an onProgress that aborts at the first event `when` accepts. */
function abortWhen(when: (e: TrainEvent) => boolean) {
  const controller = new AbortController();
  const events: TrainEvent[] = [];
  const onProgress = (e: TrainEvent) => {
    events.push(e);
    if (!controller.signal.aborted && when(e)) controller.abort();
  };
  return { signal: controller.signal, onProgress, events };
}

Deno.test("train: aborted mid-epoch stops after that step, checkpoints it, and resuming equals the uninterrupted run bit for bit", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    const before = tf.memory().numTensors;
    const settings = tinySettings(data);
    const whole = await train(settings, { out: `${dir}/whole`, ...oneWorker });
    assertEquals([whole.epochs, whole.steps, whole.interrupted], [2, 6, false]);

    // Abort as step 4 ends: the second epoch's first step (epoch 2, step 1 of 3).
    const a = abortWhen((e) => e.kind === "step" && e.step === 4);
    const stopped = await train(settings, { out: `${dir}/cut`, ...oneWorker, ...a });
    assertEquals([stopped.steps, stopped.epochs, stopped.interrupted], [4, 1, true]);
    assertEquals(a.events.filter((e) => e.kind === "step").length, 4, "no step after the abort");
    const latest = await readJson(`${dir}/cut/latest.json`);
    const { files: _files, ...named } = latest;
    assertEquals(named, {
      checkpoint: "checkpoints/epoch-0001-step-0000004",
      epoch: 1,
      step: 4,
    });
    const state = await readJson(`${dir}/cut/${latest.checkpoint}/state.json`);
    assertEquals([state.epoch, state.stepInEpoch, state.globalStep], [1, 1, 4]);

    const resumed = await train(settings, { out: `${dir}/cut`, ...oneWorker, resume: true });
    assertEquals([resumed.steps, resumed.epochs, resumed.interrupted], [6, 2, false]);
    await assertSameWeights(
      `${dir}/whole/${whole.checkpoint}`,
      `${dir}/cut/${resumed.checkpoint}`,
      "mid-epoch resume",
    );
    await assertSameWeights(`${dir}/whole/best`, `${dir}/cut/best`, "best weights");
    assertEquals(await metricsOf(`${dir}/cut`), await metricsOf(`${dir}/whole`));
    assertEquals(
      await Deno.readFile(`${dir}/cut/${resumed.checkpoint}/optimizer.safetensors`),
      await Deno.readFile(`${dir}/whole/${whole.checkpoint}/optimizer.safetensors`),
      "the optimizer state too",
    );

    // Aborted while the cases load: no step starts; a checkpoint of the initial state lets
    // --resume run the whole thing, to the same weights.
    const b = abortWhen((e) => e.kind === "case-loaded");
    const early = await train(settings, { out: `${dir}/early`, ...oneWorker, ...b });
    assertEquals([early.steps, early.interrupted], [0, true]);
    assertEquals(b.events.filter((e) => e.kind === "step"), [], "no step ran");
    const loaded = b.events.filter((e) => e.kind === "case-loaded");
    assert(loaded.length < 3, `loading stopped between cases (${loaded.length} of 3 loaded)`);
    assertEquals((await readJson(`${dir}/early/latest.json`)).step, 0);
    const fromStart = await train(settings, { out: `${dir}/early`, ...oneWorker, resume: true });
    assertEquals(fromStart.steps, 6);
    await assertSameWeights(
      `${dir}/whole/${whole.checkpoint}`,
      `${dir}/early/${fromStart.checkpoint}`,
      "resumed from the loading abort",
    );
    assertEquals(tf.memory().numTensors, before, "every run disposed its tensors");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train: an abort between validation cases abandons validation, keeps the epoch's steps, and --resume validates", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    // Two validation cases, one training case; validation only after the last epoch.
    const settings = tinySettings(data, { epochs: 1, stepsPerEpoch: 2, valCases: 2 });
    const whole = await train(settings, { out: `${dir}/whole`, ...oneWorker });
    const a = abortWhen((e) => e.kind === "validated-case");
    const stopped = await train(settings, { out: `${dir}/cut`, ...oneWorker, ...a });
    assertEquals([stopped.steps, stopped.epochs, stopped.interrupted], [2, 0, true]);
    assertEquals(a.events.filter((e) => e.kind === "validated-case").length, 1);
    const latest = await readJson(`${dir}/cut/latest.json`);
    assertEquals(latest.checkpoint, "checkpoints/epoch-0000-step-0000002");
    const state = await readJson(`${dir}/cut/${latest.checkpoint}/state.json`);
    assertEquals([state.epoch, state.stepInEpoch, state.history], [0, 2, []]);
    assert(await pathMissing(`${dir}/cut/metrics.jsonl`), "the epoch is not recorded yet");
    assert(await pathMissing(`${dir}/cut/best`), "no best weights without a finished validation");

    const events: TrainEvent[] = [];
    const resumed = await train(settings, {
      out: `${dir}/cut`,
      ...oneWorker,
      resume: true,
      onProgress: (e) => events.push(e),
    });
    assertEquals(events.filter((e) => e.kind === "step"), [], "no further step: only validation");
    assertEquals(events.filter((e) => e.kind === "validated-case").length, 2);
    assertEquals([resumed.epochs, resumed.steps, resumed.best?.epoch], [1, 2, 1]);
    assertEquals(await metricsOf(`${dir}/cut`), await metricsOf(`${dir}/whole`));
    await assertSameWeights(`${dir}/whole/best`, `${dir}/cut/best`, "best weights");
    await assertSameWeights(
      `${dir}/whole/${whole.checkpoint}`,
      `${dir}/cut/${resumed.checkpoint}`,
      "final checkpoint",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resumedSettings: --epochs longer or shorter, validation and data may change, every other difference is named", () => {
  const stored = tinySettings("s3://a/data", { epochs: 4 });
  const at = { epoch: 2, stepInEpoch: 1 };
  assertEquals(resumedSettings(stored, {}, at), { settings: stored, changes: [] });
  assertEquals(resumedSettings(stored, { ...stored }, at).changes, [], "the same settings again");
  const longer = resumedSettings(stored, { epochs: 10, valEvery: 3, data: "/mnt/data" }, at);
  assertEquals(longer.settings, { ...stored, epochs: 10, valEvery: 3, data: "/mnt/data" });
  assertEquals(longer.changes.length, 3);
  assert(longer.changes[0].includes("over 30 steps"), longer.changes[0]);
  assertEquals(resumedSettings(stored, { epochs: 3 }, at).settings.epochs, 3, "shorter");
  assertThrows(
    () => resumedSettings(stored, { epochs: 2 }, at),
    SettingsError,
    "--epochs 2 with --resume: the run has started epoch 3",
  );
  assertThrows(
    () => resumedSettings(stored, { epochs: 1 }, { epoch: 2, stepInEpoch: 0 }),
    SettingsError,
    "completed 2 epochs",
  );
  assertThrows(
    () => resumedSettings(stored, { valWindow: 13 }, at),
    SettingsError,
    "--val-window 13",
  );
  const e = assertThrows(
    () =>
      resumedSettings(stored, {
        lr: 0.1,
        seed: 3,
        augment: false,
        config: resolveConfig({ ...TINY, levels: 3 }),
        crop: 8,
      }, at),
    SettingsError,
  );
  for (
    const text of [
      "--lr 0.1 (the run has 0.003)",
      "--seed 3 (the run has 0)",
      "--no-augment",
      "--config: levels 3 (the run has 2)",
    ]
  ) assert(e.message.includes(text), `${text} in: ${e.message}`);
  assert(!e.message.includes("--crop"), "an equal value is no conflict");
});

Deno.test("train CLI: --val-cases 0 writes best/ as the latest weights; --resume --epochs extends the run; conflicting flags are usage errors", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  const run = `${dir}/run`;
  const common = ["--steps-per-epoch", "2", "--crop", "8", "--val-cases", "0"];
  try {
    const first = await runMain([
      "train",
      "--data",
      data,
      "--out",
      run,
      "--epochs",
      "1",
      ...common,
      "--config",
      TINY_JSON,
      "--quiet",
    ]);
    assertEquals(first.code, 0, first.stderr);
    let latest = await readJson(`${run}/latest.json`);
    await assertSameWeights(`${run}/${latest.checkpoint}`, `${run}/best`, "best/ after epoch 1");
    const { metadata } = await loadModel(`${run}/best`).then(({ net, metadata }) => {
      disposeUNet(net);
      return { metadata };
    });
    assertEquals([metadata.epoch, metadata.best_by], ["1", "latest (no validation cases)"]);

    const longer = await runMain(["train", "--out", run, "--resume", "--epochs", "2", "--json"]);
    assertEquals(longer.code, 0, longer.stderr);
    assert(longer.stderr.includes("--epochs 2: the run now ends after epoch 2"), longer.stderr);
    const result = JSON.parse(longer.stdout);
    assertEquals([result.epochs, result.steps, result.interrupted], [2, 4, false]);
    latest = await readJson(`${run}/latest.json`);
    assertEquals((await readJson(`${run}/${latest.checkpoint}/state.json`)).settings.epochs, 2);
    await assertSameWeights(`${run}/${latest.checkpoint}`, `${run}/best`, "best/ after epoch 2");

    // The first command again with --resume (and another worker count): nothing conflicts.
    const again = await runMain([
      "train",
      "--data",
      data,
      "--out",
      run,
      "--epochs",
      "2",
      ...common,
      "--config",
      TINY_JSON,
      "--resume",
      "--workers",
      "0",
      "--json",
      "--quiet",
    ]);
    assertEquals(again.code, 0, again.stderr);
    assertEquals(JSON.parse(again.stdout).steps, 4, "a finished run has nothing left to do");

    const conflict = await runMain([
      "train",
      "--out",
      run,
      "--resume",
      "--lr",
      "0.1",
      "--batch",
      "2",
      "--no-augment",
    ]);
    assertEquals(conflict.code, 2, conflict.stderr);
    for (const flag of ["--lr 0.1", "--batch 2", "--no-augment"]) {
      assert(conflict.stderr.includes(flag), `${flag} named: ${conflict.stderr}`);
    }
    const shorter = await runMain(["train", "--out", run, "--resume", "--epochs", "1"]);
    assertEquals(shorter.code, 2, shorter.stderr);
    assert(shorter.stderr.includes("completed 2 epochs"), shorter.stderr);
    assertEquals((await readJson(`${run}/latest.json`)).step, 4, "the refused runs wrote nothing");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train CLI: a corrupt NIfTI or a missing --data folder is an error naming it, exit 1, no checkpoint written; the cache entries a refused run leaves are whole and reused", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  const args = (from: string, out: string) => [
    "train",
    "--data",
    from,
    "--out",
    out,
    "--epochs",
    "1",
    "--steps-per-epoch",
    "1",
    "--crop",
    "8",
    "--config",
    TINY_JSON,
    "--quiet",
  ];
  const copy = async (to: string) => {
    await Deno.mkdir(to);
    for await (const c of Deno.readDir(data)) {
      await Deno.mkdir(`${to}/${c.name}`);
      for await (const f of Deno.readDir(`${data}/${c.name}`)) {
        await Deno.copyFile(`${data}/${c.name}/${f.name}`, `${to}/${c.name}/${f.name}`);
      }
    }
  };
  try {
    const none = await runMain(args(`${dir}/nothere`, `${dir}/out0`));
    assertEquals(none.code, 1, none.stderr);
    assert(
      none.stderr.includes(`No BraTS cases under "${dir}/nothere": the folder does not exist`),
      none.stderr,
    );
    assert(await pathMissing(`${dir}/out0`), "nothing written under --out");

    // A file that is not NIfTI at all: found when the headers are read, before anything is written.
    await copy(`${dir}/garbage`);
    const bad = `${dir}/garbage/BraTS2021_00002/BraTS2021_00002_t2.nii.gz`;
    await Deno.writeTextFile(bad, "not a NIfTI file");
    const garbage = await runMain(args(`${dir}/garbage`, `${dir}/out1`));
    assertEquals(garbage.code, 1, garbage.stderr);
    assert(garbage.stderr.includes(bad), garbage.stderr);
    assert(await pathMissing(`${dir}/out1`), "nothing written under --out");

    // A truncated gzip stream whose header still reads: found while preprocessing. Only whole
    // cache entries of the cases preprocessed before it may remain, to be reused by the next run.
    await copy(`${dir}/cut`);
    const cut = `${dir}/cut/BraTS2021_00002/BraTS2021_00002_t1.nii.gz`;
    await Deno.writeFile(cut, (await Deno.readFile(cut)).subarray(0, 200));
    const truncated = await runMain(args(`${dir}/cut`, `${dir}/out2`));
    assertEquals(truncated.code, 1, truncated.stderr);
    assert(truncated.stderr.includes(cut), truncated.stderr);
    const left = [];
    for await (const e of Deno.readDir(`${dir}/out2`)) left.push(e.name);
    assertEquals(left.filter((n) => n !== "cache"), [], "no checkpoint, latest.json or metrics");
    const entries = [];
    for await (const e of Deno.readDir(`${dir}/out2/cache`)) {
      const name = `${dir}/out2/cache/${e.name}`;
      assert(!e.name.startsWith("BraTS2021_00002"), `no entry for the broken case: ${e.name}`);
      assert(!e.name.includes(".tmp-"), `no partial entry: ${e.name}`);
      decodeCachedCase(await Deno.readFile(name), name); // whole, and checksummed, or this throws
      entries.push(e.name);
    }
    // The case in flight beside the broken one is finished (mapConcurrent awaits it).
    assert(entries.length >= 1, "an entry of a case read before the failure remains");
    // The cache is a cache (README): what the refused run left is what the next run reuses.
    await Deno.copyFile(`${data}/BraTS2021_00002/BraTS2021_00002_t1.nii.gz`, cut);
    const fixed = await runMain(args(`${dir}/cut`, `${dir}/out2`).filter((a) => a !== "--quiet"));
    assertEquals(fixed.code, 0, fixed.stderr);
    assert(fixed.stderr.includes(`(${entries.length} from the cache`), fixed.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train --resume and segment refuse a checkpoint or best/ weights with 64 flipped bytes, naming the file (exit 1); --resume refuses a latest.json naming another run's checkpoint", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  const run = `${dir}/run`;
  try {
    const first = await runMain([
      "train",
      "--data",
      data,
      "--out",
      run,
      "--epochs",
      "1",
      "--steps-per-epoch",
      "1",
      "--crop",
      "8",
      "--val-cases",
      "0",
      "--config",
      TINY_JSON,
      "--quiet",
    ]);
    assertEquals(first.code, 0, first.stderr);
    const latest = await readJson(`${run}/latest.json`);
    /** Runs `args` with 64 bytes at the end of `file` inverted, then puts the file back. */
    const withFlipped = async (file: string, args: string[]) => {
      const bytes = await Deno.readFile(file);
      const flipped = bytes.slice();
      for (let i = bytes.length - 64; i < bytes.length; i++) flipped[i] ^= 0xff;
      await Deno.writeFile(file, flipped);
      try {
        return await runMain(args);
      } finally {
        await Deno.writeFile(file, bytes);
      }
    };
    const weights = `${run}/${latest.checkpoint}/model.safetensors`;
    const resume = ["train", "--out", run, "--resume", "--epochs", "2", "--quiet"];
    const resumed = await withFlipped(weights, resume);
    assertEquals(resumed.code, 1, resumed.stderr);
    assert(resumed.stderr.includes(`${weights}: damaged file`), resumed.stderr);
    assertEquals((await readJson(`${run}/latest.json`)).step, 1, "the refused run wrote nothing");

    const best = `${run}/best/model.safetensors`;
    const segment = ["segment", "--model", run, "--input", data, "--out", `${dir}/seg`, "--quiet"];
    const segmented = await withFlipped(best, segment);
    assertEquals(segmented.code, 1, segmented.stderr);
    assert(segmented.stderr.includes(`${best}: damaged weights`), segmented.stderr);
    assert(await pathMissing(`${dir}/seg`), "nothing segmented with damaged weights");
    // Put back, both run.
    const fine = await runMain(segment);
    assertEquals(fine.code, 0, fine.stderr);
    const again = await runMain(resume);
    assertEquals(again.code, 0, again.stderr);

    // A latest.json pointing into another run's folder is refused, not resumed from there.
    await Deno.mkdir(`${dir}/mine`);
    const other = await readJson(`${run}/latest.json`);
    await Deno.writeTextFile(
      `${dir}/mine/latest.json`,
      JSON.stringify({ ...other, checkpoint: `../run/${other.checkpoint}` }),
    );
    const hijacked = await runMain(["train", "--out", `${dir}/mine`, "--resume", "--quiet"]);
    assertEquals(hijacked.code, 1, hijacked.stderr);
    assert(
      hijacked.stderr.includes(
        `${dir}/mine/latest.json: field "checkpoint" must be a checkpoint folder of this run`,
      ),
      hijacked.stderr,
    );
    assert(await pathMissing(`${dir}/mine/checkpoints`), "nothing written");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train --resume removes the temporary files killed checkpoint writes left in its run folder, and nothing else", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  const out = `${dir}/run`;
  try {
    const settings = tinySettings(data, { epochs: 1 });
    const first = await train(settings, { out, ...oneWorker });
    // What SIGKILL during a checkpoint write leaves: temporaries beside the files being
    // replaced, and a new checkpoint folder holding only its first file's.
    const strays = [
      `${out}/${first.checkpoint}/.optimizer.safetensors.tmp-0123456789ab`,
      `${out}/checkpoints/epoch-0001-step-0000099/.model.safetensors.tmp-abcdef012345`,
      `${out}/.latest.json.tmp-aaaaaaaaaaaa`,
      `${out}/best/.model.safetensors.tmp-bbbbbbbbbbbb`,
    ];
    const kept = [`${out}/notes.tmp-1`, `${out}/.hidden`];
    for (const f of [...strays, ...kept]) {
      await Deno.mkdir(f.slice(0, f.lastIndexOf("/")), { recursive: true });
      await Deno.writeFile(f, new Uint8Array(100));
    }
    await Deno.mkdir(`${out}/empty-before`);
    const resumed = await train({ epochs: 2 }, { out, ...oneWorker, resume: true });
    assertEquals(resumed.epochs, 2);
    for (const f of strays) assert(await pathMissing(f), `${f} removed`);
    assert(await pathMissing(`${out}/checkpoints/epoch-0001-step-0000099`), "its folder too");
    for (const f of kept) assert(!(await pathMissing(f)), `${f} kept`);
    assert(!(await pathMissing(`${out}/empty-before`)), "a folder empty before is kept");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
