/**
 * pipeline/evaluation/evaluation.ts: metrics hand-computed on tiny volumes, the empty-region rules,
 * both label conventions, summaries, one pair of files, and folders of cases (matching, shards,
 * CSV); one full-size case timed.
 * @module
 */
import { join } from "node:path";
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import {
  caseMetrics,
  CSV_COLUMNS,
  describe,
  EMPTY_HD95,
  evaluateCases,
  evaluatePair,
  evaluationCsv,
  metricsBaseName,
  regionMetrics,
  summarize,
  writeEvaluation,
} from "../../pipeline/evaluation/evaluation.ts";
import { seededRandom } from "../../pipeline/cases/random.ts";
import {
  blob,
  type Dims,
  labelsFor,
  segFile,
  tempDir,
  writeTree,
} from "../_evaluation_fixtures.ts";

// ---------------------------------------------------------------------------------------------
// Metrics of volumes in memory

Deno.test("caseMetrics() on a hand-computed 6×1×1 case (2018–2021 labels, 2 mm along x)", () => {
  // Index:        0  1  2  3  4  5
  const truth = [0, 1, 2, 4, 4, 0];
  const pred = [0, 1, 4, 4, 2, 2];
  const m = caseMetrics(Uint8Array.from(pred), Uint8Array.from(truth), [6, 1, 1], [2, 1, 1], 4);
  // WT: truth {1,2,3,4}, pred {1,...,5}: TP 4, FP 1, FN 0, TN 1.
  assertAlmostEquals(m.WT.dice, 8 / 9, 1e-15);
  assertEquals(m.WT.sensitivity, 1);
  assertEquals(m.WT.specificity, 0.5);
  // Distances: voxel 5 is 2 mm from the truth, the eight others 0: rank 7.6 of 9 → 0.6 · 2 mm.
  assertAlmostEquals(m.WT.hd95, 1.2, 1e-12);
  // TC: truth {1,3,4}, pred {1,2,3}: TP 2, FP 1, FN 1, TN 2.
  assertAlmostEquals(m.TC.dice, 2 / 3, 1e-15);
  assertAlmostEquals(m.TC.sensitivity, 2 / 3, 1e-15);
  assertAlmostEquals(m.TC.specificity, 2 / 3, 1e-15);
  // ET: truth {3,4}, pred {2,3}: TP 1, FP 1, FN 1, TN 3; distances [2, 0, 0, 2] → 2 mm.
  assertEquals(m.ET, { dice: 0.5, hd95: 2, sensitivity: 0.5, specificity: 0.75 });
});

Deno.test("caseMetrics() with 2023 labels (3 enhancing) and with a different label per volume", () => {
  const truth = Uint8Array.from([0, 1, 2, 3, 3, 0]);
  const pred2023 = Uint8Array.from([0, 1, 3, 3, 2, 2]);
  const pred2021 = Uint8Array.from([0, 1, 4, 4, 2, 2]);
  const m = caseMetrics(pred2023, truth, [6, 1, 1], [2, 1, 1], 3);
  assertEquals(m.ET, { dice: 0.5, hd95: 2, sensitivity: 0.5, specificity: 0.75 });
  assertEquals(caseMetrics(pred2021, truth, [6, 1, 1], [2, 1, 1], { pred: 4, truth: 3 }), m);
  // Under the 2021 convention the 3 in the truth is unknown.
  assertThrows(
    () => caseMetrics(pred2021, truth, [6, 1, 1], [2, 1, 1], 4),
    RangeError,
    'Cannot evaluate "reference": voxel [3, 0, 0] has label 3',
  );
  assertThrows(
    () => caseMetrics(Uint8Array.from([0, 0, 0, 0, 0, 5]), truth, [6, 1, 1], [1, 1, 1], 3),
    RangeError,
    "voxel [5, 0, 0] has label 5",
  );
});

