/**
 * `main.ts segment`: outputs, skips, records and failures, --model forms, S3 in and out after
 * training, --event, --largest-component.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { createUNet, disposeUNet, resolveConfig } from "../../model/mod.ts";
import { findCases } from "../../pipeline/cases/cases.ts";
import { saveModel } from "../../pipeline/training/model_store.ts";
import { decodeNifti, scaledData } from "../../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { exists, getObject, listObjects, putObject } from "../../pipeline/storage/objects.ts";
import { writeSynthDataset } from "../../pipeline/synth/synth.ts";
import { keepLargestComponent } from "../../pipeline/inference/postprocess.ts";
import { connectedComponents } from "../../pipeline/evaluation/lesion_wise.ts";
import { segment } from "../../pipeline/segmentation/mod.ts";
import { defaultSettings, train } from "../../pipeline/training/mod.ts";
import { inShard } from "../../pipeline/cases/shard.ts";
import { runMain } from "../_cli.ts";
import { S3RVER_CREDENTIALS, startS3rver } from "../_s3rver.ts";
import {
  assertMetricsRecord,
  readJson,
  runLayout,
  TINY,
  tinyModel,
} from "../segmentation/_segment_fixtures.ts";
import {
  datasetModel,
  DIMS as DATASET_DIMS,
  MSD_DATASET,
  NNUNET_DATASET,
  writeMsdImage,
  writeMsdLabels,
  writeNnunetImage,
} from "../segmentation/_dataset_fixtures.ts";

await tf.setBackend("cpu");

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

Deno.test("segment --event: a case the event names that discovery refuses (two files for one modality) fails as with --input: error record naming the record, exit 1, no output", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const dir = await Deno.makeTempDir();
  try {
    const [id] = await writePhantomDataset("s3://brats/in", {
      cases: 1,
      dims: [24, 24, 16],
      seed: 8,
    });
    const model = await tinyModel(dir);
    const flair = `in/${id}/${id}_flair.nii.gz`;
    const second = `in/${id}/${id}_flair.nii`;
    await putObject(`s3://brats/${second}`, await getObject(`s3://brats/${flair}`));
    const event = {
      Records: [{
        eventVersion: "2.1",
        eventSource: "aws:s3",
        eventName: "ObjectCreated:Put",
        s3: { bucket: { name: "brats" }, object: { key: encodeURIComponent(second), size: 1 } },
      }],
    };
    await Deno.writeTextFile(`${dir}/event.json`, JSON.stringify(event));
    const env = {
      AWS_ENDPOINT_URL_S3: s3.endpoint,
      AWS_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_EC2_METADATA_DISABLED: "true",
    };
    const r = await runMain(
      [
        "segment",
        "--model",
        model,
        "--out",
        "s3://brats/seg",
        "--json",
        "--event",
        `${dir}/event.json`,
      ],
      env,
    );
    // Before: "ignored" on stderr, exit 0, nothing recorded.
    assertEquals(r.code, 1, r.stderr);
    const result = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    assertEquals(result.cases, []);
    assertEquals(result.failed.map((f: { id: string }) => f.id), [id]);
    assertStringIncludes(r.stderr, `s3://brats/${second}`);
    const record = JSON.parse(
      new TextDecoder().decode(await getObject(`s3://brats/seg/${id}.error.json`)),
    );
    assertStringIncludes(record.error, "more than one file for flair");
    assertStringIncludes(record.error, `event record s3://brats/${second}`);
    assertEquals(
      (await listObjects("s3://brats/seg/")).map((o) => o.key),
      [`${id}.error.json`],
      "nothing but the error record",
    );
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

Deno.test("segment --event: nnU-Net channel files wait for the model's channels; an MSD image is a whole case, scored in its task's regions", async () => {
  await using s3 = await startS3rver({ buckets: ["data"] });
  const dir = await Deno.makeTempDir();
  try {
    const env = {
      AWS_ENDPOINT_URL_S3: s3.endpoint,
      AWS_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_EC2_METADATA_DISABLED: "true",
    };
    const event = (k: string) =>
      JSON.stringify({
        Records: [{
          eventVersion: "2.1",
          eventSource: "aws:s3",
          eventName: "ObjectCreated:Put",
          s3: { bucket: { name: "data" }, object: { key: encodeURIComponent(k), size: 1 } },
        }],
      });
    const run = async (model: string, key: string) => {
      await Deno.writeTextFile(`${dir}/event.json`, event(key));
      const r = await runMain(
        [
          ...["segment", "--model", model, "--out", "s3://data/seg", "--json"],
          ...["--event", `${dir}/event.json`],
        ],
        env,
      );
      assertEquals(r.code, 0, r.stderr);
      return { ...JSON.parse(r.stdout.trim().split("\n").at(-1)!), stderr: r.stderr };
    };

    // nnU-Net: the first channel waits (before: "ignored: not a BraTS case file").
    const nnunet = await datasetModel(`${dir}/nnunet`, NNUNET_DATASET, 1);
    const id = "Phantom_007";
    await writeNnunetImage(`s3://data/ds/imagesTs/${id}_0000.nii.gz`, 57, 0);
    const waiting = await run(nnunet, `ds/imagesTs/${id}_0000.nii.gz`);
    assertEquals(waiting.cases, []);
    assertEquals(waiting.waiting.map((w: { id: string }) => w.id), [id]);
    assertStringIncludes(waiting.stderr, "missing channel 0001 (T1)");
    assertEquals(await exists(`s3://data/seg/${id}.nii.gz`), false);
    await writeNnunetImage(`s3://data/ds/imagesTs/${id}_0001.nii.gz`, 57, 1);
    const ready = await run(nnunet, `ds/imagesTs/${id}_0001.nii.gz`);
    assertEquals(ready.cases.map((c: { output: string }) => c.output), [
      `s3://data/seg/${id}.nii.gz`,
    ]);
    const seg = decodeNifti(await getObject(`s3://data/seg/${id}.nii.gz`), id);
    assertEquals(seg.header.dims, [...DATASET_DIMS]);
    assert([...new Set(scaledData(seg))].every((v) => v === 0 || v === 1), "labels in {0, 1}");

    // MSD: one 4-D image under imagesTr with its labelsTr reference.
    const msd = await datasetModel(`${dir}/msd`, MSD_DATASET, 3);
    await writeMsdImage("s3://data/Task01/imagesTr/BRATS_004.nii.gz", 74);
    await writeMsdLabels("s3://data/Task01/labelsTr/BRATS_004.nii.gz", 74);
    const m = await run(msd, "Task01/imagesTr/BRATS_004.nii.gz");
    assertEquals(m.cases.map((c: { metrics: string }) => c.metrics), [
      "s3://data/seg/BRATS_004.metrics.json",
    ]);
    const metrics = await readJson("s3://data/seg/BRATS_004.metrics.json");
    assertEquals(Object.keys(metrics), [
      "case",
      "edema",
      "non-enhancing tumor",
      "enhancing tumour",
      "prediction",
      "reference",
    ]);
    const labels = scaledData(decodeNifti(await getObject("s3://data/seg/BRATS_004.nii.gz"), "m"));
    assert([...new Set(labels)].every((v) => [0, 1, 2, 3].includes(v)), "the task's labels");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
