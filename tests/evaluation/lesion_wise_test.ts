/**
 * pipeline/evaluation/lesion_wise.ts, pipeline/evaluation/surfels.ts and `evaluate --lesion-wise`: components,
 * dilation, lesion merging, small lesions, misses and false positives on hand-made volumes; the
 * surfel areas and robust HD95 against a brute force; and the whole scoring against the BraTS 2023
 * challenge's own Python code (rachitsaluja/BraTS-2023-Metrics, `metrics.py`) run on random
 * prediction/reference pairs.
 *
 * The cross-check needs a checkout of that repository named by REVUNET_BRATS2023_METRICS, and
 * Debian's python3 with numpy, scipy, nibabel and pandas 1.x (`apt-get install python3-nibabel
 * python3-pandas`); `cc3d` (connected-components-3d) is used when installed, else SciPy's
 * 26-connected `ndimage.label` stands in for it (the same components, numbered differently, which
 * the scores do not depend on), and on pandas newer than the 1.3.4 it pins, its
 * `DataFrame.replace(inf, 374)` is applied to the numeric columns only (newer pandas raises on the
 * column of arrays of lesion numbers). Without them the test is skipped and says why, e.g.
 * `REVUNET_BRATS2023_METRICS=../BraTS-2023-Metrics deno test -A tests/evaluation/lesion_wise_test.ts`.
 * @module
 */
import { join } from "node:path";
import { assert, assertAlmostEquals, assertEquals, assertStringIncludes } from "@std/assert";
import {
  evaluatePair,
  evaluationCsv,
  LESION_CSV_COLUMNS,
} from "../../pipeline/evaluation/evaluation.ts";
import {
  connectedComponents,
  dilate,
  LESION_MISS_HD95,
  LESION_WISE_CHALLENGES,
  type LesionWiseParams,
  lesionWiseRegion,
} from "../../pipeline/evaluation/lesion_wise.ts";
import { createNiftiHeader, decodeNifti, encodeNifti } from "../../pipeline/nifti/mod.ts";
import { seededRandom } from "../../pipeline/cases/random.ts";
import { cellAreas, robustHausdorff } from "../../pipeline/evaluation/surfels.ts";
import { runMain } from "../_cli.ts";
import { PYTHON } from "../_nifti_fixtures.ts";

type Dims = [number, number, number];
const at = (dims: Dims, x: number, y: number, z: number) => x + dims[0] * (y + dims[1] * z);

/** A mask of `dims` with the listed voxels set. */
function mask(dims: Dims, voxels: [number, number, number][]): Uint8Array {
  const m = new Uint8Array(dims[0] * dims[1] * dims[2]);
  for (const [x, y, z] of voxels) m[at(dims, x, y, z)] = 1;
  return m;
}

/** A filled box of voxels `[x0..x1] × [y0..y1] × [z0..z1]` set to `value` in `m`. */
function fill(m: Uint8Array, dims: Dims, lo: number[], hi: number[], value = 1): Uint8Array {
  for (let z = lo[2]; z <= hi[2]; z++) {
    for (let y = lo[1]; y <= hi[1]; y++) {
      for (let x = lo[0]; x <= hi[0]; x++) m[at(dims, x, y, z)] = value;
    }
  }
  return m;
}

const ISO = [1, 1, 1];

// ---------------------------------------------------------------------------------------------
// Components and dilation

Deno.test("connectedComponents() joins voxels that touch at a corner (26-connectivity)", () => {
  const dims: Dims = [4, 4, 4];
  const { labels, count } = connectedComponents(
    mask(dims, [[0, 0, 0], [1, 1, 1], [3, 3, 3]]),
    dims,
  );
  assertEquals(count, 2);
  assertEquals(labels[at(dims, 0, 0, 0)], labels[at(dims, 1, 1, 1)]);
  assert(labels[at(dims, 3, 3, 3)] !== labels[at(dims, 0, 0, 0)]);
});

Deno.test("dilate() grows by the 18-neighbour element: corners need two steps", () => {
  const dims: Dims = [5, 5, 5];
  const one = dilate(mask(dims, [[2, 2, 2]]), dims, 1);
  assertEquals(one.reduce((s, v) => s + v, 0), 19);
  assertEquals(one[at(dims, 3, 3, 3)], 0);
  assertEquals(one[at(dims, 3, 3, 2)], 1);
  const two = dilate(mask(dims, [[2, 2, 2]]), dims, 2);
  assertEquals(two[at(dims, 3, 3, 3)], 1);
  assertEquals(two[at(dims, 4, 4, 4)], 0); // |d|₁ = 6 > 4
  assertEquals(two[at(dims, 4, 4, 2)], 1);
});

