import * as tf from "../../model/tf.ts";
import { assert, assertAlmostEquals, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { findCases } from "../../pipeline/cases/cases.ts";
import {
  caseKey,
  decodeCachedCase,
  encodeCachedCase,
  loadPreprocessed,
  sharedCase,
} from "../../pipeline/cases/case_cache.ts";
import {
  gaussianWeights,
  slidingWindowProbabilities,
  windowStarts,
} from "../../pipeline/inference/sliding_window.ts";
import { regionChannels } from "../../pipeline/labels.ts";
import { regionDice } from "../../pipeline/evaluation/metrics.ts";
import { loadModel } from "../../pipeline/training/model_store.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { batchForStep, BatchPrefetcher } from "../../pipeline/cases/prefetch.ts";
import {
  loadCase,
  preprocessCase,
  type PreprocessedCase,
} from "../../pipeline/cases/preprocess.ts";
import { streamRandom } from "../../pipeline/cases/random.ts";
import { sampleBatch, sampleCrop, tumorVoxels } from "../../pipeline/cases/sampling.ts";
import { getObject, listObjects, putObject } from "../../pipeline/storage/objects.ts";
import { renderCurves } from "../../pipeline/report/plot.ts";
import { createUNet, disposeUNet, predictLogits } from "../../model/mod.ts";
import { splitCases, train } from "../../pipeline/training/mod.ts";
import { runMain } from "../_cli.ts";
import { phantomDataset, spawnTrain, TINY, tinySettings, weightsOf } from "../_train_fixtures.ts";
import { boundingBox, type Dims, mirrorVolume, uncropBox } from "../../pipeline/volume/mod.ts";
import { unetPredictor } from "../../model/mod.ts";

await tf.setBackend("cpu");

/** The phantom dataset of this file's tests. */
const dataset = () => phantomDataset("revunet-train-");

function syntheticCase(size: Dims, seed: number): PreprocessedCase {
  const n = size[0] * size[1] * size[2];
  const rand = streamRandom(seed, 0);
  const regions = new Uint8Array(n);
  const image = new Float32Array(n * 4);
  const c = size.map((s) => s / 2);
  let i = 0;
  for (let z = 0; z < size[2]; z++) {
    for (let y = 0; y < size[1]; y++) {
      for (let x = 0; x < size[0]; x++, i++) {
        const r = Math.hypot(x - c[0] * 1.2, y - c[1], z - c[2]);
        regions[i] = r < 2 ? 7 : r < 3 ? 3 : r < 4 ? 1 : 0;
        // channel 0 marks whole tumor so that alignment of image and target can be checked
        image[4 * i] = regions[i] & 1;
        for (let k = 1; k < 4; k++) image[4 * i + k] = rand();
      }
    }
  }
  return {
    id: `c${seed}`,
    dims: size,
    box: { start: [0, 0, 0], size },
    stats: [],
    image,
    regions,
  };
}

Deno.test("boundingBox finds the nonzero voxels' box, or the whole grid when there are none", () => {
  const dims: Dims = [5, 4, 3];
  const mask = new Uint8Array(60);
  mask[(1 * 4 + 2) * 5 + 1] = 1; // x1 y2 z1
  mask[(2 * 4 + 3) * 5 + 3] = 1; // x3 y3 z2
  assertEquals(boundingBox(mask, dims), { start: [1, 2, 1], size: [3, 2, 2] });
  assertEquals(boundingBox(new Uint8Array(60), dims), { start: [0, 0, 0], size: [5, 4, 3] });
});

Deno.test("preprocessCase crops to the brain and uncropBox restores loadCase's full grid exactly", async () => {
  const { cases } = await findCases(await dataset());
  for (const c of cases) {
    const full = await loadCase(c);
    const p = await preprocessCase(c);
    assert(p.box.size.every((s, a) => s <= p.dims[a]));
    assert(
      p.box.size[0] < p.dims[0],
      "the phantom's head does not fill the grid, so the box is smaller",
    );
    assertEquals(p.dims, full.dims);
    const image = uncropBox(p.image, p.box, p.dims, 4);
    assertEquals(image.length, full.image.length);
    let maxDiff = 0;
    for (let i = 0; i < image.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(image[i] - full.image[i]));
    }
    assert(maxDiff < 1e-5, `image differs by ${maxDiff}`);
    assertEquals(regionChannels(uncropBox(p.regions!, p.box, p.dims, 1)), full.target);
    // z-scored over brain voxels: mean 0, std 1 per modality
    for (let k = 0; k < 4; k++) {
      let s = 0, s2 = 0, n = 0;
      for (let i = 0; i < p.image.length / 4; i++) {
        const v = p.image[4 * i + k];
        if (v !== 0) (s += v, s2 += v * v, n++);
      }
      assertAlmostEquals(s / n, 0, 0.05);
      assertAlmostEquals(Math.sqrt(s2 / n), 1, 0.05);
    }
  }
});