Deno.test("caseMetrics() applies the legacy BraTS rules to empty regions", () => {
  const dims = [4, 1, 1];
  const none = new Uint8Array(4);
  const et = Uint8Array.from([0, 4, 4, 0]);
  const edema = Uint8Array.from([0, 2, 2, 0]);
  // Both empty: Dice 1, HD95 0, sensitivity 1, specificity 1.
  const both = caseMetrics(none, none, dims);
  for (const r of ["ET", "TC", "WT"] as const) {
    assertEquals(both[r], { dice: 1, hd95: 0, sensitivity: 1, specificity: 1 });
  }
  // The diagonal of the 240×240×155 1 mm grid, as Python's math.sqrt(240**2 + 240**2 + 155**2)
  // prints it: not the rounded 373.13.
  assertEquals(EMPTY_HD95, 373.1286641361127);
  assertEquals(EMPTY_HD95 ** 2, 240 ** 2 + 240 ** 2 + 155 ** 2);
  // Prediction empty, truth not: Dice 0, HD95 the diagonal, sensitivity 0, specificity 1.
  assertEquals(caseMetrics(none, et, dims).ET, {
    dice: 0,
    hd95: EMPTY_HD95,
    sensitivity: 0,
    specificity: 1,
  });
  // Truth empty, prediction not: sensitivity 0 (something predicted), specificity 2/4.
  assertEquals(caseMetrics(et, none, dims).ET, {
    dice: 0,
    hd95: EMPTY_HD95,
    sensitivity: 0,
    specificity: 0.5,
  });
  // Edema only on both sides: ET and TC empty in both, WT perfect.
  const e = caseMetrics(edema, edema, dims);
  assertEquals(e.ET, { dice: 1, hd95: 0, sensitivity: 1, specificity: 1 });
  assertEquals(e.TC, { dice: 1, hd95: 0, sensitivity: 1, specificity: 1 });
  assertEquals(e.WT, { dice: 1, hd95: 0, sensitivity: 1, specificity: 1 });
  // No negatives at all: specificity 1.
  const all = Uint8Array.from([2, 2, 2, 2]);
  assertEquals(caseMetrics(all, all, dims).WT, {
    dice: 1,
    hd95: 0,
    sensitivity: 1,
    specificity: 1,
  });
});

Deno.test("caseMetrics() equals regionMetrics() of each region's full-size masks (random cases)", () => {
  const rand = seededRandom(21);
  for (let t = 0; t < 12; t++) {
    const dims: Dims = [14, 12, 9];
    const spacing = [1, 0.8, 2.2];
    const labels = (): Uint8Array => {
      const wt = blob(dims, rand, 2);
      const tc = blob(dims, rand, 1);
      const et = blob(dims, rand, 1);
      return wt.map((w, i) => (et[i] && w ? 4 : tc[i] && w ? 1 : w ? 2 : 0));
    };
    const truth = labels();
    const pred = t === 0 ? new Uint8Array(truth.length) : labels();
    const got = caseMetrics(pred, truth, dims, spacing, 4);
    const sets = { WT: [1, 2, 4], TC: [1, 4], ET: [4] };
    for (const [r, set] of Object.entries(sets) as [keyof typeof sets, number[]][]) {
      const p = pred.map((l) => (set.includes(l) ? 1 : 0));
      const q = truth.map((l) => (set.includes(l) ? 1 : 0));
      assertEquals(got[r], regionMetrics(p, q, dims, spacing), `case ${t} ${r}`);
    }
  }
});

Deno.test("describe() gives numpy's mean, std (ddof 0), median and quartiles; null for none", () => {
  assertEquals(describe([1, 2, 3, 4]), {
    mean: 2.5,
    std: Math.sqrt(1.25),
    median: 2.5,
    q25: 1.75,
    q75: 3.25,
  });
  assertEquals(describe([]), { mean: null, std: null, median: null, q25: null, q75: null });
});

// ---------------------------------------------------------------------------------------------
// Files and folders

