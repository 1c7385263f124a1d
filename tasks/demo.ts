/**
 * `demo`: the embedded default run — no data, storage or GPU needed. It generates a small
 * BraTS-like dataset, lists and inspects it, trains the reversible U-Net briefly on CPU, saves the
 * model, reloads it and scores it on a held-out case.
 * @module
 */
import * as tf from "../model/tf.ts";
import {
  createUNet,
  disposeUNet,
  Optimizer,
  predictLogits,
  REFERENCE_CONFIG,
  resolveConfig,
  trainStep,
} from "../model/mod.ts";
import { selectBackend } from "../model/backend.ts";
import { findCases } from "../pipeline/cases.ts";
import { loadModel, modelFileUri, saveModel } from "../pipeline/model_store.ts";
import { inspectNifti } from "../pipeline/nifti.ts";
import { writePhantomDataset } from "../pipeline/phantom.ts";
import { seededRandom } from "../pipeline/random.ts";
import { cropCube, loadCase, type LoadedCase } from "../pipeline/preprocess.ts";
import { getObject, joinUri } from "../pipeline/storage.ts";
import { backendFlag, type Command, intFlag, parseFlags, printJson, UsageError } from "./_cli.ts";

function randomCrop(
  c: LoadedCase,
  crop: number,
  rand: () => number,
  tumor: boolean,
): [number, number, number] {
  const [nx, ny, nz] = c.dims;
  if (tumor && c.target) {
    const hits: number[] = [];
    for (let i = 0; i < nx * ny * nz; i++) if (c.target[3 * i]) hits.push(i);
    if (hits.length > 0) {
      const i = hits[Math.floor(rand() * hits.length)];
      const p = [i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))];
      return p.map((v, k) =>
        Math.min(Math.max(v - Math.floor(crop / 2), 0), Math.max(c.dims[k] - crop, 0))
      ) as [
        number,
        number,
        number,
      ];
    }
  }
  return c.dims.map((d) => Math.floor(rand() * Math.max(d - crop + 1, 1))) as [
    number,
    number,
    number,
  ];
}

function dice(
  pred: Float32Array | Int32Array | Uint8Array,
  truth: Float32Array,
  region: number,
): number {
  let inter = 0;
  let p = 0;
  let t = 0;
  for (let i = region; i < truth.length; i += 3) {
    const a = pred[i] > 0 ? 1 : 0;
    inter += a * truth[i];
    p += a;
    t += truth[i];
  }
  return p + t === 0 ? 1 : (2 * inter) / (p + t);
}

