/**
 * `evaluate` against nnU-Net v2 raw datasets and MSD tasks: the dataset's own regions (region-based
 * labels, or one region per label as nnU-Net's evaluation has it), named as the dataset names them,
 * in metrics.json, metrics.csv and the table; its errors (labels outside the dataset's, a missing
 * prediction, two grids, BraTS-only flags); a cross-check by nibabel, numpy and SciPy (MedPy's
 * hd95); and, where ../shared/data holds them, the real Dataset501 references against themselves.
 * @module
 */
import { join } from "node:path";
import { assert, assertAlmostEquals, assertEquals, assertRejects } from "@std/assert";
import { assertStringIncludes } from "@std/assert";
import {
  caseMetrics,
  caseRegion,
  EVAL_REGIONS,
  evaluateCases,
  type Evaluation,
  findReferenceDataset,
  formatTable,
  schemeMetrics,
} from "../../pipeline/evaluation/mod.ts";
import { seededRandom } from "../../pipeline/cases/mod.ts";
import { decodeNifti, encodeNifti } from "../../pipeline/nifti/mod.ts";
import { putObject } from "../../pipeline/storage/objects.ts";
import { runMain } from "../_cli.ts";
import { startS3rver } from "../_s3rver.ts";
import { PYTHON } from "../_nifti_fixtures.ts";
import {
  blob,
  type Dims,
  HAS_SCIPY,
  LPS,
  segFile,
  show,
  tempDir,
  writeTree,
} from "../_evaluation_fixtures.ts";

const DIMS: Dims = [12, 10, 8];
const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v, null, 2));

/** A random labelling of `DIMS` with values 0..`labels`, blobs so that surfaces are non-trivial. */
function randomLabels(seed: number, labels: number): Uint8Array {
  const rand = seededRandom(seed);
  const out = new Uint8Array(DIMS[0] * DIMS[1] * DIMS[2]);
  for (let l = 1; l <= labels; l++) {
    const b = blob(DIMS, rand, 2);
    for (let i = 0; i < out.length; i++) if (b[i]) out[i] = l;
  }
  return out;
}

/**
 * An nnU-Net v2 raw dataset like Dataset501_BraTS2018WT: 2 channels, labels background 0 and
 * whole_tumor 1 (float32 as the published ones), references of `ids` in labelsTr, predictions
 * (uint8, some voxels flipped) in `pred/`. Images are not needed to evaluate and not written.
 */
async function writeWtDataset(root: string, ids: string[]): Promise<void> {
  const files: Record<string, Uint8Array> = {
    "ds/dataset.json": json({
      name: "PhantomWT",
      channel_names: { "0": "FLAIR", "1": "T1" },
      labels: { background: 0, whole_tumor: 1 },
      numTraining: ids.length,
      file_ending: ".nii.gz",
    }),
  };
  ids.forEach((id, k) => {
    const ref = randomLabels(10 + k, 1);
    const pred = ref.map((v, i) => (i % (5 + k) === 0 ? 1 - v : v));
    files[`ds/labelsTr/${id}.nii.gz`] = segFile(Float32Array.from(ref), DIMS, LPS, "float64");
    files[`pred/${id}.nii.gz`] = segFile(pred, DIMS);
  });
  await writeTree(root, files);
}

/** nnU-Net's reading of BraTS 2023 labels as regions, written back as 1, 2, 3. */
const REGION_LABELS = {
  background: 0,
  "whole tumor": [1, 2, 3],
  "tumor core": [1, 3],
  "enhancing tumor": [3],
};