// ---------------------------------------------------------------------------------------------
// Surfels and robust HD95

Deno.test("cellAreas() gives the marching-cubes surface of simple cells, scaled by spacing", () => {
  const a = cellAreas(ISO);
  assertAlmostEquals(a[0b10000000], Math.sqrt(3) / 8, 1e-15); // one corner
  assertAlmostEquals(a[0b11000000], Math.SQRT1_2, 1e-15); // an edge: a 1 × √½ rectangle
  assertAlmostEquals(a[0b11110000], 1, 1e-15); // a face: the mid-plane
  assertEquals(a[0], 0);
  assertEquals(a[255], 0);
  // One corner and all but it cut the same surface.
  for (let c = 0; c < 256; c++) assertAlmostEquals(a[c], a[255 - c], 1e-12);
  // The mid-plane between the x = 0 and x = 1 voxel faces (codes 0b11110000) is scaled by sy·sz.
  assertAlmostEquals(cellAreas([3, 2, 5])[0b11110000], 10, 1e-12);
});

Deno.test("robustHausdorff() of two boxes apart along x: by area over both directions", () => {
  const dims: Dims = [12, 4, 4];
  const a = fill(new Uint8Array(12 * 16), dims, [0, 0, 0], [2, 3, 3]);
  const b = fill(new Uint8Array(12 * 16), dims, [7, 0, 0], [9, 3, 3]);
  // Surface points sit on voxel corners: the facing sides (x = 3 and x = 7) are 4 apart, the far
  // sides 10; the 95th percentile by area lies on the far sides' corners.
  const d = robustHausdorff(a, b, dims);
  assert(d > 4 && d <= 10, `got ${d}`);
  assertEquals(d, bruteRobustHd95(a, b, dims, ISO));
  assertEquals(robustHausdorff(a, a, dims), 0);
  assertEquals(robustHausdorff(a, new Uint8Array(a.length), dims), Infinity);
  // Spacing along x stretches x distances only: here every nearest pair differs in x alone.
  const thin = mask([10, 1, 1], [[0, 0, 0]]);
  const far = mask([10, 1, 1], [[6, 0, 0]]);
  assertEquals(robustHausdorff(thin, far, [10, 1, 1], [2, 1, 1]), 12);
});

/**
 * The robust HD95 by brute force: every voxel corner whose 8 voxels are mixed is a surface point
 * with the area cellAreas gives its code; all pairs of points; per direction the first distance
 * whose cumulated area reaches 95 %; the larger.
 */
function bruteRobustHd95(a: Uint8Array, b: Uint8Array, dims: Dims, spacing: number[]): number {
  const areas = cellAreas(spacing);
  const points = (m: Uint8Array) => {
    const out: { p: number[]; area: number }[] = [];
    const inside = (x: number, y: number, z: number) =>
      x >= 0 && y >= 0 && z >= 0 && x < dims[0] && y < dims[1] && z < dims[2] &&
      m[at(dims, x, y, z)] !== 0;
    for (let z = 0; z <= dims[2]; z++) {
      for (let y = 0; y <= dims[1]; y++) {
        for (let x = 0; x <= dims[0]; x++) {
          let code = 0;
          for (let i = 0; i < 2; i++) {
            for (let j = 0; j < 2; j++) {
              for (let k = 0; k < 2; k++) {
                if (inside(x - 1 + i, y - 1 + j, z - 1 + k)) code |= 1 << (7 - (4 * i + 2 * j + k));
              }
            }
          }
          if (code !== 0 && code !== 255) out.push({ p: [x, y, z], area: areas[code] });
        }
      }
    }
    return out;
  };
  const pa = points(a);
  const pb = points(b);
  const dist = (p: number[], q: number[]) =>
    Math.sqrt(p.reduce((s, v, k) => s + ((v - q[k]) * spacing[k]) ** 2, 0));
  const directed = (from: typeof pa, to: typeof pa) => {
    const d = from.map((f) => ({
      d: to.reduce((m, t) => Math.min(m, dist(f.p, t.p)), Infinity),
      area: f.area,
    })).sort((x, y) => x.d - y.d || x.area - y.area);
    const total = d.reduce((s, v) => s + v.area, 0);
    let cum = 0;
    for (const v of d) {
      cum += v.area;
      if (cum / total >= 0.95 - 1e-12) return v.d;
    }
    return d[d.length - 1].d;
  };
  return Math.max(directed(pa, pb), directed(pb, pa));
}