Deno.test("evaluatePair() reads the reference's spacing and checks grids and labels, naming files", async () => {
  await using tmp = await tempDir();
  const dims: Dims = [6, 5, 4];
  const aniso = [[1, 0, 0, -3], [0, 1.5, 0, 4], [0, 0, 2, -5], [0, 0, 0, 1]];
  const truth = labelsFor(1, 4);
  const pred = labelsFor(2, 4);
  const shifted = aniso.map((row) => [...row]);
  shifted[0][3] += 0.5;
  await writeTree(tmp.path, {
    "truth.nii.gz": segFile(truth, dims, aniso, "float64"),
    "pred.nii.gz": segFile(pred, dims, aniso, "int16"),
    "small.nii.gz": segFile(new Uint8Array(5 * 5 * 4), [5, 5, 4], aniso),
    "shifted.nii.gz": segFile(pred, dims, shifted),
    "odd.nii.gz": segFile(pred.map((l) => (l === 4 ? 5 : l)), dims, aniso),
    "both.nii.gz": segFile(pred.map((l, i) => (l === 4 && i % 2 ? 3 : l)), dims, aniso),
    "probs.nii.gz": segFile(new Float32Array(6 * 5 * 4).fill(0.5), dims, aniso, "float64"),
    "broken.nii.gz": new TextEncoder().encode("<html>503</html>"),
  });
  const at = (n: string) => join(tmp.path, n);
  const r = await evaluatePair(at("pred.nii.gz"), at("truth.nii.gz"));
  assertEquals(r.spacing, [1, 1.5, 2]);
  assertEquals(r.metrics, caseMetrics(pred, truth, dims, [1, 1.5, 2], 4));
  await assertRejects(
    () => evaluatePair(at("small.nii.gz"), at("truth.nii.gz")),
    RangeError,
    `Cannot evaluate "${at("small.nii.gz")}" against "${
      at("truth.nii.gz")
    }": the prediction has dims [5,5,4]`,
  );
  const e = await assertRejects(
    () => evaluatePair(at("shifted.nii.gz"), at("truth.nii.gz")),
    RangeError,
    "their affines differ by 0.500 mm",
  );
  assertStringIncludes(e.message, at("truth.nii.gz"));
  await assertRejects(
    () => evaluatePair(at("odd.nii.gz"), at("truth.nii.gz")),
    RangeError,
    `"${at("odd.nii.gz")}": label 5 is not a BraTS label`,
  );
  await assertRejects(
    () => evaluatePair(at("both.nii.gz"), at("truth.nii.gz")),
    RangeError,
    "holds both 3 and 4",
  );
  await assertRejects(
    () => evaluatePair(at("probs.nii.gz"), at("truth.nii.gz")),
    RangeError,
    "holds 0.5, not a label",
  );
  await assertRejects(
    () => evaluatePair(at("broken.nii.gz"), at("truth.nii.gz")),
    SyntaxError,
    `Cannot read NIfTI "${at("broken.nii.gz")}"`,
  );
  // --labels 2023: the 4s of the 2021 files are unknown labels.
  await assertRejects(
    () => evaluatePair(at("pred.nii.gz"), at("truth.nii.gz"), { labels: "2023" }),
    RangeError,
    "label 4 is not among 0, 1, 2, 3",
  );
});