Deno.test("evaluate: a 2-channel 1-region nnU-Net dataset, per case and mean, named as the dataset names it", async () => {
  await using tmp = await tempDir();
  const ids = ["Case_000", "Case_001", "Case_002"];
  await writeWtDataset(tmp.path, ids);
  const ev = await evaluateCases(join(tmp.path, "pred"), join(tmp.path, "ds"));
  assertEquals(ev.cases.map((c) => c.case), ids);
  assertEquals(Object.keys(ev.cases[0]), ["case", "whole_tumor"]);
  assertEquals(Object.keys(ev.summary), ["whole_tumor"]);
  assertEquals(ev.dataset?.layout, "nnunet");
  assertEquals(ev.dataset?.name, "PhantomWT");
  assertEquals(ev.dataset?.regions, [{ name: "whole_tumor", labels: [1] }]);
  // Each case by hand: Dice of the 0/1 volumes (the same count the BraTS WT of label 2 gives).
  for (const [k, c] of ev.cases.entries()) {
    const ref = randomLabels(10 + k, 1);
    const pred = ref.map((v, i) => (i % (5 + k) === 0 ? 1 - v : v));
    let tp = 0, p = 0, t = 0;
    for (let i = 0; i < ref.length; i++) {
      p += pred[i];
      t += ref[i];
      tp += pred[i] & ref[i];
    }
    assertAlmostEquals(caseRegion(c, "whole_tumor").dice, (2 * tp) / (p + t), 1e-12);
    assert(caseRegion(c, "whole_tumor").dice < 1);
    const brats = caseMetrics(pred.map((v) => 2 * v), ref.map((v) => 2 * v), DIMS);
    assertEquals(caseRegion(c, "whole_tumor"), brats.WT);
  }
  const dices = ev.cases.map((c) => caseRegion(c, "whole_tumor").dice);
  const summary = ev.summary as unknown as Record<string, Evaluation["summary"]["WT"]>;
  assertAlmostEquals(summary.whole_tumor.dice.mean!, dices.reduce((a, b) => a + b) / 3, 1e-12);
  const table = formatTable(ev);
  assertStringIncludes(table, "Dice whole_tumor");
  assertStringIncludes(table, "HD95 whole_tumor");
  assert(!table.includes(" ET"), table);
});

Deno.test("evaluate: region-based nnU-Net labels score their regions, equal to BraTS 2023 WT/TC/ET", async () => {
  await using tmp = await tempDir();
  const files: Record<string, Uint8Array> = {
    "ds/dataset.json": json({
      channel_names: { "0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR" },
      labels: REGION_LABELS,
      regions_class_order: [2, 1, 3],
      file_ending: ".nii.gz",
    }),
  };
  for (const k of [0, 1]) {
    files[`ds/labelsTr/c${k}.nii.gz`] = segFile(randomLabels(20 + k, 3), DIMS);
    files[`pred/c${k}.nii.gz`] = segFile(randomLabels(30 + k, 3), DIMS);
  }
  await writeTree(tmp.path, files);
  const ev = await evaluateCases(join(tmp.path, "pred"), join(tmp.path, "ds"));
  assertEquals(Object.keys(ev.cases[0]), ["case", "whole tumor", "tumor core", "enhancing tumor"]);
  for (const k of [0, 1]) {
    const brats = caseMetrics(randomLabels(30 + k, 3), randomLabels(20 + k, 3), DIMS, [1, 1, 1], 3);
    const c = ev.cases[k];
    assertEquals(caseRegion(c, "whole tumor"), brats.WT);
    assertEquals(caseRegion(c, "tumor core"), brats.TC);
    assertEquals(caseRegion(c, "enhancing tumor"), brats.ET);
    assert(brats.WT.dice > 0 && brats.WT.dice < 1 && brats.WT.hd95 > 0);
  }
  assertStringIncludes(formatTable(ev), "Dice whole tumor");
});