/** Union of random small ellipsoids: a lesion-like blob. */
function smallBlob(dims: Dims, rand: () => number, count: number): Uint8Array {
  const m = new Uint8Array(dims[0] * dims[1] * dims[2]);
  for (let e = 0; e < count; e++) {
    const c = dims.map((d) => rand() * d);
    const r = dims.map((d) => 0.7 + rand() * d * 0.3);
    for (let z = 0; z < dims[2]; z++) {
      for (let y = 0; y < dims[1]; y++) {
        for (let x = 0; x < dims[0]; x++) {
          const q = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2;
          if (q <= 1) m[at(dims, x, y, z)] = 1;
        }
      }
    }
  }
  return m;
}

Deno.test("robustHausdorff() equals an all-pairs brute force on 25 random anisotropic pairs", () => {
  const rand = seededRandom(95);
  let worst = 0;
  let pairs = 0;
  for (let t = 0; t < 25; t++) {
    const dims: Dims = [
      4 + Math.floor(rand() * 9),
      4 + Math.floor(rand() * 9),
      3 + Math.floor(rand() * 7),
    ];
    const spacing = t % 2 ? [1, 1, 1] : [0.5 + rand(), 0.5 + rand(), 1 + rand() * 3];
    const a = smallBlob(dims, rand, 1 + Math.floor(rand() * 3));
    const b = smallBlob(dims, rand, 1 + Math.floor(rand() * 3));
    if (!a.includes(1) || !b.includes(1)) continue;
    pairs++;
    const got = robustHausdorff(a, b, dims, spacing);
    const want = bruteRobustHd95(a, b, dims, spacing);
    worst = Math.max(worst, Math.abs(got - want));
    assertAlmostEquals(got, want, 1e-9, `pair ${t}: dims ${dims} spacing ${spacing}`);
    assertEquals(robustHausdorff(b, a, dims, spacing), got); // symmetric
  }
  assert(pairs >= 20, `only ${pairs} non-empty pairs`);
  console.log(
    `robust HD95 vs all-pairs brute force: ${pairs} pairs, largest difference ${worst} mm`,
  );
});

// ---------------------------------------------------------------------------------------------
// Lesion-wise rules

const GLI = LESION_WISE_CHALLENGES["BraTS-GLI"];

Deno.test("lesionWiseRegion(): both empty score Dice 1 and HD95 0", () => {
  const z = new Uint8Array(8 * 8 * 8);
  assertEquals(lesionWiseRegion(z, z, [8, 8, 8], ISO, GLI), {
    dice: 1,
    hd95: 0,
    tp: 0,
    fp: 0,
    fn: 0,
    small: 0,
  });
});

Deno.test("lesionWiseRegion(): a missed lesion and a false positive score 0 and 374 mm each", () => {
  const dims: Dims = [40, 8, 8];
  const truth = fill(new Uint8Array(40 * 64), dims, [1, 1, 1], [5, 5, 5]); // 125 voxels
  const pred = fill(new Uint8Array(40 * 64), dims, [30, 1, 1], [34, 5, 5]);
  const r = lesionWiseRegion(pred, truth, dims, ISO, GLI);
  assertEquals([r.tp, r.fp, r.fn], [0, 1, 1]);
  assertEquals([r.dice, r.hd95], [0, LESION_MISS_HD95]);
  // Found exactly: Dice 1, HD95 0; the far prediction is still a false positive.
  const both = pred.slice();
  fill(both, dims, [1, 1, 1], [5, 5, 5]);
  const s = lesionWiseRegion(both, truth, dims, ISO, GLI);
  assertEquals([s.tp, s.fp, s.fn, s.dice, s.hd95], [1, 1, 0, 0.5, LESION_MISS_HD95 / 2]);
});