Deno.test("case cache: round trip, reused while the inputs are unchanged, rebuilt when one changes or is damaged", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [20, 20, 16], seed: 9 });
    const [c] = (await findCases(`${dir}/data`)).cases;
    const p = await preprocessCase(c);
    const decoded = decodeCachedCase(encodeCachedCase(p, "k"), "x");
    assertEquals(decoded.image, p.image);
    assertEquals(decoded.regions, p.regions);
    assertEquals(decoded.box, p.box);
    assertThrows(
      () => decodeCachedCase(new Uint8Array(40), "bad.rvcase"),
      RangeError,
      "bad.rvcase",
    );

    const cache = `${dir}/cache`;
    const first = await loadPreprocessed(c, cache);
    assertEquals(first.cached, false);
    const second = await loadPreprocessed(c, cache);
    assertEquals(second.cached, true);
    assertEquals(second.case.image, first.case.image);

    const key = await caseKey(c);
    // Rewriting an input (new size and time) changes the key and forces a rebuild.
    const flair = await getObject(c.images.flair);
    await new Promise((r) => setTimeout(r, 20));
    await putObject(c.images.flair, flair);
    await Deno.utime(c.images.flair, new Date(), new Date(Date.now() + 5000));
    assert((await caseKey(c)) !== key, "key changes with the file's modification time");
    assertEquals((await loadPreprocessed(c, cache)).cached, false);
    assertEquals((await loadPreprocessed(c, cache)).cached, true);

    // A damaged entry is rebuilt, not trusted.
    for await (const e of Deno.readDir(cache)) {
      await Deno.writeFile(`${cache}/${e.name}`, new Uint8Array(10));
    }
    assertEquals((await loadPreprocessed(c, cache)).cached, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sampler: about a third of crops forced, every forced crop holds tumor; padding when the box is smaller", () => {
  const c = syntheticCase([20, 18, 16], 1);
  const rand = streamRandom(5, 0);
  const n = 600;
  let forced = 0;
  let unforcedWithTumor = 0;
  for (let i = 0; i < n; i++) {
    const crop = sampleCrop(c, { crop: 8, augment: false }, rand);
    const hasTumor = crop.target.some((v, j) => j % 3 === 0 && v === 1);
    if (crop.forced) {
      forced++;
      assert(hasTumor, "a forced crop holds tumor");
    } else if (hasTumor) unforcedWithTumor++;
  }
  // Binomial(600, 1/3): mean 200, sd 11.5 → ±4.5 sd
  assert(Math.abs(forced - 200) < 52, `${forced} of ${n} forced`);
  assert(unforcedWithTumor < (n - forced) * 0.9, "unforced crops are not all on tumor");
  assertEquals(tumorVoxels(c).length, [...c.regions!].filter((r) => r & 1).length);

  // A box smaller than the crop: the crop holds the whole box, zero-padded around it.
  const small = syntheticCase([6, 5, 4], 2);
  const crop = sampleCrop(small, { crop: 8, augment: false }, streamRandom(1, 1));
  let nonzero = 0;
  for (let i = 0; i < 512; i++) if (crop.image[4 * i + 1] !== 0) nonzero++;
  assertEquals(nonzero, 6 * 5 * 4);
});

Deno.test("augmentation keeps image and target aligned and is the same for the same seed", () => {
  const c = syntheticCase([20, 18, 16], 3);
  for (const spatial of [0, 1]) {
    let agree = 0, total = 0;
    for (let i = 0; i < 20; i++) {
      const opts = {
        crop: 8,
        foregroundFraction: 1,
        augment: { spatial, intensityScale: 0, intensityShift: 0, gamma: 0 },
      };
      const a = sampleCrop(c, opts, streamRandom(11, i));
      const b = sampleCrop(c, opts, streamRandom(11, i));
      assertEquals(a.image, b.image);
      assertEquals(a.target, b.target);
      for (let v = 0; v < 512; v++) {
        total++;
        if ((a.image[4 * v] > 0.5 ? 1 : 0) === a.target[3 * v]) agree++;
      }
    }
    // nearest-voxel targets against trilinear images differ only at some borders
    assert(
      agree / total > (spatial ? 0.9 : 0.9999),
      `agreement ${agree / total} with spatial ${spatial}`,
    );
  }
  // intensity augmentation changes the image, never the target
  const plain = sampleCrop(c, { crop: 8, augment: false }, streamRandom(2, 2));
  const aug = sampleCrop(c, {
    crop: 8,
    augment: { spatial: 0, mirror: 0, intensityScale: 1, intensityShift: 1, gamma: 1 },
  }, streamRandom(2, 2));
  assertEquals(aug.target, plain.target);
  assert(aug.image.some((v, i) => Math.abs(v - plain.image[i]) > 1e-6));
});