Deno.test("evaluate: an MSD task scores one region per label, from labelsTr, --truth labelsTr, or --dataset-json", async () => {
  await using tmp = await tempDir();
  const msd = {
    name: "BRATS",
    modality: { "0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w" },
    labels: {
      "0": "background",
      "1": "edema",
      "2": "non-enhancing tumor",
      "3": "enhancing tumour",
    },
    training: [{ image: "./imagesTr/BRATS_001.nii.gz", label: "./labelsTr/BRATS_001.nii.gz" }],
    test: [],
  };
  const ref = randomLabels(40, 3);
  const pred = randomLabels(41, 3);
  await writeTree(tmp.path, {
    "Task01/dataset.json": json(msd),
    "Task01/labelsTr/BRATS_001.nii.gz": segFile(ref, DIMS),
    "Task01/labelsTr/._BRATS_001.nii.gz": new Uint8Array([0, 1]),
    "flat/BRATS_001.nii.gz": segFile(ref, DIMS),
    "pred/BRATS_001.nii.gz": segFile(pred, DIMS),
  });
  const names = ["edema", "non-enhancing tumor", "enhancing tumour"];
  const expected = names.map((_, k) => {
    let tp = 0, p = 0, t = 0;
    for (let i = 0; i < ref.length; i++) {
      const a = pred[i] === k + 1 ? 1 : 0;
      const b = ref[i] === k + 1 ? 1 : 0;
      p += a;
      t += b;
      tp += a & b;
    }
    return (2 * tp) / (p + t);
  });
  const pd = join(tmp.path, "pred");
  for (
    const [truth, datasetJson] of [
      [join(tmp.path, "Task01"), undefined],
      [join(tmp.path, "Task01", "labelsTr"), undefined],
      [join(tmp.path, "flat"), join(tmp.path, "Task01", "dataset.json")],
    ] as const
  ) {
    const ev = await evaluateCases(pd, truth, datasetJson ? { datasetJson } : {});
    assertEquals(ev.cases.map((c) => c.case), ["BRATS_001"], truth);
    assertEquals(ev.dataset?.layout, "msd");
    assertEquals(ev.dataset?.regions.map((r) => r.name), names);
    names.forEach((r, k) =>
      assertAlmostEquals(caseRegion(ev.cases[0], r).dice, expected[k], 1e-12)
    );
    assert(expected.every((d) => d > 0 && d < 1), `${expected}`);
  }
});

Deno.test("evaluate: a dataset's case ids are whole file names, BraTS suffixes included", async () => {
  await using tmp = await tempDir();
  await writeWtDataset(tmp.path, ["p_t1", "q-seg"]);
  const ev = await evaluateCases(join(tmp.path, "pred"), join(tmp.path, "ds"));
  assertEquals(ev.cases.map((c) => c.case), ["p_t1", "q-seg"]);
  assertEquals([ev.missing, ev.extra], [[], []]);
});

Deno.test("evaluate: a BraTS-named or plain folder still has no dataset and scores ET, TC, WT", async () => {
  await using tmp = await tempDir();
  await writeTree(tmp.path, { "flat/a.nii.gz": segFile(randomLabels(1, 2), DIMS) });
  assertEquals(await findReferenceDataset(join(tmp.path, "flat")), undefined);
  const ev = await evaluateCases(join(tmp.path, "flat"), join(tmp.path, "flat"));
  assertEquals(Object.keys(ev), ["cases", "summary", "missing", "extra"]);
  assertEquals(Object.keys(ev.summary), [...EVAL_REGIONS]);
});

Deno.test("evaluate: a dataset's errors name the file: unknown label, two grids, no references", async () => {
  await using tmp = await tempDir();
  await writeWtDataset(tmp.path, ["A", "B"]);
  const truth = join(tmp.path, "ds");
  // Label 2 in a dataset whose labels are 0 and 1.
  const bad = randomLabels(10, 1).map((v, i) => (i === 3 ? 2 : v));
  await writeTree(tmp.path, { "bad/A.nii.gz": segFile(bad, DIMS) });
  const e = await assertRejects(() => evaluateCases(join(tmp.path, "bad"), truth), RangeError);
  assertStringIncludes(e.message, join(tmp.path, "bad", "A.nii.gz"));
  assertStringIncludes(
    e.message,
    "has label 2; the labels are 0, 1 (the dataset's labels: whole_tumor 1)",
  );
  // Another grid.
  await writeTree(tmp.path, { "grid/A.nii.gz": segFile(new Uint8Array(12 * 10 * 7), [12, 10, 7]) });
  const g = await assertRejects(() => evaluateCases(join(tmp.path, "grid"), truth), RangeError);
  assertStringIncludes(g.message, join(tmp.path, "grid", "A.nii.gz"));
  assertStringIncludes(g.message, "a prediction must be on its reference's grid");
  // A dataset.json without labelsTr files.
  await writeTree(tmp.path, {
    "empty/dataset.json": await Deno.readFile(join(truth, "dataset.json")),
  });
  const n = await assertRejects(() =>
    evaluateCases(join(tmp.path, "pred"), join(tmp.path, "empty"))
  );
  assertStringIncludes(
    n.message,
    `No reference segmentations under "${join(tmp.path, "empty", "labelsTr")}"`,
  );
  // Lesion-wise scores are BraTS-only.
  const l = await assertRejects(() =>
    evaluateCases(join(tmp.path, "pred"), truth, {
      lesionWise: { challenge: "BraTS-GLI", dilation: 3, minVolume: 50 },
    })
  );
  assertStringIncludes(l.message, "BraTS-named datasets only");
});

