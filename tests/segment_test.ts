import * as tf from "../model/tf.ts";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import {
  createUNet,
  disposeUNet,
  inferenceFitEdges,
  inferenceModel,
  predictPeak,
  resolveConfig,
} from "../model/mod.ts";
import { findCases } from "../pipeline/cases/cases.ts";
import {
  loadModel,
  modelMetadataRecord,
  resolveModel,
  saveModel,
  sha256Hex,
} from "../pipeline/training/model_store.ts";
import { EVAL_REGIONS, evaluatePair, METRICS } from "../pipeline/evaluation/evaluation.ts";
import { decodeNifti, encodeNifti, scaledData } from "../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../pipeline/synth/phantom.ts";
import {
  deleteObject,
  exists,
  getObject,
  listObjects,
  putObject,
} from "../pipeline/storage/objects.ts";
import { writeSynthDataset } from "../pipeline/synth/synth.ts";
import { probabilitiesToLabels } from "../pipeline/labels.ts";
import { keepLargestComponent } from "../pipeline/inference/postprocess.ts";
import { connectedComponents } from "../pipeline/evaluation/lesion_wise.ts";
import { segment, Segmenter } from "../pipeline/segmentation/mod.ts";
import { defaultSettings, train } from "../pipeline/training/mod.ts";
import { inShard } from "../pipeline/cases/shard.ts";
import { runMain } from "./_cli.ts";
import { HAS_NIBABEL, PYTHON } from "./_nifti_fixtures.ts";
import { S3RVER_CREDENTIALS, startS3rver } from "./_s3rver.ts";

await tf.setBackend("cpu");

const TINY = { levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 };

async function readJson(uri: string) {
  return JSON.parse(new TextDecoder().decode(await getObject(uri)));
}

/** Checks a `<case>.metrics.json`: the case, its files, and finite values of every metric. */
function assertMetricsRecord(m: Record<string, unknown>, id: string, reference: string): void {
  assertEquals(m.case, id);
  assertEquals(m.reference, reference);
  for (const r of EVAL_REGIONS) {
    for (const k of METRICS) {
      const v = (m[r] as Record<string, number>)[k];
      assert(Number.isFinite(v), `${id} ${r} ${k} = ${v}`);
    }
  }
}

/** A tiny random network saved as `<dir>/model` with a 16³ training crop. */
async function tinyModel(dir: string, seed = 2): Promise<string> {
  const net = createUNet(resolveConfig(TINY), { seed, zeroInitResidual: false });
  await saveModel(`${dir}/model`, net, undefined, { train_crop: "16" });
  disposeUNet(net);
  return `${dir}/model`;
}

Deno.test("probabilitiesToLabels: WT→2, TC→1, ET→4 or 3, each overwriting; small ET becomes necrosis", () => {
  const probs = Float32Array.from([
    0.1,
    0.1,
    0.1, // background
    0.9,
    0.1,
    0.1, // edema
    0.9,
    0.9,
    0.1, // necrosis
    0.9,
    0.9,
    0.9, // enhancing
    0.2,
    0.2,
    0.9, // ET alone still counts as ET (nnU-Net order)
  ]);
  assertEquals([...probabilitiesToLabels(probs, 4)], [0, 2, 1, 4, 4]);
  assertEquals([...probabilitiesToLabels(probs, 3)], [0, 2, 1, 3, 3]);
  assertEquals(
    [...probabilitiesToLabels(probs, 4, 3)],
    [0, 2, 1, 1, 1],
    "2 ET voxels < 3 → necrosis",
  );
  assertEquals([...probabilitiesToLabels(probs, 4, 2)], [0, 2, 1, 4, 4]);
});

/**
 * A training run's layout under `root`: `best/` and one checkpoint folder, each with a tiny
 * network, `latest.json`, and a `.safetensors` file elsewhere.
 */
async function runLayout(root: string): Promise<void> {
  const net = createUNet(resolveConfig(TINY), { seed: 3, zeroInitResidual: false });
  await saveModel(joinPath(root, "run/best"), net, undefined, { train_crop: "16" });
  await saveModel(joinPath(root, "run/checkpoints/epoch-0001-step-0000002"), net);
  await saveModel(joinPath(root, "weights/final.safetensors"), net);
  disposeUNet(net);
  await putObject(joinPath(root, "run/latest.json"), "{}\n");
  await putObject(joinPath(root, "unfinished/latest.json"), "{}\n");
}