Deno.test("prefetch in a worker hands out exactly the batches the main thread would make", async () => {
  const cases = [syntheticCase([16, 14, 12], 1), syntheticCase([12, 16, 14], 2)];
  const options = { batch: 2, seed: 4, sampling: { crop: 8 }, workers: 1, depth: 3 };
  const p = new BatchPrefetcher(cases, options);
  try {
    for (let step = 0; step < 6; step++) {
      const b = await p.next(step);
      const expected = batchForStep(cases, options, step);
      assertEquals(b.image, expected.image);
      assertEquals(b.target, expected.target);
      assertEquals(b.ids, expected.ids);
    }
  } finally {
    p.close();
  }
  const other = sampleBatch(cases, 2, { crop: 8 }, streamRandom(5, 0, 1));
  assert(other.image.some((v, i) => v !== batchForStep(cases, options, 0).image[i]));
});

Deno.test("prefetch uses cases already in shared memory where they are, without a second copy", async () => {
  const c = sharedCase(syntheticCase([16, 14, 12], 1));
  assert(
    c.image.buffer instanceof SharedArrayBuffer && c.regions!.buffer instanceof SharedArrayBuffer,
  );
  const options = { batch: 1, seed: 4, sampling: { crop: 8, augment: false as const }, workers: 1 };
  const p = new BatchPrefetcher([c], options);
  try {
    // Written after the prefetcher took the case: a worker sees it only if it reads the same memory.
    c.image.fill(7);
    const b = await p.next(0);
    assert(b.image.every((v) => v === 7), "the worker read the caller's shared arrays");
  } finally {
    p.close();
  }
  assertEquals(sharedCase(c), c, "a case already in shared memory is returned as it is");
});

Deno.test("loadPreprocessed with shared: the same case in SharedArrayBuffers, from the NIfTI files and from the cache", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [20, 20, 16], seed: 9 });
    const [c] = (await findCases(`${dir}/data`)).cases;
    const plain = (await loadPreprocessed(c)).case;
    assert(!(plain.image.buffer instanceof SharedArrayBuffer));
    for (const expectCached of [false, true]) {
      const r = await loadPreprocessed(c, `${dir}/cache`, { shared: true });
      assertEquals(r.cached, expectCached);
      assert(r.case.image.buffer instanceof SharedArrayBuffer, "image in shared memory");
      assert(r.case.regions!.buffer instanceof SharedArrayBuffer, "regions in shared memory");
      assertEquals([...r.case.image], [...plain.image]);
      assertEquals([...r.case.regions!], [...plain.regions!]);
      assertEquals(r.case.box, plain.box);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sliding window: starts cover the volume; a whole-volume window equals the direct prediction", async () => {
  assertEquals(windowStarts(10, 16, 0.5), [0]);
  assertEquals(windowStarts(32, 16, 0.5), [0, 8, 16]);
  for (const [extent, w] of [[37, 16], [100, 32], [17, 16]]) {
    const s = windowStarts(extent, w, 0.5);
    assertEquals(s[0], 0);
    assertEquals(s.at(-1), extent - w);
    for (let i = 1; i < s.length; i++) assert(s[i] - s[i - 1] <= w / 2, "overlap ≥ 0.5");
  }
  const g = gaussianWeights([8, 8, 8]);
  assert(g[0] < g[(4 * 8 + 4) * 8 + 4], "centre weighs more than a corner");
  const m = mirrorVolume(Float32Array.from([1, 2, 3, 4]), [2, 2, 1], 1, 3);
  assertEquals([...m], [4, 3, 2, 1]);

  const before = tf.memory().numTensors;
  const net = createUNet(TINY, { seed: 1, zeroInitResidual: false });
  const dims: Dims = [16, 16, 16];
  const image = Float32Array.from({ length: 16 ** 3 * 4 }, (_, i) => Math.sin(i * 0.37));
  const viaWindows = await slidingWindowProbabilities(unetPredictor(net), image, dims, {
    window: 16,
  });
  const direct = tf.tidy(() =>
    tf.sigmoid(predictLogits(net, tf.tensor5d(image, [1, 16, 16, 16, 4]))).dataSync()
  );
  let maxDiff = 0;
  for (let i = 0; i < direct.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(direct[i] - viaWindows[i]));
  }
  assert(maxDiff < 1e-5, `max difference ${maxDiff}`);
  const tiled = await slidingWindowProbabilities(unetPredictor(net), image, dims, {
    window: 8,
    batch: 3,
    mirror: true,
  });
  assertEquals(tiled.length, 16 ** 3 * 3);
  assert(tiled.every((v) => v >= 0 && v <= 1));
  disposeUNet(net);
  assertEquals(tf.memory().numTensors, before);
  await assertRejects(
    () => slidingWindowProbabilities(unetPredictor(net), image, dims, { window: 9 }),
    RangeError,
    "multiple",
  );
});

