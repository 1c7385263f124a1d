/**
 * nnU-Net v2 raw datasets, MSD tasks and bare nnU-Net image folders: found by `findCases` (local
 * and S3), trained on with the dataset's own channels and regions, their description kept in the
 * model file, and segmented into the dataset's own label values. Synthetic datasets are written
 * here from phantom cases with the project's NIfTI writer; one test reads the real scans of
 * ../shared/data and skips, saying so, where they are absent.
 */
import * as tf from "../../model/tf.ts";
import { disposeUNet } from "../../model/mod.ts";
import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { caseChannels, datasetShape, findCases } from "../../pipeline/cases/cases.ts";
import { labelScheme, parseDatasetJson } from "../../pipeline/cases/datasets.ts";
import { labelsToRegions, probabilitiesToLabels, regionsToLabels } from "../../pipeline/labels.ts";
import { loadModel, readModelDataset } from "../../pipeline/training/model_store.ts";
import {
  createNiftiHeader,
  decodeNifti,
  encodeNifti,
  scaledData,
} from "../../pipeline/nifti/mod.ts";
import { phantomCase, writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { preprocessCase } from "../../pipeline/cases/preprocess.ts";
import { getObject, putObject } from "../../pipeline/storage/objects.ts";
import { segment } from "../../pipeline/segmentation/mod.ts";
import { train } from "../../pipeline/training/mod.ts";
import { runMain } from "../_cli.ts";
import { startS3rver } from "../_s3rver.ts";
import { tinySettings } from "../_train_fixtures.ts";

await tf.setBackend("cpu");

const DIMS: [number, number, number] = [24, 28, 20];
const AFFINE = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]];
const quiet = { workers: 0 };

async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "datasets-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v, null, 2));

/**
 * An nnU-Net v2 raw dataset of phantom cases: FLAIR and T1 as `_0000`/`_0001`, the whole tumour
 * as float32 0/1 labels (as the published BraTS 2018 ones are), `test` unlabelled cases in imagesTs.
 */
async function writeNnunet(
  root: string,
  o: { train: number; test: number; labelDatatype?: "float32" | "uint8" },
): Promise<string[]> {
  await putObject(
    `${root}/dataset.json`,
    json({
      name: "PhantomWT",
      channel_names: { "0": "FLAIR", "1": "T1" },
      labels: { background: 0, whole_tumor: 1 },
      numTraining: o.train,
      file_ending: ".nii.gz",
    }),
  );
  const header = createNiftiHeader(DIMS, AFFINE, "int16");
  const ids: string[] = [];
  for (let k = 0; k < o.train + o.test; k++) {
    const id = `Phantom_${String(k).padStart(3, "0")}`;
    const c = phantomCase(DIMS, 50 + k);
    const folder = k < o.train ? "imagesTr" : "imagesTs";
    for (const [ch, m] of [["0000", "flair"], ["0001", "t1"]] as const) {
      const uri = `${root}/${folder}/${id}_${ch}.nii.gz`;
      await putObject(uri, encodeNifti(c.images[m], "int16", header, { name: uri }));
    }
    if (k < o.train) {
      const dt = o.labelDatatype ?? "float32";
      const wt = dt === "float32"
        ? Float32Array.from(c.seg, (l) => (l > 0 ? 1 : 0))
        : Uint8Array.from(c.seg, (l) => (l > 0 ? 1 : 0));
      const uri = `${root}/labelsTr/${id}.nii.gz`;
      await putObject(uri, encodeNifti(wt, dt, createNiftiHeader(DIMS, AFFINE, dt), { name: uri }));
    }
    ids.push(id);
  }
  return ids;
}