function joinPath(root: string, rel: string): string {
  return root.endsWith("/") ? root + rel : `${root}/${rel}`;
}

/** resolveModel() over {@linkcode runLayout} at `root` (a local folder or an s3:// prefix). */
async function checkResolveModel(root: string): Promise<void> {
  const at = (rel: string) => joinPath(root, rel);
  const run = await resolveModel(at("run"));
  assertEquals([run.kind, run.uri], ["run", at("run/best/model.safetensors")]);
  assertStringIncludes(run.note!, "training run: using its best/");
  for (const rel of ["run/", "run/best", "run/best/"]) {
    const r = await resolveModel(at(rel));
    assertEquals(r.uri, at("run/best/model.safetensors"), rel);
  }
  const ckpt = await resolveModel(at("run/checkpoints/epoch-0001-step-0000002"));
  assertEquals(
    [ckpt.kind, ckpt.uri],
    ["folder", at("run/checkpoints/epoch-0001-step-0000002/model.safetensors")],
  );
  assertEquals(ckpt.note, undefined);
  for (const rel of ["run/best/model.safetensors", "weights/final.safetensors"]) {
    assertEquals(await resolveModel(at(rel)), { uri: at(rel), kind: "file" });
  }
  for (const rel of ["nothing", "weights", "weights/missing.safetensors", "run/checkpoints"]) {
    const e = await assertRejects(() => resolveModel(at(rel)), Error);
    for (
      const accepted of [
        `No model at "${at(rel)}"`,
        "training run folder",
        "best/",
        "checkpoint folder",
        ".safetensors",
      ]
    ) assertStringIncludes(e.message, accepted, rel);
  }
  if (root.startsWith("s3://")) {
    // A bare bucket is a folder: listed as one, not HEAD-ed as an object.
    const bucket = root.slice(0, root.indexOf("/", 5));
    const e = await assertRejects(() => resolveModel(bucket), Error);
    assertStringIncludes(e.message, `No model at "${bucket}"`);
  }
  const unfinished = await assertRejects(() => resolveModel(at("unfinished")), Error);
  assertStringIncludes(unfinished.message, "a training run with no best/ yet");
}

Deno.test("resolveModel() takes a run folder (its best/), best/, a checkpoint or the file; else lists them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await runLayout(dir);
    await checkResolveModel(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resolveModel() on s3rver: run folder, best/, checkpoint, file, and the error", async () => {
  await using _s3 = await startS3rver({ buckets: ["models"] });
  await runLayout("s3://models/team");
  await checkResolveModel("s3://models/team");
});