Deno.test("regionDice: nested regions, empty-empty scores 1, reference voxels outside the box missed", () => {
  const regions = Uint8Array.from([7, 3, 1, 0]);
  assertEquals(regionDice(regions, regions), { WT: 1, TC: 1, ET: 1 });
  const none = new Uint8Array(4);
  assertEquals(regionDice(none, new Uint8Array(4)), { WT: 1, TC: 1, ET: 1 });
  assertEquals(regionDice(none, regions).WT, 0);
  // WT: 3 of 3 in the box and 1 outside: 2·3 / (3 + 4); TC: 2·2 / (2 + 2); ET: 2·1 / (1 + 3).
  assertEquals(regionDice(regions, regions, [1, 0, 2]), { WT: 6 / 7, TC: 1, ET: 0.5 });
  assertEquals(regionDice(none, none, [0, 0, 1]), { WT: 1, TC: 1, ET: 0 });
});

Deno.test("splitCases is seeded and disjoint; renderCurves makes an SVG", () => {
  const cases = ["a", "b", "c", "d", "e"].map((id) => ({ id }) as never);
  const s1 = splitCases(cases, 2, 1);
  assertEquals(splitCases(cases, 2, 1), s1);
  assertEquals(s1.val.length, 2);
  assertEquals(new Set([...s1.train, ...s1.val].map((c) => (c as { id: string }).id)).size, 5);
  const svg = renderCurves([{
    title: "t",
    xLabel: "x",
    yLabel: "y",
    series: [{ name: "a<b", color: "#000", points: [[1, 2], [2, NaN], [3, 1]] }],
  }]);
  assert(svg.startsWith("<svg") && svg.includes("a&lt;b") && svg.includes("<path"));
});

Deno.test("train: same seed, same weights; N+M epochs equal N, resume, M; outputs written", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    const settings = tinySettings(data, { epochs: 3, valEvery: 2 });
    const oneWorker = { workers: 1 };
    const a = await train(settings, { out: `${dir}/a`, ...oneWorker, report: true });
    assertEquals(a.report, `${dir}/a/report/index.html`);
    const html = await Deno.readTextFile(a.report!);
    const state = JSON.parse(await Deno.readTextFile(`${dir}/a/${a.checkpoint}/state.json`));
    for (const id of state.split.val) assert(html.includes(id), `report shows ${id}`);
    assert(html.includes("<svg") && html.includes("data:image/png"), "curves and slices");
    assertEquals(a.epochs, 3);
    assertEquals(a.steps, 6);
    assert(!a.interrupted);
    await train(settings, { out: `${dir}/b`, ...oneWorker, workers: 0 });
    const partial = await train(settings, { out: `${dir}/c`, ...oneWorker, stopAfterEpoch: 1 });
    assertEquals(partial.epochs, 1);
    const resumed = await train(settings, { out: `${dir}/c`, ...oneWorker, resume: true });
    assertEquals(resumed.epochs, 3);

    const wa = await weightsOf(`${dir}/a/${a.checkpoint}`);
    const wb = await weightsOf(`${dir}/b/${a.checkpoint}`);
    const wc = await weightsOf(`${dir}/c/${resumed.checkpoint}`);
    for (const [name, v] of wa) {
      assertEquals(wb.get(name), v, `${name}: same seed, same weights (workers 1 vs 0)`);
      assertEquals(wc.get(name), v, `${name}: resumed run equals the uninterrupted one`);
    }
    const metrics = (await Deno.readTextFile(`${dir}/a/metrics.jsonl`)).trim().split("\n").map((
      l,
    ) => JSON.parse(l));
    assertEquals(metrics.map((m) => m.epoch), [1, 2, 3]);
    assert(metrics[1].val_dice && metrics[2].val_dice && !metrics[0].val_dice);
    assertEquals(
      (await Deno.readTextFile(`${dir}/c/metrics.jsonl`)).trim().split("\n").length,
      3,
      "the resumed run's history continues the first one's",
    );
    assert((await Deno.readTextFile(`${dir}/a/curves.svg`)).startsWith("<svg"));
    await loadModel(`${dir}/a/best`).then(({ net }) => disposeUNet(net));
    const kept = [
      ...new Set((await listObjects(`${dir}/a/checkpoints`)).map((o) => o.key.split("/")[0])),
    ]
      .sort();
    assertEquals(kept, ["epoch-0002-step-0000004", "epoch-0003-step-0000006"]);
    await assertRejects(
      () => train(settings, { out: `${dir}/a`, ...oneWorker }),
      Error,
      "already holds a training run",
    );
    await assertRejects(
      () => train(settings, { out: `${dir}/empty`, ...oneWorker, resume: true }),
      Error,
      "no run to resume",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
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
