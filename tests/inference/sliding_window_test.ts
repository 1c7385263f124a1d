/**
 * Tests of sliding-window inference (pipeline/inference/sliding_window.ts) against references built here from
 * tfjs ops: the Gaussian importance map (σ = 1/8 of the window per axis, as nnU-Net), the blend of
 * overlapping windows, and test-time augmentation as the mean of the 8 mirrored predictions.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import {
  autoWindow,
  createUNet,
  disposeUNet,
  inferenceFitEdges,
  inferenceModel,
  maxCropEdge,
  measureInferencePeak,
  predictLogits,
  predictPeak,
  resolveConfig,
  type UNet,
} from "../../model/mod.ts";
import {
  AUTO_OVERLAP_VOXELS,
  autoOverlap,
  gaussianWeights,
  resolveOverlap,
  slidingWindowProbabilities,
  windowShape,
  windowStarts,
} from "../../pipeline/inference/sliding_window.ts";
import { randomNet } from "../_model_fixtures.ts";
import { seededRandom } from "../_grad_check.ts";
import { type Dims, mirrorVolume } from "../../pipeline/volume/mod.ts";
import { TINY } from "../_train_fixtures.ts";
import { unetPredictor } from "../../model/mod.ts";

await tf.setBackend("cpu");

/** A small 2-level network (crop multiple 2) with non-trivial norms and biases. */
const smallNet = (seed: number) =>
  randomNet({ levels: 2, baseChannels: 4, blocksPerLevel: 1 }, seed);

/** A seeded image [z, y, x, c] for `dims` = [x, y, z]. */
function randomImage(dims: Dims, channels: number, seed: number): Float32Array {
  const rand = seededRandom(seed);
  return Float32Array.from(
    { length: dims[0] * dims[1] * dims[2] * channels },
    () => 2 * rand() - 1,
  );
}