Deno.test("evaluate command: an nnU-Net dataset's metrics.json, CSV, missing case, --lesion-wise usage error", async () => {
  await using tmp = await tempDir();
  await writeWtDataset(tmp.path, ["A", "B", "C"]);
  await Deno.remove(join(tmp.path, "pred", "C.nii.gz"));
  const pred = join(tmp.path, "pred");
  const truth = join(tmp.path, "ds");
  const out = join(tmp.path, "out");
  const run = await runMain(["evaluate", "--pred", pred, "--truth", truth, "--out", out]);
  assertEquals(run.code, 1, show(run));
  assertStringIncludes(run.stdout, "Dice whole_tumor");
  assertStringIncludes(run.stderr, `missing: no prediction for case "C" under ${pred}`);
  assertStringIncludes(run.stderr, "1 of 3 reference cases have no prediction");
  const ev = JSON.parse(await Deno.readTextFile(join(out, "metrics.json"))) as Evaluation;
  assertEquals(ev.cases.map((c) => c.case), ["A", "B"]);
  assertEquals(ev.missing, ["C"]);
  assertEquals(ev.dataset?.datasetJson, join(truth, "dataset.json"));
  const csv = (await Deno.readTextFile(join(out, "metrics.csv"))).split("\n");
  assertEquals(
    csv[0],
    "case,whole_tumor_dice,whole_tumor_hd95,whole_tumor_sensitivity,whole_tumor_specificity",
  );
  assertEquals(csv[1].split(",")[1], String(caseRegion(ev.cases[0], "whole_tumor").dice));

  // A flat folder with --dataset-json, and a prediction holding label 2: exit 1, nothing written.
  const bad = randomLabels(10, 1).map((v, i) => (i === 7 ? 2 : v));
  await writeTree(tmp.path, {
    "flat/A.nii.gz": await Deno.readFile(join(truth, "labelsTr", "A.nii.gz")),
    "bad/A.nii.gz": segFile(bad, DIMS),
  });
  const badOut = join(tmp.path, "bad-out");
  const refused = await runMain([
    "evaluate",
    "--pred",
    join(tmp.path, "bad"),
    "--truth",
    join(tmp.path, "flat"),
    "--dataset-json",
    join(truth, "dataset.json"),
    "--out",
    badOut,
  ]);
  assertEquals(refused.code, 1, show(refused));
  assertStringIncludes(
    refused.stderr,
    `"${join(tmp.path, "bad", "A.nii.gz")}": voxel [7, 0, 0] has label 2`,
  );
  assertEquals(await Deno.stat(badOut).then(() => true, () => false), false);

  const lw = await runMain(["evaluate", "--pred", pred, "--truth", truth, "--lesion-wise"]);
  assertEquals(lw.code, 2, show(lw));
  assertStringIncludes(lw.stderr, "--lesion-wise: BraTS-named references only");
  assertStringIncludes(lw.stderr, "nnU-Net dataset");
});