Deno.test("evaluateCases() matches by id and reports missing and extra cases", async () => {
  await using tmp = await tempDir();
  const dims: Dims = [6, 5, 4];
  const truth = {
    A: labelsFor(10, 4),
    B: labelsFor(11, 4),
    C: labelsFor(12, 4),
  };
  await writeTree(tmp.path, {
    // A BraTS 2021 dataset: case folders with images and seg; C has no prediction.
    ...Object.fromEntries(
      Object.entries(truth).flatMap(([id, l]) => [
        [`truth/BraTS2021_${id}/BraTS2021_${id}_seg.nii.gz`, segFile(l, dims)],
        [
          `truth/BraTS2021_${id}/BraTS2021_${id}_t1.nii.gz`,
          segFile(new Uint8Array(l.length), dims),
        ],
      ]),
    ),
    "pred/BraTS2021_A.nii.gz": segFile(truth.A, dims),
    "pred/BraTS2021_B_seg.nii.gz": segFile(labelsFor(20, 4), dims),
    "pred/BraTS2021_D.nii.gz": segFile(labelsFor(21, 4), dims), // no reference
    "pred/BraTS2021_A_probabilities.nii.gz": new Uint8Array([1, 2, 3]), // skipped
    "pred/BraTS2021_A.json": new TextEncoder().encode("{}"),
    "pred/old/BraTS2021_C.nii.gz": segFile(truth.C, dims), // not directly under --pred
  });
  const seen: string[] = [];
  const ev = await evaluateCases(join(tmp.path, "pred"), join(tmp.path, "truth"), {
    onCase: (r) => seen.push(r.case),
  });
  assertEquals(ev.cases.map((c) => c.case), ["BraTS2021_A", "BraTS2021_B"]);
  assertEquals(seen.sort(), ["BraTS2021_A", "BraTS2021_B"]);
  assertEquals(ev.missing, ["BraTS2021_C"]);
  assertEquals(ev.extra, ["BraTS2021_D"]);
  for (const r of ["ET", "TC", "WT"] as const) {
    assertEquals(ev.cases[0][r], { dice: 1, hd95: 0, sensitivity: 1, specificity: 1 });
  }
  assertEquals(ev.summary.WT.dice.mean, (1 + ev.cases[1].WT.dice) / 2);
  // Two predictions for one case is an error naming both.
  await writeTree(tmp.path, { "pred/BraTS2021_A_seg.nii.gz": segFile(truth.A, dims) });
  const e = await assertRejects(
    () => evaluateCases(join(tmp.path, "pred"), join(tmp.path, "truth")),
    Error,
    'case "BraTS2021_A"',
  );
  assertStringIncludes(e.message, "BraTS2021_A_seg.nii.gz");
  await Deno.remove(join(tmp.path, "pred/BraTS2021_A_seg.nii.gz"));
  await assertRejects(
    () => evaluateCases(join(tmp.path, "nothing"), join(tmp.path, "truth")),
    Error,
    "No predictions under",
  );
  await assertRejects(
    () => evaluateCases(join(tmp.path, "pred"), join(tmp.path, "nothing")),
    Error,
    "No reference segmentations under",
  );
});

Deno.test("evaluateCases() with `only` (a shard): no case is an empty result, absent predictions are missing", async () => {
  await using tmp = await tempDir();
  const dims: Dims = [6, 5, 4];
  const ids = ["BraTS2021_A", "BraTS2021_B"];
  await writeTree(tmp.path, {
    ...Object.fromEntries(
      ids.map((id, k) => [`truth/${id}/${id}_seg.nii.gz`, segFile(labelsFor(30 + k, 4), dims)]),
    ),
    "pred/BraTS2021_A.nii.gz": segFile(labelsFor(30, 4), dims),
  });
  const [pred, truth] = [join(tmp.path, "pred"), join(tmp.path, "truth")];
  const none = await evaluateCases(pred, truth, { only: () => false });
  assertEquals([none.cases, none.missing, none.extra], [[], [], []]);
  assertEquals(none.summary.WT.dice, { mean: null, std: null, median: null, q25: null, q75: null });
  // A shard's own output folder that was never written: its cases are missing, not an error.
  const unwritten = await evaluateCases(join(tmp.path, "never"), truth, {
    only: (id) => id === "BraTS2021_B",
  });
  assertEquals([unwritten.cases, unwritten.missing], [[], ["BraTS2021_B"]]);
  const a = await evaluateCases(pred, truth, { only: (id) => id === "BraTS2021_A" });
  assertEquals([a.cases.map((c) => c.case), a.missing, a.extra], [["BraTS2021_A"], [], []]);
  // Without a shard an empty or wrong --pred is still an error; no reference at all always is.
  await assertRejects(() => evaluateCases(join(tmp.path, "never"), truth), Error, "No predictions");
  await assertRejects(
    () => evaluateCases(pred, join(tmp.path, "never"), { only: () => true }),
    Error,
    "No reference segmentations",
  );
});