Deno.test("segment --model <run folder> uses its best/ and says so; a wrong --model lists what is accepted", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await runLayout(dir);
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [20, 20, 16], seed: 4 });
    const run = await runMain([
      "segment",
      "--model",
      `${dir}/run`,
      "--input",
      `${dir}/data`,
      "--out",
      `${dir}/seg`,
      "--json",
    ]);
    assertEquals(run.code, 0, run.stderr);
    assertStringIncludes(
      run.stderr,
      `segment: ${dir}/run is a training run: using its best/ weights (${dir}/run/best/model.safetensors)`,
    );
    assertEquals(JSON.parse(run.stdout).model, `${dir}/run/best/model.safetensors`);
    const wrong = await runMain([
      "segment",
      "--model",
      `${dir}/data`,
      "--input",
      `${dir}/data`,
      "--out",
      `${dir}/seg2`,
    ]);
    assertEquals(wrong.code, 1, wrong.stderr);
    assertStringIncludes(wrong.stderr, `No model at "${dir}/data"`);
    assertStringIncludes(wrong.stderr, "expected a training run folder");
    assertEquals(await exists(`${dir}/seg2`), false, "nothing written for a wrong --model");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("segment: outputs on the input's grid with evaluate's metrics, skipped when done, redone with force, failures recorded then cleared", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 2, dims: [24, 28, 20], seed: 4 });
    const net = createUNet(resolveConfig(TINY), { seed: 2, zeroInitResidual: false });
    await saveModel(`${dir}/model`, net, undefined, { train_crop: "16" });
    disposeUNet(net);
    const opts = { model: `${dir}/model`, input: `${dir}/data`, out: `${dir}/seg` };
    const first = await segment({ ...opts, saveProbabilities: true });
    assertEquals(first.cases.map((c) => c.status), ["done", "done"]);
    assertEquals(first.failed, []);
    const { cases } = await findCases(`${dir}/data`);
    assertEquals(
      first.cases.map((c) => c.metrics),
      cases.map((c) => `${dir}/seg/${c.id}.metrics.json`),
    );
    for (const c of cases) {
      assertMetricsRecord(await readJson(`${dir}/seg/${c.id}.metrics.json`), c.id, c.seg!);
      const seg = decodeNifti(await getObject(`${dir}/seg/${c.id}.nii.gz`), c.id);
      const flair = decodeNifti(await getObject(c.images.flair), c.id);
      assertEquals(seg.header.dims, flair.header.dims);
      assertEquals(seg.header.datatype, "uint8");
      assertEquals(seg.header.affine, flair.header.affine);
      assert(scaledData(seg).every((v) => [0, 1, 2, 4].includes(v)));
      const probs = decodeNifti(await getObject(`${dir}/seg/${c.id}_probabilities.nii.gz`), c.id);
      assertEquals(probs.header.dims, [...flair.header.dims.slice(0, 3), 3]);
    }
    const reported = await segment({ ...opts, report: true });
    assertEquals(reported.report, `${dir}/seg/report/index.html`);
    const html = await Deno.readTextFile(reported.report!);
    for (const c of cases) assert(html.includes(c.id));
    assert(html.includes("data:image/png") && /Dice/i.test(html), "slices and metrics");
    const evaluated = await runMain([
      "evaluate",
      "--pred",
      `${dir}/seg`,
      "--truth",
      `${dir}/data`,
      "--out",
      `${dir}/eval`,
      "--report",
      "--json",
    ]);
    assertEquals(evaluated.code, 0, evaluated.stderr);
    const evaluation = JSON.parse(evaluated.stdout);
    assertEquals(evaluation.cases.length, 2);
    // segment's per-case metrics are evaluate's, to the last bit.
    for (const e of evaluation.cases) {
      const { case: id, ET, TC, WT } = await readJson(`${dir}/seg/${e.case}.metrics.json`);
      assertEquals({ case: id, ET, TC, WT }, e);
    }
    const evalHtml = await Deno.readTextFile(`${dir}/eval/report/index.html`);
    for (const c of cases) assert(evalHtml.includes(c.id));
    assert(evalHtml.includes("data:image/png"), "slices from the dataset's FLAIR");
    const noOut = await runMain(["evaluate", "--pred", "p", "--truth", "t", "--report"]);
    assertEquals(noOut.code, 2);
    assert(noOut.stderr.includes("--report needs --out"), noOut.stderr);
    const again = await segment(opts);
    assertEquals(again.cases.map((c) => c.status), ["skipped", "skipped"]);
    const forced = await segment({ ...opts, force: true });
    assertEquals(forced.cases.map((c) => c.status), ["done", "done"]);
    const otherOptions = await segment({ ...opts, overlap: 0.25 });
    assertEquals(
      otherOptions.cases.map((c) => c.status),
      ["done", "done"],
      "options are part of the key",
    );

    // A broken input: the case fails with its file named, the other case is still segmented.
    const broken = cases[1].images.t2;
    const t2Bytes = await getObject(broken);
    await putObject(broken, t2Bytes.slice(0, 200));
    const r = await runMain([
      "segment",
      "--model",
      `${dir}/model`,
      "--input",
      `${dir}/data`,
      "--out",
      `${dir}/seg2`,
      "--quiet",
    ]);
    assertEquals(r.code, 1, r.stderr);
    assert(r.stderr.includes(cases[1].id), r.stderr);
    assert(await exists(`${dir}/seg2/${cases[0].id}.nii.gz`));
    assert(!(await exists(`${dir}/seg2/${cases[1].id}.nii.gz`)), "no output for the failed case");
    const err = JSON.parse(
      new TextDecoder().decode(await getObject(`${dir}/seg2/${cases[1].id}.error.json`)),
    );
    assert(err.error.includes("t2"), err.error);
    // The input repaired, a re-run succeeds and removes the stale error record.
    await putObject(broken, t2Bytes);
    const retried = await segment({ ...opts, out: `${dir}/seg2` });
    assertEquals(retried.cases.map((c) => c.status), ["skipped", "done"]);
    assertEquals(retried.failed, []);
    assertEquals(await exists(`${dir}/seg2/${cases[1].id}.error.json`), false);

    const usage = await runMain(["segment", "--model", "m", "--input", "i"]);
    assertEquals(usage.code, 2);
    assert(usage.stderr.includes("--out is required"), usage.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "segment: nibabel reads a written segmentation with the input's shape and affine, as uint8",
  ignore: !HAS_NIBABEL,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [24, 28, 20], seed: 4 });
      const model = await tinyModel(dir);
      const r = await segment({ model, input: `${dir}/data`, out: `${dir}/seg` });
      const [c] = (await findCases(`${dir}/data`)).cases;
      assertEquals(r.cases.map((o) => o.output), [`${dir}/seg/${c.id}.nii.gz`]);
      const out = await new Deno.Command(PYTHON, {
        args: [
          "-c",
          "import sys, nibabel as nib, numpy as np; a = nib.load(sys.argv[1]); b = nib.load(sys.argv[2]); " +
          "print(a.shape == b.shape, np.allclose(a.affine, b.affine), a.get_data_dtype() == np.uint8, " +
          "sorted(set(np.unique(np.asarray(a.dataobj)).tolist()) - {0, 1, 2, 4}) == [])",
          `${dir}/seg/${c.id}.nii.gz`,
          c.images.flair,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assertEquals(
        new TextDecoder().decode(out.stdout).trim(),
        "True True True True",
        new TextDecoder().decode(out.stderr),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("segment: cases with a missing modality, two files for one, or modalities on two grids are recorded as error.json, exit 1, per shard", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ids = await writePhantomDataset(`${dir}/data`, { cases: 4, dims: [24, 24, 16], seed: 6 });
    const file = (id: string, part: string, ext = ".nii.gz") =>
      `${dir}/data/${id}/${id}_${part}${ext}`;
    await Deno.remove(file(ids[1], "t1"));
    await Deno.copyFile(file(ids[2], "flair"), file(ids[2], "flair", ".nii"));
    const [other] = await writePhantomDataset(`${dir}/other`, {
      cases: 1,
      dims: [24, 24, 18],
      seed: 6,
    });
    await Deno.copyFile(`${dir}/other/${other}/${other}_t2.nii.gz`, file(ids[3], "t2"));
    const model = await tinyModel(dir);

    const r = await runMain([
      "segment",
      "--model",
      model,
      "--input",
      `${dir}/data`,
      "--out",
      `${dir}/seg`,
      "--json",
      "--quiet",
    ]);
    assertEquals(r.code, 1, r.stderr);
    const result = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    assertEquals(result.cases.map((c: { id: string }) => c.id), [ids[0]]);
    const problems = ids.slice(1);
    assertEquals(result.problems.map((p: { id: string }) => p.id), problems);
    assertEquals(result.failed.map((p: { id: string }) => p.id), problems);
    const why = ["missing modality t1", "more than one file for flair", "dims [24,24,18]"];
    for (const [k, id] of problems.entries()) {
      assert(r.stderr.includes(id), r.stderr);
      const record = await readJson(`${dir}/seg/${id}.error.json`);
      assertEquals(record.case, id);
      assert(record.error.includes(why[k]), record.error);
      assertEquals(await exists(`${dir}/seg/${id}.nii.gz`), false);
    }
    assert(await exists(`${dir}/seg/${ids[0]}.nii.gz`));

    // Sharded, each problem is recorded by the one shard its case belongs to.
    for (const index of [0, 1]) {
      const shard = { index, count: 2 };
      const out = `${dir}/shard${index}`;
      const s = await segment({ model, input: `${dir}/data`, out, shard });
      const mine = problems.filter((id) => inShard(id, shard));
      assertEquals(s.failed.map((f) => f.id), mine);
      for (const id of problems) {
        assertEquals(await exists(`${out}/${id}.error.json`), mine.includes(id));
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("segment --save-probabilities after a run without them writes them; labels first, record last; a reference added later brings metrics", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [24, 24, 16], seed: 7 });
    const model = await tinyModel(dir);
    const [c] = (await findCases(`${dir}/data`)).cases;
    const segBytes = await getObject(c.seg!);
    await deleteObject(c.seg!);
    const opts = { model, input: `${dir}/data`, out: `${dir}/seg` };
    const at = (name: string, out = opts.out) => `${out}/${c.id}${name}`;

    const plain = await segment(opts);
    assertEquals(plain.cases.map((o) => [o.status, o.metrics]), [["done", undefined]]);
    assertEquals(await exists(at("_probabilities.nii.gz")), false);
    assertEquals(await exists(at(".metrics.json")), false, "no reference, no metrics");
    const withProbs = await segment({ ...opts, saveProbabilities: true });
    assertEquals(withProbs.cases.map((o) => o.status), ["done"], "probabilities were missing");
    const probs = decodeNifti(await getObject(at("_probabilities.nii.gz")), c.id);
    assertEquals(probs.header.dims, [24, 24, 16, 3]);
    assertEquals((await readJson(at(".json"))).outputs, [
      at(".nii.gz"),
      at("_probabilities.nii.gz"),
    ]);
    assertEquals((await segment({ ...opts, saveProbabilities: true })).cases[0].status, "skipped");
    assertEquals((await segment(opts)).cases[0].status, "skipped", "the record covers more");

    // The probabilities cannot be written (a folder holds their name): the labels are written,
    // no record (so a re-run redoes the case), the error is recorded; then the re-run completes.
    const out2 = `${dir}/seg2`;
    await Deno.mkdir(at("_probabilities.nii.gz", out2), { recursive: true });
    await Deno.writeTextFile(`${at("_probabilities.nii.gz", out2)}/x`, "in the way");
    const blocked = await segment({ ...opts, out: out2, saveProbabilities: true });
    assertEquals(blocked.failed.map((f) => f.id), [c.id]);
    assert(
      blocked.failed[0].error.includes(`${c.id}_probabilities.nii.gz`),
      blocked.failed[0].error,
    );
    assert(await exists(at(".nii.gz", out2)), "the labels come first");
    assertEquals(await exists(at(".json", out2)), false, "no record over missing outputs");
    assert(await exists(at(".error.json", out2)));
    await Deno.remove(at("_probabilities.nii.gz", out2), { recursive: true });
    const unblocked = await segment({ ...opts, out: out2, saveProbabilities: true });
    assertEquals(unblocked.cases.map((o) => o.status), ["done"]);
    assertEquals(await exists(at(".error.json", out2)), false);
    assert(await exists(at("_probabilities.nii.gz", out2)));

    // The reference arrives: the inputs changed, so the case is redone and scored.
    await putObject(c.seg!, segBytes);
    const scored = await segment(opts);
    assertEquals(scored.cases.map((o) => [o.status, o.metrics]), [["done", at(".metrics.json")]]);
    assertEquals(
      await exists(at("_probabilities.nii.gz")),
      false,
      "redone without --save-probabilities: no probabilities of the previous labels left",
    );
    assertMetricsRecord(await readJson(at(".metrics.json")), c.id, c.seg!);
    assertEquals(
      (await readJson(at(".metrics.json"))).ET,
      (await evaluatePair(at(".nii.gz"), c.seg!)).metrics.ET,
    );

    // A reference that cannot be scored fails the case before anything is written.
    const labels = decodeNifti(segBytes, c.seg!);
    const bad = new Uint8Array(labels.data.length);
    bad[5] = 7;
    await putObject(c.seg!, encodeNifti(bad, "uint8", labels.header, { name: c.seg! }));
    const out3 = `${dir}/seg3`;
    const unscorable = await segment({ ...opts, out: out3 });
    assertEquals(unscorable.failed.map((f) => f.id), [c.id]);
    assert(unscorable.failed[0].error.includes(c.seg!), unscorable.failed[0].error);
    assertEquals(
      (await listObjects(out3)).map((o) => o.key),
      [`${c.id}.error.json`],
      "nothing but the error record",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train, then segment held-out synthetic cases (2023 naming) from and to s3rver, and evaluate them", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(Deno.env.toObject())) if (k.startsWith("AWS_")) env[k] = v;
  const dims: [number, number, number] = [32, 32, 32];
  const training = await writeSynthDataset("s3://brats/train", { cases: 3, seed: 5, dims });
  const heldOut = await writeSynthDataset("s3://brats/heldout", {
    cases: 2,
    seed: 6,
    dims,
    naming: "brats2023",
  });
  const heldIds = heldOut.cases.map((c) => c.id);
  const t0 = performance.now();
  const trained = await train({
    ...defaultSettings("s3://brats/train"),
    epochs: 1,
    stepsPerEpoch: 2,
    crop: 16,
    valWindow: 16,
    valCases: 1,
    config: resolveConfig(TINY),
  }, { out: "s3://brats/run", workers: 0 });
  const trainSeconds = (performance.now() - t0) / 1000;
  const state = await readJson(`s3://brats/run/${trained.checkpoint}/state.json`);
  const seen = [...state.split.train, ...state.split.val].sort();
  assertEquals(seen, training.cases.map((c) => c.id).sort(), "trained on the training set only");

  const seg = await segment({
    model: "s3://brats/run/best",
    input: "s3://brats/heldout",
    out: "s3://brats/seg",
  });
  assertEquals(seg.failed, []);
  assertEquals(seg.cases.map((c) => [c.id, c.status]), heldIds.map((id) => [id, "done"]));
  for (const c of heldOut.cases) {
    const out = decodeNifti(await getObject(`s3://brats/seg/${c.id}.nii.gz`), c.id);
    const flair = decodeNifti(await getObject(c.files.flair), c.files.flair);
    assertEquals(out.header.dims, flair.header.dims);
    assertEquals(out.header.affine, flair.header.affine);
    assertEquals(out.header.datatype, "uint8");
    const present = new Set(scaledData(out));
    assert([...present].every((v) => [0, 1, 2, 3].includes(v)), `2023 labels: ${[...present]}`);
    assertMetricsRecord(await readJson(`s3://brats/seg/${c.id}.metrics.json`), c.id, c.files.seg);
  }

  const ev = await runMain([
    "evaluate",
    "--pred",
    "s3://brats/seg",
    "--truth",
    "s3://brats/heldout",
    "--out",
    "s3://brats/eval",
    "--json",
  ], env);
  assertEquals(ev.code, 0, ev.stderr);
  const evaluation = JSON.parse(ev.stdout);
  assertEquals(evaluation.cases.map((c: { case: string }) => c.case), heldIds);
  assertEquals([evaluation.missing, evaluation.extra], [[], []]);
  for (const e of evaluation.cases) {
    assertMetricsRecord({ ...e, reference: e.case }, e.case, e.case);
  }
  assertEquals(
    JSON.parse(new TextDecoder().decode(await getObject("s3://brats/eval/metrics.json"))),
    evaluation,
  );
  console.log(
    `trained ${trained.steps} steps in ${trainSeconds.toFixed(1)} s; held-out WT Dice ${
      evaluation.cases.map((c: { WT: { dice: number } }) => c.WT.dice.toFixed(3)).join(", ")
    }`,
  );
});

Deno.test("segment --event: the case an S3 notification completes; output keys ignored; malformed → exit 1", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset("s3://brats/in", { cases: 1, dims: [24, 24, 16], seed: 8 });
    const net = createUNet(resolveConfig(TINY), { seed: 3 });
    await saveModel(`${dir}/model`, net, undefined, { train_crop: "16" });
    disposeUNet(net);
    const [c] = (await findCases("s3://brats/in")).cases;
    const key = c.images.t2.replace("s3://brats/", "");
    const event = (k: string) => ({
      Records: [{
        eventVersion: "2.1",
        eventSource: "aws:s3",
        eventName: "ObjectCreated:Put",
        s3: { bucket: { name: "brats" }, object: { key: encodeURIComponent(k), size: 1 } },
      }],
    });
    await Deno.writeTextFile(`${dir}/event.json`, JSON.stringify(event(key)));
    const env = {
      AWS_ENDPOINT_URL_S3: s3.endpoint,
      AWS_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_EC2_METADATA_DISABLED: "true",
    };
    const args = ["segment", "--model", `${dir}/model`, "--out", "s3://brats/seg", "--json"];
    const r = await runMain([...args, "--event", `${dir}/event.json`], env);
    assertEquals(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    assertEquals(out.cases.map((x: { id: string }) => x.id), [c.id]);
    assert(await exists(`s3://brats/seg/${c.id}.nii.gz`));

    await Deno.writeTextFile(`${dir}/own.json`, JSON.stringify(event(`seg/${c.id}.nii.gz`)));
    const own = await runMain([...args, "--event", `${dir}/own.json`], env);
    assertEquals(own.code, 0, own.stderr);
    const ownOut = JSON.parse(own.stdout.trim().split("\n").at(-1)!);
    assertEquals(ownOut.cases, []);
    assertEquals(ownOut.ignored.length, 1);

    await Deno.writeTextFile(`${dir}/bad.json`, '{"Records": [{"s3": {}}]}');
    const before = (await listObjects("s3://brats/seg/")).length;
    const bad = await runMain([...args, "--event", `${dir}/bad.json`], env);
    assertEquals(bad.code, 1, bad.stderr);
    assertEquals((await listObjects("s3://brats/seg/")).length, before, "nothing written");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("segment --largest-component writes the plain output post-processed, and the option is in the skip key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [24, 28, 20], seed: 4 });
    const model = await tinyModel(dir, 5);
    const base = ["segment", "--model", model, "--input", `${dir}/data`, "--quiet"];
    const plain = await runMain([...base, "--out", `${dir}/plain`]);
    assertEquals(plain.code, 0, plain.stderr);
    const kept = await runMain([...base, "--out", `${dir}/kept`, "--largest-component"]);
    assertEquals(kept.code, 0, kept.stderr);
    const { cases: [c] } = await findCases(`${dir}/data`);
    const read = async (out: string) =>
      decodeNifti(await getObject(`${dir}/${out}/${c.id}.nii.gz`), c.id);
    const p = await read("plain");
    const k = await read("kept");
    const dims = p.header.dims.slice(0, 3);
    const expected = new Uint8Array(scaledData(p));
    // (An untrained network paints one blob, so the removal itself is tested in postprocess_test.ts;
    // here: the flag reaches the output, which is the plain one post-processed.)
    keepLargestComponent(expected, dims);
    assertEquals(new Uint8Array(scaledData(k)), expected);
    assert(connectedComponents(expected, dims).count <= 1);
    assertEquals(k.header.affine, p.header.affine);
    // The option is part of the skip key: asked again without it, the case is redone.
    const again = await runMain([...base, "--out", `${dir}/kept`, "--json"]);
    assertEquals(again.code, 0, again.stderr);
    assertEquals(JSON.parse(again.stdout).cases[0].status, "done");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("segment --window auto (the default) is the fixed window it resolves to: same grid, same labels; a small budget caps it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [24, 28, 20], seed: 5 });
    const model = await tinyModel(dir);
    const base = { model, input: `${dir}/data` };
    await segment({ ...base, out: `${dir}/auto` });
    await segment({ ...base, out: `${dir}/fixed`, window: 16 });
    const plan = await inferenceModel(resolveConfig(TINY), inferenceFitEdges(resolveConfig(TINY)));
    // Room for 8³ windows, not 16³ (the native kernels segment loads shift the peaks a little).
    const budget = Math.sqrt(predictPeak(plan, 8) * predictPeak(plan, 16));
    await segment({ ...base, out: `${dir}/small`, window: "auto", memoryBudget: budget });
    const none = await segment({ ...base, out: `${dir}/none`, memoryBudget: 1 });
    assertEquals(none.failed.length, 1);
    assertStringIncludes(none.failed[0].error, "fits the memory budget");
    const { cases: [c] } = await findCases(`${dir}/data`);
    const read = async (o: string) => decodeNifti(await getObject(`${dir}/${o}/${c.id}.nii.gz`), o);
    const [auto, fixed] = [await read("auto"), await read("fixed")];
    assertEquals(auto.header.dims, fixed.header.dims);
    assertEquals(auto.header.affine, fixed.header.affine);
    assertEquals(scaledData(auto), scaledData(fixed));
    assertEquals((await readJson(`${dir}/auto/${c.id}.json`)).options.window, 16);
    const small = await read("small");
    assertEquals(small.header.dims, fixed.header.dims);
    const capped = (await readJson(`${dir}/small/${c.id}.json`)).options.window;
    assert(capped >= 8 && capped < 16 && capped % 2 === 0, `window ${capped}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadModel() gives the training crop and validation window as numbers and the file's SHA-256; Segmenter.load takes them from it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const net = createUNet(resolveConfig(TINY), { seed: 2, zeroInitResidual: false });
    // Written as training writes them: strings, through the one encoder.
    const meta = modelMetadataRecord({ trainCrop: 16, valWindow: 24 });
    assertEquals(meta, { train_crop: "16", val_window: "24" });
    await saveModel(`${dir}/model`, net, undefined, meta);
    await saveModel(`${dir}/odd`, net, undefined, { train_crop: "sixteen", val_window: "-8" });
    const brats = JSON.stringify({ layout: "brats2021", channels: ["flair", "t1"], labels: {} });
    await saveModel(`${dir}/wrong`, net, undefined, { dataset: brats });
    disposeUNet(net);

    const loaded = await loadModel(`${dir}/model`, undefined, { trainable: false });
    const bytes = await Deno.readFile(`${dir}/model/model.safetensors`);
    assertEquals(loaded.info, { trainCrop: 16, valWindow: 24 });
    assertEquals(loaded.uri, `${dir}/model/model.safetensors`);
    assertEquals(loaded.sha256, sha256Hex(bytes));
    assertEquals(loaded.metadata.train_crop, "16");
    disposeUNet(loaded.net);
    // Sizes that are not positive integers are unrecorded, not NaN.
    const odd = await loadModel(`${dir}/odd`);
    assertEquals(odd.info, {});
    disposeUNet(odd.net);
    // A dataset whose channels disagree with the network is refused naming the file.
    const wrong = await assertRejects(() => loadModel(`${dir}/wrong`), RangeError);
    assertStringIncludes(
      wrong.message,
      `${dir}/wrong/model.safetensors: its dataset has 2 channels`,
    );

    const segmenter = await Segmenter.load(`${dir}/model`);
    assertEquals(
      [segmenter.trainedCrop, segmenter.validatedWindow, segmenter.modelSha256],
      [16, 24, sha256Hex(bytes)],
    );
    segmenter.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("segment() prints nothing itself: its messages and window progress go to the progress it is given", async () => {
  const dir = await Deno.makeTempDir();
  const printed: unknown[][] = [];
  const saved = { error: console.error, log: console.log, warn: console.warn };
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [16, 16, 16], seed: 4 });
    // Created (tfjs initialised, its banner printed) before console is watched.
    const model = await tinyModel(dir);
    const opts = { model, input: `${dir}/data`, out: `${dir}/seg`, window: 16 };
    console.error = console.log = console.warn = (...a: unknown[]) => void printed.push(a);
    const silent = await segment(opts);
    const lines: string[] = [];
    const windows: [number, number][] = [];
    const reported = await segment({
      ...opts,
      force: true,
      progress: {
        log: (m) => lines.push(m),
        update: (_l, done, total) => windows.push([done, total]),
      },
    });
    Object.assign(console, saved);
    assertEquals(printed, []);
    assertEquals([silent.failed, reported.failed], [[], []]);
    const id = reported.cases[0].id;
    // The backend chosen, then the case.
    assertEquals(lines.length, 2, lines.join("\n"));
    assertStringIncludes(lines[0], "segment: backend: using cpu");
    assertStringIncludes(lines[1], `segment: ${id} → ${dir}/seg/${id}.nii.gz`);
    assert(
      windows.length > 0 && windows.at(-1)![0] === windows.at(-1)![1],
      JSON.stringify(windows),
    );
  } finally {
    Object.assign(console, saved);
    await Deno.remove(dir, { recursive: true });
  }
});