export const demoCommand: Command = {
  name: "demo",
  summary: "Run the embedded default end to end: generate cases, list, inspect, train, save, score",
  help:
    `Usage: deno task demo [--out DIR] [--cases N] [--steps N] [--crop N] [--seed N] [--backend B]

Generates N small BraTS-like cases (procedural phantoms, 2021 naming) under <out>/data, lists and
inspects them, trains the reversible U-Net (reference configuration) for a few steps on random
crops (a third forced to contain tumor) of all but the last case, saves it to <out>/model, reloads
it and prints the Dice of WT/TC/ET on a crop of the held-out case. Prints one JSON summary line.
Needs nothing but this repository: local storage, generated data, CPU.

Options:
  --out DIR      output folder or s3:// prefix (default out/demo)
  --cases N      cases to generate (default 3, at least 2)
  --steps N      training steps (default 16)
  --crop N       crop edge, a multiple of 8 (default 16)
  --seed N       seed of the data, the weights and the crops (default 0)
  --backend B    auto|tensorflow|webgpu|wasm|cpu (default cpu)

Example:
  deno task demo --steps 30`,
  async run(args) {
    const { values } = parseFlags("demo", args, {
      out: { type: "string" },
      cases: { type: "string" },
      steps: { type: "string" },
      crop: { type: "string" },
      seed: { type: "string" },
      backend: { type: "string" },
    });
    const out = values.out ?? "out/demo";
    const nCases = intFlag("cases", values.cases, 3, 2, 100);
    const steps = intFlag("steps", values.steps, 16, 0, 100000);
    const crop = intFlag("crop", values.crop, 16, 8, 256);
    const seed = intFlag("seed", values.seed, 0, 0);
    if (crop % 8 !== 0) throw new UsageError(`--crop must be a multiple of 8, got ${crop}`);
    const log = (m: string) => console.error(`demo: ${m}`);
    const backend = await selectBackend(backendFlag(values.backend), log);

    const dataUri = joinUri(out, "data");
    log(`writing ${nCases} phantom cases (48x48x40) to ${dataUri}`);
    await writePhantomDataset(dataUri, { cases: nCases, dims: [48, 48, 40], seed });
    const { cases, problems } = await findCases(dataUri);
    if (problems.length > 0 || cases.length !== nCases) {
      throw new Error(
        `demo: expected ${nCases} cases under ${dataUri}, found ${cases.length} (${
          problems.map((p) => p.error).join("; ")
        })`,
      );
    }
    const inspection = inspectNifti(await getObject(cases[0].images.flair), cases[0].images.flair);
    log(
      `${cases.length} cases found; ${cases[0].id} flair: dims ${inspection.dims}, mean ${
        inspection.mean.toFixed(1)
      }`,
    );

    const loaded = await Promise.all(cases.map(loadCase));
    const train = loaded.slice(0, -1);
    const heldOut = loaded[loaded.length - 1];
    const net = createUNet(resolveConfig(REFERENCE_CONFIG), { seed });
    const opt = new Optimizer({ kind: "adam" });
    const rand = seededRandom(seed + 17);
    const losses: number[] = [];
    const t0 = performance.now();
    for (let s = 0; s < steps; s++) {
      const c = train[s % train.length];
      const start = randomCrop(c, crop, rand, s % 3 === 0);
      const x = tf.tensor5d(cropCube(c.image, c.dims, 4, start, crop), [1, crop, crop, crop, 4]);
      const y = tf.tensor5d(cropCube(c.target!, c.dims, 3, start, crop), [1, crop, crop, crop, 3]);
      losses.push(trainStep(net, opt, x, y, 3e-3));
      tf.dispose([x, y]);
      log(`step ${s + 1}/${steps} loss ${losses[s].toFixed(4)}`);
    }
    const seconds = (performance.now() - t0) / 1000;
    const modelUri = joinUri(out, "model");
    await saveModel(modelUri, net, opt, { trained_steps: String(steps) });
    opt.dispose();
    disposeUNet(net);

    const { net: reloaded } = await loadModel(modelUri);
    const start = randomCrop(heldOut, crop, rand, true);
    const x = tf.tensor5d(cropCube(heldOut.image, heldOut.dims, 4, start, crop), [
      1,
      crop,
      crop,
      crop,
      4,
    ]);
    const logits = predictLogits(reloaded, x);
    const pred = await logits.data();
    const truth = cropCube(heldOut.target!, heldOut.dims, 3, start, crop);
    tf.dispose([x, logits]);
    disposeUNet(reloaded);
    const scores = { WT: dice(pred, truth, 0), TC: dice(pred, truth, 1), ET: dice(pred, truth, 2) };
    log(
      `saved ${modelFileUri(modelUri)}; held-out ${heldOut.id} Dice WT ${scores.WT.toFixed(3)} TC ${
        scores.TC.toFixed(3)
      } ET ${scores.ET.toFixed(3)}`,
    );
    printJson({
      backend: backend.name,
      data: dataUri,
      cases: cases.map((c) => c.id),
      inspect: inspection,
      train: {
        steps,
        crop,
        seconds: Number(seconds.toFixed(1)),
        first_loss: losses[0] ?? null,
        last_loss: losses.at(-1) ?? null,
      },
      model: modelFileUri(modelUri),
      held_out: { case: heldOut.id, dice: scores },
    });
  },
};