Deno.test("lesionWiseRegion(): reference lesions whose dilations touch are one lesion", () => {
  const dims: Dims = [30, 7, 7];
  // Two 3³ cubes with a gap of g empty voxels; dilation d = 3 reaches 3 voxels out of each, so
  // the dilations touch (26-connected) when g ≤ 6 and not when g = 7.
  for (const [gap, lesions] of [[6, 1], [7, 2]] as const) {
    const truth = fill(new Uint8Array(30 * 49), dims, [1, 2, 2], [3, 4, 4]);
    fill(truth, dims, [4 + gap, 2, 2], [6 + gap, 4, 4]);
    // Found exactly: each found lesion has Dice 1; all lesions are small for GLI's 50 mm³, so use 0.
    const r = lesionWiseRegion(truth, truth, dims, ISO, { dilation: 3, minVolume: 0 });
    assertEquals(r.tp, lesions, `gap ${gap}`);
    assertEquals([r.fp, r.fn, r.dice, r.hd95], [0, 0, 1, 0], `gap ${gap}`);
  }
  // Merged, a prediction of only the first cube scores it against both cubes.
  const truth = fill(new Uint8Array(30 * 49), dims, [1, 2, 2], [3, 4, 4]);
  fill(truth, dims, [10, 2, 2], [12, 4, 4]);
  const pred = fill(new Uint8Array(30 * 49), dims, [1, 2, 2], [3, 4, 4]);
  const r = lesionWiseRegion(pred, truth, dims, ISO, { dilation: 3, minVolume: 0 });
  assertEquals([r.tp, r.fp, r.fn], [1, 0, 0]);
  assertAlmostEquals(r.dice, (2 * 27) / (54 + 27), 1e-12);
});

Deno.test("lesionWiseRegion(): a prediction near a lesion matches it through the lesion's dilation", () => {
  const dims: Dims = [20, 7, 7];
  const truth = fill(new Uint8Array(20 * 49), dims, [2, 2, 2], [4, 4, 4]);
  // Two voxels past the lesion: inside its dilation by 3, so a match with Dice 0 — not a miss
  // plus a false positive.
  const pred = fill(new Uint8Array(20 * 49), dims, [7, 2, 2], [8, 4, 4]);
  const r = lesionWiseRegion(pred, truth, dims, ISO, { dilation: 3, minVolume: 0 });
  assertEquals([r.tp, r.fp, r.fn, r.dice], [1, 0, 0, 0]);
  assert(r.hd95 > 0 && r.hd95 < LESION_MISS_HD95);
  // Dilation 1 does not reach it: a miss and a false positive.
  const s = lesionWiseRegion(pred, truth, dims, ISO, { dilation: 1, minVolume: 0 });
  assertEquals([s.tp, s.fp, s.fn, s.dice, s.hd95], [0, 1, 1, 0, LESION_MISS_HD95]);
});

Deno.test("lesionWiseRegion(): lesions of at most minVolume mm³ are left out, their matches are not FP", () => {
  const dims: Dims = [30, 8, 8];
  const truth = fill(new Uint8Array(30 * 64), dims, [1, 1, 1], [5, 5, 5]); // 125 mm³
  fill(truth, dims, [20, 1, 1], [21, 2, 2]); // 8 voxels
  const pred = truth.slice();
  const r = lesionWiseRegion(pred, truth, dims, ISO, GLI);
  assertEquals([r.tp, r.fp, r.fn, r.small, r.dice, r.hd95], [1, 0, 0, 1, 1, 0]);
  // A missed small lesion costs nothing either.
  fill(pred, dims, [20, 1, 1], [21, 2, 2], 0);
  assertEquals(lesionWiseRegion(pred, truth, dims, ISO, GLI).dice, 1);
  // At 2 mm along x the small lesion is 16 mm³: still ≤ 50. At 8 mm it is 64 mm³ and counts.
  const big = lesionWiseRegion(pred, truth, dims, [8, 1, 1], GLI);
  assertEquals([big.tp, big.fn, big.small, big.dice], [1, 1, 0, 0.5]);
  // Exactly at the threshold (50 mm³) a lesion is left out, as `gt_lesion_vol <= thresh` is.
  const edge = lesionWiseRegion(pred, truth, dims, [6.25, 1, 1], GLI);
  assertEquals(edge.small, 1);
});

// ---------------------------------------------------------------------------------------------
// evaluate --lesion-wise

/** BraTS's own grid orientation at `spacing`. */
function affineFor(spacing: number[]): number[][] {
  return [[-spacing[0], 0, 0, 0], [0, -spacing[1], 0, 239], [0, 0, spacing[2], 0], [0, 0, 0, 1]];
}

function segFile(labels: Uint8Array, dims: Dims, spacing: number[] = ISO): Uint8Array {
  return encodeNifti(labels, "uint8", createNiftiHeader(dims, affineFor(spacing), "uint8"));
}