/** Sigmoid of the network's logits on one whole [z, y, x, c] volume, as [1, z, y, x, out]. */
function probabilities(net: UNet, x: tf.Tensor5D): tf.Tensor5D {
  return tf.tidy(() => tf.sigmoid(predictLogits(net, x)));
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assertEquals(a.length, b.length, "lengths");
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

Deno.test("gaussianWeights() is exp(-d²/2σ²) per axis with σ = edge/8, floored at 1e-3", () => {
  const shape: Dims = [8, 16, 24]; // x, y, z: anisotropic, so σ differs per axis
  const w = gaussianWeights(shape);
  assertEquals(w.length, 8 * 16 * 24);
  let worst = 0;
  let max = 0;
  for (let z = 0; z < 24; z++) {
    for (let y = 0; y < 16; y++) {
      for (let x = 0; x < 8; x++) {
        const g = (i: number, n: number) =>
          Math.exp(-((i - (n - 1) / 2) ** 2) / (2 * (n / 8) ** 2));
        const expected = Math.max(g(x, 8) * g(y, 16) * g(z, 24), 1e-3);
        const got = w[(z * 16 + y) * 8 + x];
        worst = Math.max(worst, Math.abs(got - expected) / expected);
        max = Math.max(max, got);
      }
    }
  }
  assert(worst < 1e-6, `relative error ${worst}`);
  // Even edges put the centre between voxels, half a voxel from the middle ones on each axis.
  const peak = Math.exp(-(0.5 ** 2) / 2) * Math.exp(-(0.5 ** 2) / 8) * Math.exp(-(0.5 ** 2) / 18);
  assert(Math.abs(max - peak) < 1e-6, `peak ${max}, expected ${peak}`);
  // Along x (σ = 1 voxel at edge 8): symmetric about the centre, falling as exp(-d²/2).
  const at = (x: number) => w[(11 * 16 + 7) * 8 + x];
  assert(Math.abs(at(4) / at(3) - 1) < 1e-6, "symmetric about the centre");
  assert(Math.abs(at(5) / at(4) - Math.exp(-(1.5 ** 2 - 0.5 ** 2) / 2)) < 1e-5, "σ = 1 at edge 8");
});

Deno.test("slidingWindowProbabilities() blends overlapping windows with the Gaussian map", async () => {
  const net = smallNet(11);
  const dims: Dims = [12, 10, 14]; // x, y, z: windows of 8 overlap on every axis
  const image = randomImage(dims, 4, 12);
  const window = 8;
  const got = await slidingWindowProbabilities(unetPredictor(net), image, dims, {
    window,
    overlap: 0.5,
  });
  // Reference: every window through the network, weighted, summed and normalized with tf ops.
  const shape = windowShape(dims, window, 2);
  const weights = tf.tensor(gaussianWeights(shape), [shape[2], shape[1], shape[0], 1]);
  const volume = tf.tensor5d(image, [1, dims[2], dims[1], dims[0], 4]);
  const starts = dims.map((d, a) => windowStarts(d, shape[a], 0.5));
  assertEquals(starts.map((s) => s.length), [2, 2, 3], "windows per axis");
  let sum = tf.zeros([dims[2], dims[1], dims[0], 3]);
  let weightSum = tf.zeros([dims[2], dims[1], dims[0], 1]);
  for (const z of starts[2]) {
    for (const y of starts[1]) {
      for (const x of starts[0]) {
        const pad: [number, number][] = [
          [z, dims[2] - z - shape[2]],
          [y, dims[1] - y - shape[1]],
          [x, dims[0] - x - shape[0]],
          [0, 0],
        ];
        const [s, ws] = tf.tidy(() => {
          const crop = tf.slice(volume, [0, z, y, x, 0], [1, shape[2], shape[1], shape[0], 4]);
          const p = tf.squeeze(probabilities(net, crop as tf.Tensor5D), [0]);
          return [
            tf.add(sum, tf.pad(tf.mul(p, weights), pad)),
            tf.add(weightSum, tf.pad(weights, pad)),
          ];
        });
        tf.dispose([sum, weightSum]);
        sum = s;
        weightSum = ws;
      }
    }
  }
  const expected = tf.tidy(() => tf.div(sum, weightSum));
  const diff = maxAbsDiff(got, expected.dataSync() as Float32Array);
  assert(diff < 1e-5, `max abs difference from the reference blend ${diff}`);
  tf.dispose([weights, volume, sum, weightSum, expected]);
  disposeUNet(net);
});

Deno.test("slidingWindowProbabilities(mirror) is the mean of the 8 mirrored predictions", async () => {
  const net = smallNet(21);
  const dims: Dims = [8, 6, 10]; // one window covers it: the blend is the identity
  const image = randomImage(dims, 4, 22);
  const before = tf.memory().numTensors;
  const tta = await slidingWindowProbabilities(unetPredictor(net), image, dims, {
    window: 16,
    mirror: true,
  });
  const plain = await slidingWindowProbabilities(unetPredictor(net), image, dims, { window: 16 });
  assertEquals(tf.memory().numTensors, before, "tensors leaked");
  const expected = tf.tidy(() => {
    const x = tf.tensor5d(image, [1, dims[2], dims[1], dims[0], 4]);
    let acc = tf.zeros([1, dims[2], dims[1], dims[0], 3]);
    for (let axes = 0; axes < 8; axes++) {
      // Bits 1, 2, 4 mirror x, y, z: tensor axes 3, 2, 1.
      const flip = [3, 2, 1].filter((_, b) => axes & (1 << b));
      const mirrored = flip.length ? tf.reverse(x, flip) : x;
      const p = probabilities(net, mirrored as tf.Tensor5D);
      acc = tf.add(acc, flip.length ? tf.reverse(p, flip) : p);
    }
    return tf.div(acc, 8);
  });
  const diff = maxAbsDiff(tta, expected.dataSync() as Float32Array);
  assert(diff < 1e-5, `max abs difference from the mean of the mirrorings ${diff}`);
  // The network is not mirror-symmetric, so averaging the mirrorings changes the result.
  assert(maxAbsDiff(tta, plain) > 1e-3, "mirroring made no difference");
  expected.dispose();
  disposeUNet(net);
});

Deno.test("autoWindow: the validated window, capped by the memory budget's largest, a multiple of the crop step", () => {
  assertEquals(autoWindow({ preferred: 48, maxEdge: 200, multiple: 8 }), 48, "budget ample");
  assertEquals(autoWindow({ preferred: 48, maxEdge: 44, multiple: 8 }), 40, "budget caps it");
  assertEquals(autoWindow({ preferred: 50, maxEdge: 200, multiple: 8 }), 48, "rounded down");
  assertEquals(autoWindow({ preferred: 4, maxEdge: 200, multiple: 8 }), 8, "at least one step");
  assertThrows(
    () => autoWindow({ preferred: 48, maxEdge: 0, multiple: 8 }),
    RangeError,
    "not even a 8³ window fits",
  );
});

Deno.test("inference memory plan: windows 16 and 24 predict the largest window under a budget, and its measured peak fits", async () => {
  const cfg = resolveConfig({ levels: 2, baseChannels: 8, blocksPerLevel: 2 });
  const model = await inferenceModel(cfg, inferenceFitEdges(cfg));
  assertEquals(model.measured.map((m) => m.crop), [16, 24]);
  assert(model.fit.slope > 0, JSON.stringify(model.fit));
  const budget = predictPeak(model, 40) * 1.01;
  const edge = maxCropEdge(model, budget, 8);
  assertEquals(edge, 40);
  const measured = await measureInferencePeak(cfg, edge);
  assert(measured <= budget, `measured ${measured} > budget ${budget}`);
  assert(measured > predictPeak(model, 32), "and a larger window than the next step down");
  assertEquals(autoWindow({ preferred: 64, maxEdge: edge, multiple: 8 }), 40);
});

Deno.test("slidingWindowProbabilities() runs any predict function: a voxel-wise one comes back unchanged, a wrong-sized answer is an error", async () => {
  const dims: Dims = [13, 11, 9];
  const n = dims[0] * dims[1] * dims[2];
  const rand = seededRandom(11);
  const image = Float32Array.from({ length: n * 2 }, () => rand());
  const calls: number[] = [];
  // Probability = the first input channel: the Gaussian-weighted mean of equal values is that value.
  const voxelwise = {
    inChannels: 2,
    outChannels: 1,
    multiple: 4,
    predict(input: Float32Array, count: number, shape: readonly [number, number, number]) {
      calls.push(count);
      const v = shape[0] * shape[1] * shape[2] * count;
      return Promise.resolve(Float32Array.from({ length: v }, (_, i) => input[i * 2]));
    },
  };
  const got = await slidingWindowProbabilities(voxelwise, image, dims, { window: 8, batch: 3 });
  assertEquals(got.length, n);
  for (let i = 0; i < n; i++) assert(Math.abs(got[i] - image[i * 2]) < 1e-6, `voxel ${i}`);
  assert(calls.length > 1 && calls.every((c) => c >= 1 && c <= 3), `batches of ≤ 3: ${calls}`);
  const short = { ...voxelwise, predict: () => Promise.resolve(new Float32Array(5)) };
  const err = await slidingWindowProbabilities(short, image, dims, { window: 8 }).catch((e) => e);
  assert(err instanceof RangeError && /predict returned 5 values/.test(err.message), String(err));
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

Deno.test('overlap "auto": 0.5 up to AUTO_OVERLAP_VOXELS of windows, else 0.25, and slidingWindowProbabilities runs what it resolves to', async () => {
  // The rule: windows at 0.5 times the window's voxels against the limit, on the volume's extent.
  const covered = (dims: Dims, w: number) =>
    dims.reduce((p, d) => p * windowStarts(d, Math.min(w, d), 0.5).length, 1) * w ** 3;
  assertEquals(covered([137, 173, 135], 32), 640 * 32 ** 3);
  assertEquals(autoOverlap([137, 173, 135], 32, 16), 0.25, "a whole brain box at 32³");
  assertEquals(autoOverlap([137, 173, 135], 48, 16), 0.25, "175 windows of 48³");
  assertEquals(autoOverlap([96, 96, 72], 32, 16), 0.5, "100 windows of 32³");
  // Few windows, many voxels: the limit is on voxels covered, not on windows.
  assertEquals(covered([256, 256, 128], 128), 9 * 128 ** 3);
  assertEquals(autoOverlap([256, 256, 128], 128, 16), 0.25, "9 windows of 128³ (18.9 M)");
  // Exactly at the limit is still 0.5; one window more is not.
  assertEquals(covered([64, 160, 288], 64), AUTO_OVERLAP_VOXELS, "1·4·8 windows of 64³");
  assertEquals(autoOverlap([64, 160, 288], 64, 16), 0.5);
  assertEquals(covered([64, 160, 320], 64), AUTO_OVERLAP_VOXELS * 9 / 8);
  assertEquals(autoOverlap([64, 160, 320], 64, 16), 0.25);
  assertEquals(resolveOverlap(0.1, [137, 173, 135], 32, 16), 0.1, "a number is kept");

  // Through the blend: "auto" on a large extent runs the windows of 0.25 and their result.
  const dims: Dims = [120, 112, 112];
  const image = randomImage(dims, 1, 3);
  const echo = (calls: number[]) => ({
    inChannels: 1,
    outChannels: 1,
    multiple: 4,
    predict(input: Float32Array, count: number) {
      calls.push(count);
      return Promise.resolve(input.map((v) => 1 / (1 + Math.exp(-v))));
    },
  });
  assertEquals(autoOverlap(dims, 8, 4), 0.25, "29·27·27 windows of 8³ at 0.5 (10.8 M voxels)");
  const runs: Record<string, number[]> = { auto: [], quarter: [], half: [] };
  const auto = await slidingWindowProbabilities(echo(runs.auto), image, dims, {
    window: 8,
    overlap: "auto",
  });
  const quarter = await slidingWindowProbabilities(echo(runs.quarter), image, dims, {
    window: 8,
    overlap: 0.25,
  });
  await slidingWindowProbabilities(echo(runs.half), image, dims, { window: 8 });
  assertEquals(runs.auto.length, runs.quarter.length);
  assertEquals(runs.half.length, 29 * 27 * 27, "the default of the function stays 0.5");
  assert(runs.auto.length < runs.half.length / 2, `${runs.auto.length} windows`);
  assertEquals(auto, quarter);
});