/** An MSD task of phantom cases: one 4-D int16 image per case, labels 1 edema, 2 NET, 3 ET. */
async function writeMsd(root: string, train: number, test: number): Promise<string[]> {
  const ids: string[] = [];
  const training = [];
  const tests = [];
  const n = DIMS[0] * DIMS[1] * DIMS[2];
  for (let k = 0; k < train + test; k++) {
    const id = `BRATS_${String(k + 1).padStart(3, "0")}`;
    const c = phantomCase(DIMS, 70 + k);
    const image = new Int16Array(4 * n);
    (["flair", "t1", "t1ce", "t2"] as const).forEach((m, v) => image.set(c.images[m], v * n));
    const folder = k < train ? "imagesTr" : "imagesTs";
    const uri = `${root}/${folder}/${id}.nii.gz`;
    await putObject(
      uri,
      encodeNifti(image, "int16", createNiftiHeader([...DIMS, 4], AFFINE, "int16"), { name: uri }),
    );
    if (k < train) {
      // BraTS 2018–2021 (1 necrosis, 2 edema, 4 enhancing) to MSD (1 edema, 2 NET, 3 enhancing).
      const seg = Uint8Array.from(c.seg, (l) => [0, 2, 1, 0, 3][l]);
      const label = `${root}/labelsTr/${id}.nii.gz`;
      await putObject(
        label,
        encodeNifti(seg, "uint8", createNiftiHeader(DIMS, AFFINE, "uint8"), { name: label }),
      );
      training.push({ image: `./imagesTr/${id}.nii.gz`, label: `./labelsTr/${id}.nii.gz` });
    } else tests.push(`./imagesTs/${id}.nii.gz`);
    ids.push(id);
  }
  await putObject(
    `${root}/dataset.json`,
    json({
      name: "BRATS",
      tensorImageSize: "4D",
      modality: { "0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w" },
      labels: {
        "0": "background",
        "1": "edema",
        "2": "non-enhancing tumor",
        "3": "enhancing tumour",
      },
      numTraining: train,
      numTest: test,
      training,
      test: tests,
    }),
  );
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Reading the layouts

Deno.test("findCases() reads an nnU-Net v2 raw dataset: channels in order, labelsTr, imagesTs", async () => {
  await using tmp = await tempDir();
  const root = `${tmp.path}/Dataset900_Phantom`;
  const ids = await writeNnunet(root, { train: 3, test: 1 });
  const listing = await findCases(root);
  assertEquals(listing.problems, []);
  assertEquals(listing.cases.map((c) => c.id), ids);
  for (const c of listing.cases) {
    assertEquals(c.naming, "nnunet");
    assertEquals(caseChannels(c).map((ch) => ch.name), ["FLAIR", "T1"]);
    assertEquals(
      caseChannels(c)[1].uri,
      `${root}/${c.seg ? "imagesTr" : "imagesTs"}/${c.id}_0001.nii.gz`,
    );
    assertEquals(c.shape, DIMS);
    assertEquals(c.dataset?.labels, { background: 0, whole_tumor: 1 });
  }
  assertEquals(listing.cases.map((c) => c.seg !== undefined), [true, true, true, false]);
  assertEquals(listing.cases[0].seg, `${root}/labelsTr/${ids[0]}.nii.gz`);

  // Its imagesTs folder alone: the dataset.json above it still names the channels.
  const ts = await findCases(`${root}/imagesTs`);
  assertEquals(ts.cases.map((c) => [c.id, caseChannels(c).map((ch) => ch.name)]), [
    [ids[3], ["FLAIR", "T1"]],
  ]);

  // A missing channel is a problem naming the channel and its file; the others still list.
  await Deno.remove(`${root}/imagesTr/${ids[1]}_0001.nii.gz`);
  const broken = await findCases(root);
  assertEquals(broken.cases.map((c) => c.id), [ids[0], ids[2], ids[3]]);
  assertEquals(broken.problems.length, 1);
  assertStringIncludes(
    broken.problems[0].error,
    `missing channel 0001 (T1): ${ids[1]}_0001.nii.gz`,
  );
});

Deno.test("findCases() reads a bare folder of <case>_0000 files, channels counted from their indices", async () => {
  await using tmp = await tempDir();
  const ids = await writeNnunet(`${tmp.path}/ds`, { train: 0, test: 2 });
  await Deno.rename(`${tmp.path}/ds/imagesTs`, `${tmp.path}/bare`);
  const listing = await findCases(`${tmp.path}/bare`, { required: true });
  assertEquals(listing.problems, []);
  assertEquals(listing.cases.map((c) => c.id), ids);
  assertEquals(caseChannels(listing.cases[0]).map((ch) => ch.name), ["0", "1"]);
  // Before: no BraTS case file, so "no BraTS cases" (or nothing at all without `required`).
});

Deno.test("findCases() reads an MSD task: its training and test lists, 4-D images split into channels", async () => {
  await using tmp = await tempDir();
  const root = `${tmp.path}/Task01_BrainTumour`;
  const ids = await writeMsd(root, 2, 1);
  // macOS resource forks beside the files, as the published archive has them, are not cases.
  await putObject(`${root}/imagesTr/._${ids[0]}.nii.gz`, new Uint8Array(10));
  const listing = await findCases(root);
  assertEquals(listing.problems, []);
  assertEquals(listing.cases.map((c) => [c.id, c.seg !== undefined]), [
    [ids[0], true],
    [ids[1], true],
    [ids[2], false],
  ]);
  const c = listing.cases[0];
  assertEquals(c.naming, "msd");
  assertEquals(caseChannels(c).map((ch) => [ch.name, ch.volume]), [
    ["FLAIR", 0],
    ["T1w", 1],
    ["t1gd", 2],
    ["T2w", 3],
  ]);
  assertEquals(c.dataset?.labels, {
    background: 0,
    edema: 1,
    "non-enhancing tumor": 2,
    "enhancing tumour": 3,
  });
  assertEquals(c.shape, DIMS);
  // Each channel is the volume of the 4-D file: FLAIR is the phantom's flair.
  const p = await preprocessCase({ ...c, seg: undefined });
  assertEquals(p.stats.length, 4);
  const flair = phantomCase(DIMS, 70).images.flair;
  let brain = 0;
  for (const v of flair) if (v !== 0) brain++;
  const mean = flair.reduce((a, v) => a + v, 0) / brain;
  assert(Math.abs(p.stats[0].mean - mean) < 1e-6 * mean, `${p.stats[0].mean} vs ${mean}`);

  // A listed file that is absent, and a 4-D image with the wrong number of volumes: problems.
  await Deno.remove(`${root}/labelsTr/${ids[1]}.nii.gz`);
  const three = new Int16Array(3 * DIMS[0] * DIMS[1] * DIMS[2]);
  await putObject(
    `${root}/imagesTr/${ids[0]}.nii.gz`,
    encodeNifti(three, "int16", createNiftiHeader([...DIMS, 3], AFFINE, "int16")),
  );
  const bad = await findCases(root);
  assertEquals(bad.cases.map((c) => c.id), [ids[2]]);
  assertEquals(bad.problems.map((p) => p.id), [ids[0], ids[1]]);
  assertStringIncludes(bad.problems[0].error, "must be 4D with its 4 channels");
  assertStringIncludes(bad.problems[1].error, `labelsTr/${ids[1]}.nii.gz not found`);
});

Deno.test("findCases() on s3:// reads nnU-Net and MSD datasets as locally", async () => {
  await using tmp = await tempDir();
  const nn = await writeNnunet(`${tmp.path}/nn`, { train: 2, test: 1 });
  const msd = await writeMsd(`${tmp.path}/msd`, 1, 1);
  await using _s3 = await startS3rver({ buckets: ["data"] });
  for (const sub of ["nn", "msd"]) {
    for await (const e of Deno.readDir(`${tmp.path}/${sub}`)) {
      if (e.isFile) {
        await putObject(
          `s3://data/${sub}/${e.name}`,
          await Deno.readFile(`${tmp.path}/${sub}/${e.name}`),
        );
        continue;
      }
      for await (const f of Deno.readDir(`${tmp.path}/${sub}/${e.name}`)) {
        await putObject(
          `s3://data/${sub}/${e.name}/${f.name}`,
          await Deno.readFile(`${tmp.path}/${sub}/${e.name}/${f.name}`),
        );
      }
    }
  }
  const a = await findCases("s3://data/nn/");
  assertEquals(a.problems, []);
  assertEquals(a.cases.map((c) => c.id), nn);
  assertEquals(a.cases[0].seg, `s3://data/nn/labelsTr/${nn[0]}.nii.gz`);
  assertEquals(caseChannels(a.cases[0]).map((c) => c.uri), [
    `s3://data/nn/imagesTr/${nn[0]}_0000.nii.gz`,
    `s3://data/nn/imagesTr/${nn[0]}_0001.nii.gz`,
  ]);
  const ts = await findCases("s3://data/nn/imagesTs/");
  assertEquals(ts.cases.map((c) => c.id), [nn[2]]);
  const b = await findCases("s3://data/msd/");
  assertEquals(b.problems, []);
  assertEquals(b.cases.map((c) => [c.id, c.shape]), [[msd[0], DIMS], [msd[1], DIMS]]);
});

Deno.test("parseDatasetJson() names the file and the field it cannot use", () => {
  assertThrows(
    () => parseDatasetJson("{", "d/dataset.json"),
    SyntaxError,
    "d/dataset.json: not JSON",
  );
  assertThrows(
    () => parseDatasetJson(JSON.stringify({ labels: {} }), "d/dataset.json"),
    TypeError,
    "neither an nnU-Net v2 dataset.json",
  );
  assertThrows(
    () =>
      parseDatasetJson(
        JSON.stringify({
          channel_names: { "0": "T1", "2": "T2" },
          labels: { background: 0, a: 1 },
        }),
        "d/dataset.json",
      ),
    TypeError,
    `channel "1" is undefined`,
  );
  assertThrows(
    () =>
      parseDatasetJson(
        JSON.stringify({ channel_names: { "0": "T1" }, labels: { background: 0, wt: [1, 2] } }),
        "d/dataset.json",
      ),
    RangeError,
    `region labels need "regions_class_order"`,
  );
  assertThrows(
    () =>
      parseDatasetJson(
        JSON.stringify({ channel_names: { "0": "T1" }, labels: { background: 0 } }),
        "d/dataset.json",
      ),
    RangeError,
    "no label besides background",
  );
});

// ---------------------------------------------------------------------------------------------
// Labels

Deno.test("labelScheme(): nnU-Net region labels with regions_class_order, and plain labels one region each", () => {
  // nnU-Net's BraTS example: regions whole tumor, tumor core, enhancing, written 1, 2, 3 in turn.
  const { description } = parseDatasetJson(
    JSON.stringify({
      channel_names: { "0": "T2F", "1": "T1N", "2": "T1C", "3": "T2W" },
      labels: { background: 0, whole_tumor: [1, 2, 3], tumor_core: [2, 3], enhancing_tumor: [3] },
      regions_class_order: [1, 2, 3],
      file_ending: ".nii.gz",
    }),
    "dataset.json",
  );
  const s = labelScheme(description);
  assertEquals(s.regions.map((r) => r.name), ["whole_tumor", "tumor_core", "enhancing_tumor"]);
  const labels = [0, 1, 2, 3];
  const regions = labelsToRegions(labels, s);
  assertEquals([...regions], [0, 1, 3, 7]);
  assertEquals([...regionsToLabels(regions, s)], labels);
  // Probabilities of the three regions per voxel: written in the dataset's values.
  const probs = Float32Array.from([0, 0, 0, 0.9, 0, 0, 0.9, 0.8, 0, 0.9, 0.8, 0.7]);
  assertEquals([...probabilitiesToLabels(probs, s)], [0, 1, 2, 3]);
  assertThrows(
    () => labelsToRegions([0, 4], s, "l.nii.gz"),
    RangeError,
    "l.nii.gz: voxel 1 has label 4; expected 0, 1, 2, 3",
  );

  const plain = labelScheme({
    layout: "nnunet",
    channels: ["a"],
    labels: { background: 0, b: 5, a: 2 },
  });
  assertEquals(plain, {
    regions: [{ name: "a", labels: [2] }, { name: "b", labels: [5] }],
    order: [2, 5],
  });
  assertEquals([...probabilitiesToLabels(Float32Array.from([0.9, 0, 0.2, 0.7, 0, 0]), plain)], [
    2,
    5,
    0,
  ]);
});

Deno.test("labels stored as float: integral values read, others refused naming the value", async () => {
  await using tmp = await tempDir();
  const root = `${tmp.path}/ds`;
  const ids = await writeNnunet(root, { train: 1, test: 0, labelDatatype: "float32" });
  const [c] = (await findCases(root)).cases;
  const truth = Float32Array.from(phantomCase(DIMS, 50).seg, (l) => (l > 0 ? 1 : 0));
  const p = await preprocessCase(c);
  let inside = 0;
  for (const r of p.regions!) inside += r;
  assertEquals(inside + p.regionsOutside![0], truth.reduce((a, v) => a + v, 0));
  // A probability-like value: refused with the value and the file.
  truth[1234] = 0.5;
  const uri = `${root}/labelsTr/${ids[0]}.nii.gz`;
  await putObject(uri, encodeNifti(truth, "float32", createNiftiHeader(DIMS, AFFINE, "float32")));
  const err = await preprocessCase(c).then(() => undefined, (e) => e as Error);
  assert(err instanceof RangeError);
  assertStringIncludes(
    err.message,
    `${uri}: voxel 1234 has label 0.5 (not an integer); expected 0, 1`,
  );
});

// ---------------------------------------------------------------------------------------------
// Training and segmentation

Deno.test({
  name:
    "an nnU-Net dataset trains a 2-channel, 1-region network that segments a bare imagesTs folder into {0, 1}",
  sanitizeResources: false,
  fn: async () => {
    await using tmp = await tempDir();
    const root = `${tmp.path}/Dataset900_Phantom`;
    const ids = await writeNnunet(root, { train: 3, test: 2 });
    const run = `${tmp.path}/run`;
    const r = await train(tinySettings(root), { out: run, ...quiet });
    assertEquals(r.steps, 4);
    const { net, metadata } = await loadModel(`${run}/best`);
    assertEquals([net.config.inChannels, net.config.outChannels], [2, 1]);
    disposeUNet(net);
    const kept = await readModelDataset(`${run}/best/model.safetensors`);
    assertEquals(kept?.channels, ["FLAIR", "T1"]);
    assertEquals(kept?.labels, { background: 0, whole_tumor: 1 });
    assertEquals(JSON.parse(metadata.dataset).layout, "nnunet");
    // Validation Dice per region of the dataset.
    assertEquals(Object.keys(r.lastValDice ?? {}), ["whole_tumor"]);

    // A bare folder of <case>_0000/_0001 files (imagesTs without its dataset.json).
    await Deno.rename(`${root}/imagesTs`, `${tmp.path}/imagesTs`);
    const out = `${tmp.path}/seg`;
    const s = await segment({
      model: `${run}/best`,
      input: `${tmp.path}/imagesTs`,
      out,
    });
    assertEquals(s.failed, []);
    assertEquals(s.cases.map((c) => c.output), ids.slice(3).map((id) => `${out}/${id}.nii.gz`));
    for (const id of ids.slice(3)) {
      const seg = decodeNifti(await Deno.readFile(`${out}/${id}.nii.gz`), id);
      const input = decodeNifti(await Deno.readFile(`${tmp.path}/imagesTs/${id}_0000.nii.gz`), id);
      assertEquals(seg.header.dims, DIMS);
      assertEquals(seg.header.affine, input.header.affine);
      assert([...new Set(scaledData(seg))].every((v) => v === 0 || v === 1), "labels in {0, 1}");
    }

    // A case lacking a channel the model takes: an error naming it, nothing written for it.
    await Deno.remove(`${tmp.path}/imagesTs/${ids[4]}_0001.nii.gz`);
    await Deno.remove(`${tmp.path}/imagesTs/${ids[3]}_0001.nii.gz`);
    const out2 = `${tmp.path}/seg2`;
    const s2 = await segment({
      model: `${run}/best`,
      input: `${tmp.path}/imagesTs`,
      out: out2,
    });
    assertEquals(s2.cases, []);
    assertEquals(s2.failed.length, 2);
    assertStringIncludes(
      s2.failed[0].error,
      `case "${ids[3]}": missing channel 0001 (T1): ${
        ids[3]
      }_0001.nii.gz; the model (trained on PhantomWT) takes 2 (FLAIR, T1)`,
    );
    const written = [];
    for await (const e of Deno.readDir(out2)) written.push(e.name);
    assertEquals(written.sort(), ids.slice(3).map((id) => `${id}.error.json`));

    // A BraTS-named case gives the model its channels by name: FLAIR from t2f, T1 from t1n.
    await writePhantomDataset(`${tmp.path}/brats`, {
      cases: 1,
      dims: DIMS,
      seed: 9,
      naming: "brats2023",
    });
    const s3 = await segment({
      model: `${run}/best`,
      input: `${tmp.path}/brats`,
      out: `${tmp.path}/seg3`,
    });
    assertEquals(s3.failed, []);
    const l3 = scaledData(decodeNifti(await Deno.readFile(s3.cases[0].output), "brats"));
    assert([...new Set(l3)].every((v) => v === 0 || v === 1));
  },
});

Deno.test({
  name:
    "an MSD task trains a 4-channel network with one region per label and segments into its labels",
  sanitizeResources: false,
  fn: async () => {
    await using tmp = await tempDir();
    const root = `${tmp.path}/Task01_BrainTumour`;
    const ids = await writeMsd(root, 2, 1);
    const run = `${tmp.path}/run`;
    await train(tinySettings(root, { epochs: 1 }), { out: run, ...quiet });
    const { net } = await loadModel(`${run}/best`);
    assertEquals([net.config.inChannels, net.config.outChannels], [4, 3]);
    disposeUNet(net);
    const out = `${tmp.path}/seg`;
    const s = await segment({
      model: `${run}/best`,
      input: `${root}/imagesTs`,
      out,
      saveProbabilities: true,
    });
    assertEquals(s.failed, []);
    assertEquals(s.cases.map((c) => c.id), [ids[2]]);
    const seg = decodeNifti(await Deno.readFile(`${out}/${ids[2]}.nii.gz`), ids[2]);
    assertEquals(seg.header.dims, DIMS);
    assert([...new Set(scaledData(seg))].every((v) => [0, 1, 2, 3].includes(v)));
    const probs = decodeNifti(await Deno.readFile(`${out}/${ids[2]}_probabilities.nii.gz`), "p");
    assertEquals(probs.header.dims, [...DIMS, 3]);

    // Labelled cases with --report: FLAIR slices (volume 0 of the 4-D file) with the reference
    // and prediction; metrics in the task's own regions (tests/segmentation/dataset_metrics_test.ts).
    const labelled = `${tmp.path}/seg-tr`;
    const r = await segment({
      model: `${run}/best`,
      input: `${root}/imagesTr`,
      out: labelled,
      report: true,
    });
    assertEquals(r.failed, []);
    assertEquals(
      r.cases.map((c) => [c.id, c.metrics]),
      ids.slice(0, 2).map((id) => [id, `${labelled}/${id}.metrics.json`]),
    );
    assertStringIncludes(await Deno.readTextFile(r.report!), ids[1]);
  },
});

Deno.test("plan --data: the dataset's channels and regions shape the planned network", async () => {
  await using tmp = await tempDir();
  const root = `${tmp.path}/ds`;
  await writeNnunet(root, { train: 1, test: 0 });
  assertEquals(await datasetShape(root), {
    inChannels: 2,
    outChannels: 1,
    channels: ["FLAIR", "T1"],
    regions: ["whole_tumor"],
  });
  const small = JSON.stringify({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 });
  const plan = async (extra: string[]) => {
    const r = await runMain([
      "plan",
      "--budget",
      "0.0625",
      "--config",
      small,
      "--measure-crops",
      "8,16",
      ...extra,
    ]);
    assertEquals(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const [two, four] = [await plan(["--data", root]), await plan([])];
  assertEquals([two.config.inChannels, two.config.outChannels], [2, 1]);
  assertEquals([four.config.inChannels, four.config.outChannels], [4, 3]);
  // Fewer input and output channels per voxel: fewer bytes per voxel of a training step.
  assert(
    two.reversible.bytes_per_voxel < four.reversible.bytes_per_voxel,
    `${two.reversible.bytes_per_voxel} vs ${four.reversible.bytes_per_voxel}`,
  );
  const clash = await runMain([
    "plan",
    "--budget",
    "1",
    "--config",
    '{"inChannels":4}',
    "--data",
    root,
  ]);
  assertEquals(clash.code, 2, "a usage error");
  assertStringIncludes(
    clash.stderr,
    `--config inChannels 4 disagrees with --data ${root}, which has 2`,
  );
});

Deno.test("bench memory --data reads the dataset before measuring; bench speed refuses the flag", async () => {
  await using tmp = await tempDir();
  const missing = await runMain(["bench", "memory", "--data", `${tmp.path}/nowhere`]);
  assertEquals(missing.code, 1);
  assertStringIncludes(missing.stderr, `${tmp.path}/nowhere`);
  const speed = await runMain(["bench", "speed", "--data", tmp.path]);
  assertEquals(speed.code, 2);
  assertStringIncludes(speed.stderr, "--data belongs to bench memory");
});

// ---------------------------------------------------------------------------------------------
// The real scans (../shared/data), when present

const REAL = new URL("../../../shared/data/Dataset501_BraTS2018WT", import.meta.url).pathname;
const realPresent = await Deno.stat(REAL).then(() => true, () => false);
if (!realPresent) {
  console.warn(`datasets_test: ${REAL} is absent; skipping the test on real BraTS 2018 scans`);
}

Deno.test({
  name: "cases on the real Dataset501_BraTS2018WT lists 7 cases with 2 channels (../shared/data)",
  ignore: !realPresent,
  fn: async () => {
    const { code, stdout, stderr } = await runMain(["cases", REAL]);
    assertEquals(code, 0, stderr);
    const cases = stdout.trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(cases.length, 7);
    for (const c of cases) {
      assertEquals(c.channels.map((ch: { name: string }) => ch.name), ["FLAIR", "T1"]);
      assertEquals(c.shape, [240, 240, 155]);
      assert(c.seg.endsWith(`labelsTr/${c.id}.nii.gz`));
    }
    // Its labels are float32 0/1, as published: read as labels.
    const seg = decodeNifti(await getObject(cases[0].seg), cases[0].seg);
    assertEquals(seg.header.datatype, "float32");
    assertEquals(
      [...labelsToRegions(scaledData(seg), labelScheme(cases[0].dataset))].some((r) => r === 1),
      true,
    );
  },
});
