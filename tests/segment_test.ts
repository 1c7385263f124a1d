import * as tf from "../model/tf.ts";
import { assert, assertEquals } from "@std/assert";
import { createUNet, disposeUNet, resolveConfig } from "../model/mod.ts";
import { findCases } from "../pipeline/cases.ts";
import { saveModel } from "../pipeline/model_store.ts";
import { decodeNifti, scaledData } from "../pipeline/nifti.ts";
import { writePhantomDataset } from "../pipeline/phantom.ts";
import { exists, getObject, listObjects, putObject } from "../pipeline/storage.ts";
import { writeSynthDataset } from "../pipeline/synth.ts";
import { regionsToLabels, segment } from "../tasks/segment.ts";
import { defaultSettings, train } from "../tasks/train.ts";
import { runMain } from "./_cli.ts";
import { HAS_NIBABEL, PYTHON } from "./_nifti_fixtures.ts";
import { S3RVER_CREDENTIALS, startS3rver } from "./_s3rver.ts";

await tf.setBackend("cpu");

const TINY = { levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 };

Deno.test("regionsToLabels: WT→2, TC→1, ET→4 or 3, each overwriting; small ET becomes necrosis", () => {
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
  assertEquals([...regionsToLabels(probs, 4)], [0, 2, 1, 4, 4]);
  assertEquals([...regionsToLabels(probs, 3)], [0, 2, 1, 3, 3]);
  assertEquals([...regionsToLabels(probs, 4, 3)], [0, 2, 1, 1, 1], "2 ET voxels < 3 → necrosis");
  assertEquals([...regionsToLabels(probs, 4, 2)], [0, 2, 1, 4, 4]);
});

Deno.test("segment: outputs on the input's grid, skipped when done, redone with force, failures recorded", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 2, dims: [24, 28, 20], seed: 4 });
    const net = createUNet(resolveConfig(TINY), { seed: 2, zeroInitResidual: false });
    await saveModel(`${dir}/model`, net, undefined, { train_crop: "16" });
    disposeUNet(net);
    const opts = { model: `${dir}/model`, input: `${dir}/data`, out: `${dir}/seg`, quiet: true };
    const first = await segment({ ...opts, saveProbabilities: true });
    assertEquals(first.cases.map((c) => c.status), ["done", "done"]);
    assertEquals(first.failed, []);
    const { cases } = await findCases(`${dir}/data`);
    for (const c of cases) {
      const seg = decodeNifti(await getObject(`${dir}/seg/${c.id}.nii.gz`), c.id);
      const flair = decodeNifti(await getObject(c.images.flair), c.id);
      assertEquals(seg.header.dims, flair.header.dims);
      assertEquals(seg.header.datatype, "uint8");
      assertEquals(seg.header.affine, flair.header.affine);
      assert(scaledData(seg).every((v) => [0, 1, 2, 4].includes(v)));
      const probs = decodeNifti(await getObject(`${dir}/seg/${c.id}_probabilities.nii.gz`), c.id);
      assertEquals(probs.header.dims, [...flair.header.dims.slice(0, 3), 3]);
      if (HAS_NIBABEL) {
        const out = await new Deno.Command(PYTHON, {
          args: [
            "-c",
            "import sys, nibabel as nib, numpy as np; a = nib.load(sys.argv[1]); b = nib.load(sys.argv[2]); " +
            "print(a.shape == b.shape and np.allclose(a.affine, b.affine) and a.get_data_dtype() == np.uint8)",
            `${dir}/seg/${c.id}.nii.gz`,
            c.images.flair,
          ],
          stdout: "piped",
        }).output();
        assertEquals(new TextDecoder().decode(out.stdout).trim(), "True");
      }
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
    assertEquals(JSON.parse(evaluated.stdout).cases.length, 2);
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
    await putObject(broken, (await getObject(broken)).slice(0, 200));
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

    const usage = await runMain(["segment", "--model", "m", "--input", "i"]);
    assertEquals(usage.code, 2);
    assert(usage.stderr.includes("--out is required"), usage.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train then segment held-out synthetic cases from and to s3rver", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  await writeSynthDataset("s3://brats/data", { cases: 3, seed: 5, dims: [32, 32, 32] });
  const result = await train({
    ...defaultSettings("s3://brats/data"),
    epochs: 1,
    stepsPerEpoch: 2,
    crop: 16,
    valWindow: 16,
    valCases: 1,
    config: resolveConfig(TINY),
  }, { out: "s3://brats/run", quiet: true, workers: 0 });
  assertEquals(result.epochs, 1);
  const seg = await segment({
    model: "s3://brats/run/best",
    input: "s3://brats/data",
    out: "s3://brats/seg",
    quiet: true,
  });
  assertEquals(seg.cases.length, 3);
  const keys = (await listObjects("s3://brats/seg/")).map((o) => o.key).sort();
  assertEquals(keys.filter((k) => k.endsWith(".nii.gz")).length, 3);
  const [c] = (await findCases("s3://brats/data")).cases;
  const out = decodeNifti(await getObject(`s3://brats/seg/${c.id}.nii.gz`), c.id);
  assertEquals(out.header.dims, [32, 32, 32]);
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