Deno.test("writeEvaluation() names its files after the shard so shards sharing --out keep theirs", async () => {
  await using tmp = await tempDir();
  const ev = { cases: [], summary: summarize([]), missing: [], extra: [] };
  assertEquals(metricsBaseName(), "metrics");
  assertEquals(metricsBaseName({ index: 1, count: 3 }), "metrics-shard-1-of-3");
  const written = await writeEvaluation(tmp.path, ev, metricsBaseName({ index: 1, count: 3 }));
  assertEquals(written, [
    join(tmp.path, "metrics-shard-1-of-3.json"),
    join(tmp.path, "metrics-shard-1-of-3.csv"),
  ]);
  assertEquals(JSON.parse(await Deno.readTextFile(written[0])), ev);
  assertEquals(await Deno.readTextFile(written[1]), `case,${CSV_COLUMNS.join(",")}\n`);
  await writeEvaluation(tmp.path, ev);
  const names = [];
  for await (const e of Deno.readDir(tmp.path)) names.push(e.name);
  assertEquals(names.sort(), [
    "metrics-shard-1-of-3.csv",
    "metrics-shard-1-of-3.json",
    "metrics.csv",
    "metrics.json",
  ]);
});

Deno.test("evaluateCases() reads both label conventions: BraTS naming, flat folders, --labels", async () => {
  await using tmp = await tempDir();
  const dims: Dims = [6, 5, 4];
  // A box of tumor: necrosis at x = 1, enhancing at x = 2..3, edema at x = 4.
  const t23 = new Uint8Array(6 * 5 * 4).map((_, i) => {
    const [x, y, z] = [i % 6, Math.floor(i / 6) % 5, Math.floor(i / 30)];
    if (x < 1 || x > 4 || y < 1 || y > 3 || z < 1 || z > 2) return 0;
    return x === 1 ? 1 : x <= 3 ? 3 : 2;
  });
  // The prediction: the reference moved one voxel along x.
  const p23 = t23.map((_, i) => (i % dims[0] === 0 ? 0 : t23[i - 1]));
  const t21 = t23.map((l) => (l === 3 ? 4 : l)); // the same voxels in 2021 labels
  const p21 = p23.map((l) => (l === 3 ? 4 : l));
  const id = "BraTS-GLI-00000-000";
  await writeTree(tmp.path, {
    [`brats23/${id}/${id}-seg.nii.gz`]: segFile(t23, dims),
    [`pred23/${id}.nii.gz`]: segFile(p23, dims),
    [`pred21/${id}.nii.gz`]: segFile(p21, dims),
    [`flat23/${id}.nii.gz`]: segFile(t23, dims),
    // A 2021-named reference holding 2023 labels.
    [`misnamed/${id}_seg.nii.gz`]: segFile(t23, dims),
    [`predmis/${id}.nii.gz`]: segFile(p23, dims),
  });
  const want = caseMetrics(p23, t23, dims, [1, 1, 1], 3);
  assert(want.ET.dice > 0 && want.ET.dice < 1, "the fixture's ET must overlap partly");
  assertEquals(caseMetrics(p21, t21, dims, [1, 1, 1], 4), want);
  const at = (n: string) => join(tmp.path, n);
  // 2023 naming → 3 is enhancing; a prediction in either convention is read by its labels.
  assertEquals((await evaluateCases(at("pred23"), at("brats23"))).cases[0].ET, want.ET);
  assertEquals((await evaluateCases(at("pred21"), at("brats23"))).cases[0].ET, want.ET);
  // A flat reference folder: the convention is detected.
  assertEquals((await evaluateCases(at("pred23"), at("flat23"))).cases[0].ET, want.ET);
  assertEquals((await evaluateCases(at("pred23"), at("flat23"), { labels: "2023" })).cases[0], {
    case: id,
    ...want,
  });
  // The 2021 naming says 4 is enhancing: its 3s are an error that suggests --labels 2023.
  await assertRejects(
    () => evaluateCases(at("predmis"), at("misnamed")),
    RangeError,
    "for the other convention pass --labels 2023",
  );
  assertEquals(
    (await evaluateCases(at("predmis"), at("misnamed"), { labels: "2023" })).cases[0].ET,
    want.ET,
  );
  await assertRejects(
    () => evaluateCases(at("pred21"), at("flat23"), { labels: "2023" }),
    RangeError,
    "label 4 is not among 0, 1, 2, 3",
  );
});