Deno.test("evaluate --lesion-wise: per-case scores in JSON, the summary, the CSV and a table", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lesion-wise-" });
  try {
    const dims: Dims = [40, 12, 10];
    const truth = fill(new Uint8Array(40 * 120), dims, [2, 2, 2], [7, 7, 7], 2); // edema 216 mm³
    fill(truth, dims, [4, 4, 4], [5, 5, 5], 3); // enhancing, 8 mm³ (small)
    const pred = truth.slice();
    fill(pred, dims, [30, 2, 2], [35, 7, 7], 2); // a false-positive whole tumour
    await Deno.mkdir(join(dir, "truth"));
    await Deno.mkdir(join(dir, "pred"));
    await Deno.writeFile(join(dir, "truth", "c1.nii.gz"), segFile(truth, dims));
    await Deno.writeFile(join(dir, "pred", "c1.nii.gz"), segFile(pred, dims));
    const base = ["evaluate", "--pred", join(dir, "pred"), "--truth", join(dir, "truth")];
    const run = await runMain([...base, "--lesion-wise", "--json", "--out", join(dir, "out")]);
    assertEquals(run.code, 0, run.stderr);
    const e = JSON.parse(run.stdout);
    assertEquals(e.lesionWise.challenge, "BraTS-GLI");
    assertEquals([e.lesionWise.dilation, e.lesionWise.minVolume], [3, 50]);
    assertEquals(e.cases[0].lesionWise.WT, { dice: 0.5, hd95: 187, tp: 1, fp: 1, fn: 0, small: 0 });
    assertEquals(e.cases[0].lesionWise.ET, { dice: 1, hd95: 0, tp: 0, fp: 0, fn: 0, small: 1 });
    assertEquals(e.lesionWise.summary.WT.dice.mean, 0.5);
    assertEquals(e.cases[0].WT.dice, 2 * 216 / (216 + 432)); // the legacy metrics stay
    const csv = await Deno.readTextFile(join(dir, "out", "metrics.csv"));
    assertStringIncludes(csv.split("\n")[0], LESION_CSV_COLUMNS.join(","));
    assertStringIncludes(csv.split("\n")[1], ",0.5,187,1,1,0");
    const table = await runMain([...base, "--lesion-wise", "--challenge", "BraTS-MET"]);
    assertEquals(table.code, 0, table.stderr);
    assertStringIncludes(table.stdout, "lesion-wise (BraTS-MET: dilation 1, lesions <= 2 mm³");
    // With MET's 2 mm³, the 8 mm³ enhancing lesion counts.
    assertStringIncludes(table.stdout, "1/0/0");
    const bad = await runMain([...base, "--lesion-wise", "--challenge", "BraTS-XYZ"]);
    assertEquals(bad.code, 2, bad.stderr);
    assertStringIncludes(bad.stderr, 'got "BraTS-XYZ"');
    const stray = await runMain([...base, "--lesion-dilation", "2"]);
    assertEquals(stray.code, 2);
    assertStringIncludes(stray.stderr, "--lesion-dilation needs --lesion-wise");
    // Without --lesion-wise nothing changes: no lesion-wise keys, no extra columns.
    const plain = await runMain([...base, "--json"]);
    assertEquals(JSON.parse(plain.stdout).lesionWise, undefined);
    assertEquals(evaluationCsv(JSON.parse(plain.stdout).cases).includes("lesion"), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// Against the challenge's code

const REFERENCE = Deno.env.get("REVUNET_BRATS2023_METRICS");

/** Why the cross-check cannot run here, or undefined when it can. */
const CROSS_CHECK_MISSING: string | undefined = (() => {
  if (!REFERENCE) {
    return "REVUNET_BRATS2023_METRICS is not set (a checkout of rachitsaluja/BraTS-2023-Metrics)";
  }
  try {
    Deno.statSync(join(REFERENCE, "metrics.py"));
  } catch {
    return `${REFERENCE} has no metrics.py`;
  }
  const probe = new Deno.Command(PYTHON, {
    args: ["-c", "import numpy, scipy, nibabel, pandas"],
    stdout: "null",
    stderr: "piped",
  });
  try {
    const r = probe.outputSync();
    if (!r.success) return `${PYTHON} lacks numpy/scipy/nibabel/pandas`;
  } catch {
    return `${PYTHON} is not installed`;
  }
  return undefined;
})();
if (CROSS_CHECK_MISSING) {
  console.log(
    `lesion_wise_test: skipping the cross-check with the BraTS 2023 code: ${CROSS_CHECK_MISSING}`,
  );
}

/** Runs the challenge's get_LesionWiseResults on each pair, cc3d or SciPy's 26-connected label. */
const REFERENCE_RUNNER = String.raw`
import json, sys, types, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
try:
    import cc3d
except ImportError:
    import numpy as np
    from scipy import ndimage
    def connected_components(a, connectivity=26):
        assert connectivity == 26
        return ndimage.label(a, structure=np.ones((3, 3, 3)))[0]
    sys.modules["cc3d"] = types.SimpleNamespace(connected_components=connected_components)
import numpy as np
import pandas as pd
# The code pins pandas 1.3.4; on later pandas (Debian's 1.5.3), DataFrame.replace(inf, 374) raises
# on its column of arrays of lesion numbers. Replace in the numeric columns, as 1.3.4 does.
_replace = pd.DataFrame.replace
def _numeric_replace(self, to_replace=None, value=None, inplace=False, **kw):
    try:
        return _replace(self, to_replace, value, inplace=inplace, **kw)
    except AttributeError:
        target = self if inplace else self.copy()
        for c in target.columns:
            if pd.api.types.is_numeric_dtype(target[c]):
                target[c] = target[c].replace(to_replace, value)
        return None if inplace else target
pd.DataFrame.replace = _numeric_replace
import metrics
out = []
for case in json.load(open(sys.argv[2])):
    df = metrics.get_LesionWiseResults(case["pred"], case["gt"], case["challenge"])
    out.append({row["Labels"]: {k: float(row[k]) for k in
        ["LesionWise_Score_Dice", "LesionWise_Score_HD95", "Num_TP", "Num_FP", "Num_FN"]}
        for _, row in df.iterrows()})
print(json.dumps(out))
`;

/**
 * A random BraTS 2023 label volume: `count` lesions, each an ellipsoid of edema (2) around an
 * enhancing shell (3) around necrosis (1), some tiny; plus stray voxels.
 */
function randomLabels(dims: Dims, rand: () => number, count: number, strays: number): Uint8Array {
  const [nx, ny, nz] = dims;
  const m = new Uint8Array(nx * ny * nz);
  for (let e = 0; e < count; e++) {
    const c = dims.map((d) => rand() * d);
    const tiny = rand() < 0.3;
    const r = dims.map(() => tiny ? 0.8 + rand() * 1.5 : 1.5 + rand() * 6);
    for (let z = 0; z < nz; z++) {
      for (let y = 0; y < ny; y++) {
        for (let x = 0; x < nx; x++) {
          const q = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2;
          if (q > 1) continue;
          const label = q < 0.15 ? 1 : q < 0.45 ? 3 : 2;
          const i = x + nx * (y + ny * z);
          if (m[i] === 0 || label !== 2) m[i] = label;
        }
      }
    }
  }
  for (let s = 0; s < strays; s++) m[Math.floor(rand() * m.length)] = 1 + Math.floor(rand() * 3);
  return m;
}

/** A prediction of `truth`: some lesions kept (shifted or not), others missed, some invented. */
function randomPrediction(truth: Uint8Array, dims: Dims, rand: () => number): Uint8Array {
  const [nx, ny, nz] = dims;
  const out = new Uint8Array(truth.length);
  const shift = [0, 1, 2].map(() => Math.floor(rand() * 3) - 1);
  // Keep the truth shifted by up to a voxel, blanking a random slab (a missed part).
  const slab = Math.floor(rand() * nx);
  const width = Math.floor(rand() * nx * 0.4);
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++) {
        const [sx, sy, sz] = [x - shift[0], y - shift[1], z - shift[2]];
        if (sx < 0 || sy < 0 || sz < 0 || sx >= nx || sy >= ny || sz >= nz) continue;
        if (x >= slab && x < slab + width) continue;
        out[x + nx * (y + ny * z)] = truth[sx + nx * (sy + ny * sz)];
      }
    }
  }
  // Few false positives, so that the matched lesions' HD95 weigh in the means, not only 374s.
  const invented = randomLabels(dims, rand, Math.floor(rand() * 1.6), Math.floor(rand() * 1.5));
  for (let i = 0; i < out.length; i++) if (out[i] === 0) out[i] = invented[i];
  return out;
}

