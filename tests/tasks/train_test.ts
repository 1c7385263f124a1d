/**
 * `train` as a user runs it: SIGTERM and SIGINT mid-epoch, usage errors naming the flag, and
 * `--crop auto` choosing the crop under a budget (the engine: tests/training/run_test.ts).
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals } from "@std/assert";
import { disposeUNet } from "../../model/mod.ts";
import { loadModel } from "../../pipeline/training/model_store.ts";
import { runMain } from "../_cli.ts";
import { phantomDataset, spawnTrain } from "../_train_fixtures.ts";

await tf.setBackend("cpu");

/** The phantom dataset of this file's tests. */
const dataset = () => phantomDataset("revunet-train-");

Deno.test("train CLI: SIGTERM and SIGINT mid-epoch checkpoint the step the run stopped at and exit 143 and 130 (--resume: training/resume_test.ts)", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    // Far more steps than run before the signal lands, even on a loaded machine.
    const stepsPerEpoch = 1000;
    const runs = (["SIGTERM", "SIGINT"] as const).map((signal) => {
      const out = `${dir}/${signal}`;
      const p = spawnTrain([
        "--data",
        data,
        "--out",
        out,
        "--epochs",
        "1",
        "--steps-per-epoch",
        String(stepsPerEpoch),
        "--crop",
        "8",
        "--config",
        JSON.stringify({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
      ]);
      return { signal, out, p };
    });
    await Promise.all(runs.map(async ({ signal, p }) => {
      // The first progress line is printed after step 1: the run is inside its first epoch.
      await p.waitFor(/epoch 1\/1 \[[#.]+\] step 1\//);
      p.child.kill(signal);
    }));
    for (const { signal, out, p } of runs) {
      const { code, stderr } = await p.finish();
      assertEquals(code, signal === "SIGTERM" ? 143 : 130, stderr);
      assert(stderr.includes(`${signal} received`), stderr);
      const m = /stopped at epoch 1, step (\d+)\/1000 \(global step (\d+)\): checkpoint (\S+);/
        .exec(stderr);
      assert(m, stderr);
      const step = Number(m[2]);
      assert(step >= 1 && step < stepsPerEpoch, `stopped mid-epoch, at step ${step}`);
      // latest.json names the checkpoint the signal wrote: no epoch had ended, so no other exists.
      const latest = JSON.parse(await Deno.readTextFile(`${out}/latest.json`));
      const { files: _files, ...named } = latest;
      assertEquals(named, { checkpoint: m[3], epoch: 0, step });
      const state = JSON.parse(
        await Deno.readTextFile(`${out}/${latest.checkpoint}/state.json`),
      );
      assertEquals([state.epoch, state.stepInEpoch, state.globalStep], [0, step, step]);
      const { net, metadata } = await loadModel(`${out}/${latest.checkpoint}`);
      disposeUNet(net);
      assertEquals(metadata.step, String(step));
    }

    const bad = await runMain(["train", "--out", `${dir}/x`, "--data", data, "--crop", "12"]);
    assertEquals(bad.code, 2);
    assert(bad.stderr.includes("--crop 12 must be a multiple of 8"), bad.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train CLI: usage errors name the flag", async () => {
  for (
    const [args, text] of [
      [["train", "--data", "x"], "--out is required"],
      [["train", "--out", "x"], "--data is required"],
      [["train", "--data", "x", "--out", "y", "--optimizer", "rms"], "--optimizer"],
      [["train", "--data", "x", "--out", "y", "--config", "{bad"], "--config"],
      [["train", "--data", "x", "--out", "y", "--epochs", "0"], "--epochs"],
      [["train", "--data", "x", "--out", "y", "--crop", "auto"], "--crop auto needs --budget"],
      [["train", "--data", "x", "--out", "y", "--budget", "4"], "--budget is only used"],
      [["train", "--data", "x", "--out", "y", "--crop", "auto", "--budget", "0.001"], "too small"],
    ] as [string[], string][]
  ) {
    const r = await runMain(args);
    assertEquals(r.code, 2, r.stderr);
    assert(r.stderr.includes(text), `${args.join(" ")}: ${r.stderr}`);
  }
});

Deno.test("train --crop auto picks the largest crop whose measured step fits the budget", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    const r = await runMain([
      "train",
      "--data",
      data,
      "--out",
      dir,
      "--crop",
      "auto",
      "--budget",
      "0.1",
      "--epochs",
      "1",
      "--steps-per-epoch",
      "1",
      "--val-cases",
      "0",
      "--quiet",
      "--config",
      JSON.stringify({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
    ]);
    assertEquals(r.code, 0, r.stderr);
    const m = /--crop auto: (\d+) \(predicted peak ([\d.]+) GiB of 0\.10 GiB/.exec(r.stderr);
    assert(m, r.stderr);
    const crop = Number(m[1]);
    assert(crop >= 16 && crop % 2 === 0 && Number(m[2]) <= 0.1, r.stderr);
    const latest = JSON.parse(await Deno.readTextFile(`${dir}/latest.json`));
    const state = JSON.parse(await Deno.readTextFile(`${dir}/${latest.checkpoint}/state.json`));
    assertEquals(state.settings.crop, crop);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