Deno.test("evaluationCsv() writes a header and one full-precision row per case", () => {
  const m = caseMetrics(Uint8Array.from([0, 1, 4, 4, 2, 2]), Uint8Array.from([0, 1, 2, 4, 4, 0]), [
    6,
    1,
    1,
  ]);
  const csv = evaluationCsv([{ case: 'odd,"id"', ...m }]);
  const [head, row, end] = csv.split("\n");
  assertEquals(head, ["case", ...CSV_COLUMNS].join(","));
  assertEquals(CSV_COLUMNS.slice(0, 5), [
    "ET_dice",
    "ET_hd95",
    "ET_sensitivity",
    "ET_specificity",
    "TC_dice",
  ]);
  assertEquals(row.split(",").length, 14); // the quoted id holds one comma
  assert(row.startsWith('"odd,""id""",0.5,'), row);
  assertStringIncludes(row, String(m.WT.dice));
  assertEquals(end, "");
});

// ---------------------------------------------------------------------------------------------
// Speed

/** A BraTS-like label volume on 240×240×155: nested ellipsoids of edema, core and enhancing rim. */
function fullCase(shift: number[], scale: number): Uint8Array {
  const [nx, ny, nz] = [240, 240, 155];
  const out = new Uint8Array(nx * ny * nz);
  const c = [130 + shift[0], 110 + shift[1], 70 + shift[2]];
  const r = [38 * scale, 32 * scale, 28 * scale];
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const q = Math.sqrt(
          ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2,
        );
        const wobble = 0.06 * Math.sin(x / 3) * Math.cos(y / 4);
        if (q + wobble < 0.3) out[i] = 1;
        else if (q + wobble < 0.5) out[i] = 4;
        else if (q + wobble < 1) out[i] = 2;
      }
    }
  }
  return out;
}

Deno.test("timing: one full 240×240×155 case (printed, not asserted)", async () => {
  await using tmp = await tempDir();
  const dims = [240, 240, 155];
  const truth = fullCase([0, 0, 0], 1);
  const pred = fullCase([3, -2, 1], 0.93);
  let t0 = performance.now();
  const m = caseMetrics(pred, truth, dims, [1, 1, 1], 4);
  const inMemory = performance.now() - t0;
  assert(m.WT.dice > 0.7 && m.WT.hd95 > 0, JSON.stringify(m));
  await writeTree(tmp.path, {
    "p.nii.gz": segFile(pred, dims),
    "t.nii.gz": segFile(truth, dims),
  });
  t0 = performance.now();
  const r = await evaluatePair(join(tmp.path, "p.nii.gz"), join(tmp.path, "t.nii.gz"));
  const fromFiles = performance.now() - t0;
  assertEquals(r.metrics, m);
  // The worst case for the distance transform: a whole-brain-sized WT in a wrong place.
  const big = fullCase([0, 0, 0], 2.6);
  const shifted = fullCase([-20, 25, 10], 2.4);
  t0 = performance.now();
  caseMetrics(shifted, big, dims, [1, 1, 1], 4);
  const huge = performance.now() - t0;
  console.log(
    `full 240×240×155 case: caseMetrics ${inMemory.toFixed(0)} ms in memory, ` +
      `${fromFiles.toFixed(0)} ms from .nii.gz files (read, decode, check, metrics); ` +
      `brain-sized regions ${huge.toFixed(0)} ms; WT Dice ${m.WT.dice.toFixed(4)} HD95 ${
        m.WT.hd95.toFixed(2)
      } mm`,
  );
});