Deno.test({
  name: "lesion-wise scores equal the BraTS 2023 metrics code on 30 random pairs",
  ignore: CROSS_CHECK_MISSING !== undefined,
  fn: async () => {
    const rand = seededRandom(2023);
    const dir = await Deno.makeTempDir({ prefix: "lesion-wise-ref-" });
    try {
      const challenges = ["BraTS-GLI", "BraTS-MET", "BraTS-MEN", "BraTS-PED", "BraTS-SSA"];
      const pairs: { pred: string; gt: string; challenge: string; spacing: number[] }[] = [];
      for (let t = 0; t < 30; t++) {
        const dims: Dims = [
          28 + Math.floor(rand() * 24),
          24 + Math.floor(rand() * 24),
          16 + Math.floor(rand() * 20),
        ];
        const spacing = t % 3 === 2 ? [0.9375, 1.25, 2.5] : [1, 1, 1];
        const truth = t === 0
          ? new Uint8Array(dims[0] * dims[1] * dims[2]) // an empty reference
          : randomLabels(dims, rand, 1 + Math.floor(rand() * 6), Math.floor(rand() * 5));
        const pred = t === 1
          ? new Uint8Array(truth.length) // an empty prediction
          : randomPrediction(truth, dims, rand);
        const gt = join(dir, `${t}-gt.nii.gz`);
        const pr = join(dir, `${t}-pred.nii.gz`);
        await Deno.writeFile(gt, segFile(truth, dims, spacing));
        await Deno.writeFile(pr, segFile(pred, dims, spacing));
        pairs.push({ pred: pr, gt, challenge: challenges[t % challenges.length], spacing });
      }
      await Deno.writeTextFile(join(dir, "pairs.json"), JSON.stringify(pairs));
      const ran = await new Deno.Command(PYTHON, {
        args: ["-c", REFERENCE_RUNNER, REFERENCE!, join(dir, "pairs.json")],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(ran.stderr);
      assert(ran.success, `the BraTS 2023 code failed:\n${stderr}`);
      const want = JSON.parse(new TextDecoder().decode(ran.stdout));
      let worstDice = 0;
      let worstHd = 0;
      let lesions = 0;
      let fps = 0;
      let clean = 0;
      for (const [t, p] of pairs.entries()) {
        const params: LesionWiseParams = LESION_WISE_CHALLENGES[p.challenge];
        const { lesionWise } = await evaluatePair(p.pred, p.gt, {
          labels: "2023",
          lesionWise: params,
        });
        for (const region of ["WT", "TC", "ET"] as const) {
          const got = lesionWise![region];
          const ref = want[t][region];
          const what = `pair ${t} (${p.challenge}, spacing ${p.spacing}) ${region}`;
          assertEquals(
            [got.tp, got.fp, got.fn],
            [ref.Num_TP, ref.Num_FP, ref.Num_FN],
            `${what}: TP/FP/FN`,
          );
          worstDice = Math.max(worstDice, Math.abs(got.dice - ref.LesionWise_Score_Dice));
          worstHd = Math.max(worstHd, Math.abs(got.hd95 - ref.LesionWise_Score_HD95));
          assertAlmostEquals(got.dice, ref.LesionWise_Score_Dice, 1e-12, `${what}: Dice`);
          assertAlmostEquals(got.hd95, ref.LesionWise_Score_HD95, 1e-9, `${what}: HD95`);
          lesions += got.tp + got.fn;
          fps += got.fp;
          if (got.fp === 0 && got.fn === 0 && got.tp > 0) clean++;
        }
      }
      console.log(
        `lesion-wise vs BraTS 2023 code: ${pairs.length} pairs × 3 regions, ${lesions} scored ` +
          `reference lesions, ${fps} false positives, ${clean} region scores without a miss; largest differences Dice ${worstDice}, ` +
          `HD95 ${worstHd} mm`,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "cellAreas() equals the areas of the challenge's surfel table for all 256 codes",
  ignore: CROSS_CHECK_MISSING !== undefined,
  fn: async () => {
    const spacings = [[1, 1, 1], [0.9375, 1.25, 2.5], [3, 0.5, 1.7]];
    // The reference's own area computation from its neighbour_code_to_normals table.
    const script = String.raw`
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from surface_distance import lookup_tables
out = []
for sp in json.loads(sys.argv[2]):
    areas = []
    for code in range(256):
        total = 0.0
        for n in np.array(lookup_tables.neighbour_code_to_normals[code]):
            total += np.linalg.norm([n[0] * sp[1] * sp[2], n[1] * sp[0] * sp[2], n[2] * sp[0] * sp[1]])
        areas.append(float(total))
    out.append(areas)
print(json.dumps(out))
`;
    const ran = await new Deno.Command(PYTHON, {
      args: ["-c", script, REFERENCE!, JSON.stringify(spacings)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(ran.success, new TextDecoder().decode(ran.stderr));
    const want: number[][] = JSON.parse(new TextDecoder().decode(ran.stdout));
    let worst = 0;
    for (const [s, spacing] of spacings.entries()) {
      const got = cellAreas(spacing);
      for (let code = 0; code < 256; code++) {
        worst = Math.max(worst, Math.abs(got[code] - want[s][code]));
        assertAlmostEquals(got[code], want[s][code], 1e-12, `code ${code}, spacing ${spacing}`);
      }
    }
    console.log(
      `surfel areas vs the challenge's table: 3 spacings × 256 codes, largest difference ${worst} mm²`,
    );
  },
});

/** The real BraTS 2018 whole-tumour references beside the checkout (see its README). */
const REAL_LABELS = join(
  import.meta.dirname!,
  "..",
  "..",
  "..",
  "shared",
  "data",
  "Dataset501_BraTS2018WT",
  "labelsTr",
);
const REAL_MISSING: string | undefined = CROSS_CHECK_MISSING ?? (() => {
  try {
    Deno.statSync(REAL_LABELS);
    return undefined;
  } catch {
    return `${REAL_LABELS} is absent`;
  }
})();
if (REAL_MISSING && !CROSS_CHECK_MISSING) {
  console.log(`lesion_wise_test: skipping the real-scan cross-check: ${REAL_MISSING}`);
}

/** Runs the reference runner on `pairs` and returns its scores. */
async function referenceScores(
  pairs: { pred: string; gt: string; challenge: string }[],
  dir: string,
) {
  await Deno.writeTextFile(join(dir, "pairs.json"), JSON.stringify(pairs));
  const ran = await new Deno.Command(PYTHON, {
    args: ["-c", REFERENCE_RUNNER, REFERENCE!, join(dir, "pairs.json")],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(ran.success, `the BraTS 2023 code failed:\n${new TextDecoder().decode(ran.stderr)}`);
  return JSON.parse(new TextDecoder().decode(ran.stdout));
}

Deno.test({
  name: "lesion-wise scores equal the BraTS 2023 metrics code on real 240×240×155 references",
  ignore: REAL_MISSING !== undefined,
  fn: async () => {
    const rand = seededRandom(18);
    const dir = await Deno.makeTempDir({ prefix: "lesion-wise-real-" });
    try {
      const ids = ["Brats18_CBICA_AAB_1", "Brats18_CBICA_AOO_1"];
      const pairs = [];
      for (const [t, id] of ids.entries()) {
        const gt = join(REAL_LABELS, `${id}.nii.gz`);
        const image = decodeNifti(await Deno.readFile(gt), gt);
        const dims = image.header.dims.slice(0, 3) as Dims;
        const truth = Uint8Array.from(image.data as ArrayLike<number>);
        // A prediction that misses part of the tumour, is shifted a voxel, and adds stray lesions.
        const pred = randomPrediction(truth, dims, rand);
        const pr = join(dir, `${id}-pred.nii.gz`);
        await Deno.writeFile(
          pr,
          encodeNifti(pred, "uint8", createNiftiHeader(dims, image.header.affine, "uint8")),
        );
        pairs.push({ pred: pr, gt, challenge: ["BraTS-GLI", "BraTS-MET"][t] });
      }
      const want = await referenceScores(pairs, dir);
      const rows: string[] = [];
      for (const [t, p] of pairs.entries()) {
        const t0 = performance.now();
        const { lesionWise } = await evaluatePair(p.pred, p.gt, {
          labels: "2023",
          lesionWise: LESION_WISE_CHALLENGES[p.challenge],
        });
        const ms = performance.now() - t0;
        for (const region of ["WT", "TC", "ET"] as const) {
          const got = lesionWise![region];
          const ref = want[t][region];
          const what = `${ids[t]} (${p.challenge}) ${region}`;
          assertEquals([got.tp, got.fp, got.fn], [ref.Num_TP, ref.Num_FP, ref.Num_FN], what);
          assertAlmostEquals(got.dice, ref.LesionWise_Score_Dice, 1e-12, `${what}: Dice`);
          assertAlmostEquals(got.hd95, ref.LesionWise_Score_HD95, 1e-9, `${what}: HD95`);
        }
        const wt = lesionWise!.WT;
        rows.push(
          `${ids[t]} ${p.challenge}: WT dice ${wt.dice.toFixed(4)} hd95 ${wt.hd95.toFixed(2)} ` +
            `tp/fp/fn ${wt.tp}/${wt.fp}/${wt.fn} (${
              (ms / 1000).toFixed(1)
            } s with the legacy metrics)`,
        );
      }
      console.log(`lesion-wise vs BraTS 2023 code on real references:\n  ${rows.join("\n  ")}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