/** Dice and MedPy's hd95 of each region of each pair of NIfTI files, by nibabel, numpy, SciPy. */
const NIBABEL_METRICS = String.raw`
import json, sys
import nibabel as nib
import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

def border(m):
    return m ^ binary_erosion(m, structure=generate_binary_structure(3, 1), iterations=1)

def hd95(a, b, spacing):
    da = distance_transform_edt(~border(b), sampling=spacing)[border(a)]
    db = distance_transform_edt(~border(a), sampling=spacing)[border(b)]
    return float(np.percentile(np.hstack((da, db)), 95))

job = json.loads(sys.argv[1])
out = []
for pred, ref in job["pairs"]:
    r = nib.load(ref)
    p = np.asanyarray(nib.load(pred).dataobj)
    t = np.asanyarray(r.dataobj)
    spacing = [float(s) for s in r.header.get_zooms()[:3]]
    row = {}
    for name, labels in job["regions"]:
        a = np.isin(p, labels)
        b = np.isin(t, labels)
        row[name] = {"dice": float(2 * (a & b).sum() / (a.sum() + b.sum())), "hd95": hd95(a, b, spacing)}
    out.append(row)
print(json.dumps(out))
`;

async function nibabelMetrics(
  pairs: [string, string][],
  regions: [string, number[]][],
): Promise<Record<string, { dice: number; hd95: number }>[]> {
  const { success, stdout, stderr } = await new Deno.Command(PYTHON, {
    args: ["-c", NIBABEL_METRICS, JSON.stringify({ pairs, regions })],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!success) throw new Error(`nibabel metrics failed:\n${new TextDecoder().decode(stderr)}`);
  return JSON.parse(new TextDecoder().decode(stdout));
}

const HAS_NIBABEL = HAS_SCIPY && (() => {
  try {
    return new Deno.Command(PYTHON, {
      args: ["-c", "import nibabel"],
      stdout: "null",
      stderr: "null",
    })
      .outputSync().success;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "evaluate: an nnU-Net region dataset agrees with nibabel + numpy + SciPy (MedPy hd95)",
  ignore: !HAS_NIBABEL,
  async fn() {
    await using tmp = await tempDir();
    await writeTree(tmp.path, {
      "ds/dataset.json": json({
        channel_names: { "0": "FLAIR" },
        labels: REGION_LABELS,
        regions_class_order: [2, 1, 3],
        file_ending: ".nii.gz",
      }),
      "ds/labelsTr/x.nii.gz": segFile(randomLabels(50, 3), DIMS),
      "pred/x.nii.gz": segFile(randomLabels(51, 3), DIMS),
    });
    const ev = await evaluateCases(join(tmp.path, "pred"), join(tmp.path, "ds"));
    const regions = Object.entries(REGION_LABELS).filter(([, v]) => Array.isArray(v)) as [
      string,
      number[],
    ][];
    const [py] = await nibabelMetrics(
      [[join(tmp.path, "pred", "x.nii.gz"), join(tmp.path, "ds", "labelsTr", "x.nii.gz")]],
      regions,
    );
    for (const [name] of regions) {
      assertAlmostEquals(caseRegion(ev.cases[0], name).dice, py[name].dice, 1e-12, name);
      assertAlmostEquals(caseRegion(ev.cases[0], name).hd95, py[name].hd95, 1e-9, name);
    }
  },
});

const DATASET501 = new URL("../../../shared/data/Dataset501_BraTS2018WT", import.meta.url).pathname;
const HAS_DATASET501 = (() => {
  try {
    return Deno.statSync(join(DATASET501, "dataset.json")).isFile;
  } catch {
    return false;
  }
})();
if (!HAS_DATASET501) {
  console.log(
    `skipping the Dataset501 evaluate test: ${DATASET501} is absent (see shared/data/README)`,
  );
}

Deno.test({
  name: "evaluate: the real Dataset501 labelsTr against itself scores Dice 1 on every case",
  ignore: !HAS_DATASET501,
  async fn() {
    const ev = await evaluateCases(join(DATASET501, "labelsTr"), DATASET501, { concurrency: 2 });
    assertEquals(ev.cases.length, 7);
    assert(
      ev.cases.some((c) => c.case === "Brats18_CBICA_AAB_1"),
      JSON.stringify(ev.cases.map((c) => c.case)),
    );
    for (const c of ev.cases) {
      assertEquals(caseRegion(c, "whole_tumor"), {
        dice: 1,
        hd95: 0,
        sensitivity: 1,
        specificity: 1,
      });
    }
    assertEquals(ev.dataset?.regions, [{ name: "whole_tumor", labels: [1] }]);
  },
});

Deno.test({
  name: "evaluate: a real Dataset501 case against a shifted copy agrees with nibabel + SciPy",
  ignore: !HAS_DATASET501 || !HAS_NIBABEL,
  async fn() {
    await using tmp = await tempDir();
    const id = "Brats18_CBICA_AAB_1";
    const src = join(DATASET501, "labelsTr", `${id}.nii.gz`);
    const image = decodeNifti(await Deno.readFile(src), src);
    // The tumour moved 3 voxels along x, as uint8: a prediction with a Dice well below 1.
    const [nx] = image.header.dims;
    const shifted = new Uint8Array(image.data.length);
    for (let i = 0; i < shifted.length; i++) {
      if (i % nx >= 3) shifted[i] = image.data[i - 3];
    }
    await writeTree(tmp.path, {
      [`pred/${id}.nii.gz`]: encodeNifti(shifted, "uint8", image.header),
    });
    const ev = await evaluateCases(join(tmp.path, "pred"), DATASET501);
    assertEquals(ev.cases.map((c) => c.case), [id]);
    assertEquals(ev.missing.length, 6);
    const [py] = await nibabelMetrics([[join(tmp.path, "pred", `${id}.nii.gz`), src]], [[
      "whole_tumor",
      [1],
    ]]);
    const m = caseRegion(ev.cases[0], "whole_tumor");
    console.log(
      `${id} shifted 3 voxels: Dice ${m.dice} (nibabel ${py.whole_tumor.dice}), HD95 ${m.hd95} (SciPy ${py.whole_tumor.hd95})`,
    );
    assert(m.dice < 0.95 && m.dice > 0.5, `${m.dice}`);
    assertAlmostEquals(m.dice, py.whole_tumor.dice, 1e-12);
    assertAlmostEquals(m.hd95, py.whole_tumor.hd95, 1e-9);
  },
});

// schemeMetrics directly: the error names the volume.
Deno.test("schemeMetrics: a label outside the scheme names the volume, voxel and value", () => {
  const scheme = { regions: [{ name: "tumour", labels: [1] }], order: [1] };
  const e = assertRejects(
    () =>
      Promise.resolve().then(() =>
        schemeMetrics([0, 5], [0, 1], [2, 1, 1], [1, 1, 1], scheme, {
          pred: "p.nii.gz",
          truth: "t.nii.gz",
        })
      ),
    RangeError,
  );
  return e.then((err) => {
    assertStringIncludes(err.message, `"p.nii.gz": voxel [1, 0, 0] has label 5`);
  });
});

Deno.test("evaluate: an nnU-Net dataset on s3rver, as the dataset or as its labelsTr/", async () => {
  await using _s3 = await startS3rver({ buckets: ["data"] });
  const dataset = {
    channel_names: { "0": "FLAIR", "1": "T1" },
    labels: { background: 0, whole_tumor: 1 },
    file_ending: ".nii.gz",
  };
  await putObject("s3://data/ds/dataset.json", JSON.stringify(dataset));
  const ref = randomLabels(60, 1);
  const pred = randomLabels(61, 1);
  await putObject("s3://data/ds/labelsTr/S3_000.nii.gz", segFile(ref, DIMS));
  await putObject("s3://data/pred/S3_000.nii.gz", segFile(pred, DIMS));
  const expected = caseMetrics(pred.map((v) => 2 * v), ref.map((v) => 2 * v), DIMS).WT;
  assert(expected.dice > 0 && expected.dice < 1);
  for (const truth of ["s3://data/ds", "s3://data/ds/labelsTr/"]) {
    const ev = await evaluateCases("s3://data/pred/", truth);
    assertEquals(ev.dataset?.datasetJson, "s3://data/ds/dataset.json", truth);
    assertEquals(ev.cases.map((c) => c.case), ["S3_000"]);
    assertEquals(caseRegion(ev.cases[0], "whole_tumor"), expected);
  }
});
