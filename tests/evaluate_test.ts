/**
 * pipeline/distance.ts, pipeline/evaluation.ts and `evaluate`: metrics hand-computed on tiny
 * volumes, HD95 against an all-pairs brute force written here and against SciPy (MedPy's
 * definition, when Debian's python3 has scipy), the empty-region rules, both label conventions,
 * case matching, and the command's JSON, table and files on local folders and on s3rver.
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
  hd95,
  percentile,
  squaredDistanceTransform,
  surface,
  surfaceDistances,
} from "../pipeline/evaluation/distance.ts";
import { maskBox } from "../pipeline/volume/mod.ts";
import {
  caseMetrics,
  CSV_COLUMNS,
  describe,
  EMPTY_HD95,
  evaluateCases,
  evaluatePair,
  type Evaluation,
  evaluationCsv,
  metricsBaseName,
  regionMetrics,
  summarize,
  writeEvaluation,
} from "../pipeline/evaluation/evaluation.ts";
import {
  evaluateShard,
  formatLesionTable,
  formatTable,
  shardOutUri,
  writeShardEvaluation,
} from "../pipeline/evaluation/mod.ts";
import { shardOf } from "../pipeline/cases/mod.ts";
import { createNiftiHeader, encodeNifti } from "../pipeline/nifti/mod.ts";
import { seededRandom } from "../pipeline/cases/random.ts";
import { getObject, putObject } from "../pipeline/storage/objects.ts";
import { type Run, runMain } from "./_cli.ts";
import { PYTHON } from "./_nifti_fixtures.ts";
import { startS3rver } from "./_s3rver.ts";

// ---------------------------------------------------------------------------------------------
// Fixtures and an independent reference

type Dims = [number, number, number];

/** BraTS's own grid orientation, 1 mm. */
const LPS = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]];

/** A label volume as NIfTI bytes (uint8 unless told), on `affine`'s grid. */
function segFile(
  labels: ArrayLike<number>,
  dims: number[],
  affine: number[][] = LPS,
  datatype: "uint8" | "float64" | "int16" = "uint8",
): Uint8Array {
  return encodeNifti(labels, datatype, createNiftiHeader(dims, affine, datatype));
}

/** Union of random ellipsoids (and a few stray voxels) in a grid: a tumor-like random blob. */
function blob(dims: Dims, rand: () => number, count = 3): Uint8Array {
  const [nx, ny, nz] = dims;
  const m = new Uint8Array(nx * ny * nz);
  for (let e = 0; e < count; e++) {
    const c = dims.map((d) => rand() * d);
    const r = dims.map((d) => 0.6 + rand() * d * 0.35);
    for (let z = 0; z < nz; z++) {
      for (let y = 0; y < ny; y++) {
        for (let x = 0; x < nx; x++) {
          const q = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2;
          if (q <= 1) m[x + nx * (y + ny * z)] = 1;
        }
      }
    }
  }
  for (let s = 0; s < 2; s++) m[Math.floor(rand() * m.length)] = 1;
  return m;
}

/** Coordinates of the surface voxels: in the mask, with a 6-neighbour outside it or the volume. */
function bruteSurface(mask: ArrayLike<number>, [nx, ny, nz]: Dims): number[][] {
  const inside = (x: number, y: number, z: number) =>
    x >= 0 && y >= 0 && z >= 0 && x < nx && y < ny && z < nz && mask[x + nx * (y + ny * z)] !== 0;
  const out: number[][] = [];
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++) {
        if (!inside(x, y, z)) continue;
        const steps = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]];
        if (steps.some(([dx, dy, dz]) => !inside(x + dx, y + dy, z + dz))) out.push([x, y, z]);
      }
    }
  }
  return out;
}

/** MedPy's hd95 by brute force: all pairs of surface voxels, both directions, numpy's percentile. */
function bruteHd95(a: Uint8Array, b: Uint8Array, dims: Dims, spacing: number[]): number {
  const sa = bruteSurface(a, dims);
  const sb = bruteSurface(b, dims);
  const dist = (p: number[], q: number[]) =>
    Math.sqrt(p.reduce((s, v, k) => s + ((v - q[k]) * spacing[k]) ** 2, 0));
  const nearest = (from: number[][], to: number[][]) =>
    from.map((p) => to.reduce((m, q) => Math.min(m, dist(p, q)), Infinity));
  const all = [...nearest(sa, sb), ...nearest(sb, sa)].sort((x, y) => x - y);
  const rank = 0.95 * (all.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, all.length - 1);
  return all[lo] + (all[hi] - all[lo]) * (rank - lo);
}

const HAS_SCIPY: boolean = (() => {
  try {
    return new Deno.Command(PYTHON, {
      args: ["-c", "import scipy.ndimage, numpy"],
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } catch {
    return false;
  }
})();

/** MedPy's hd95 code (scipy.ndimage), on masks written as raw bytes, x fastest. */
const SCIPY_HD95 = String.raw`
import json, sys
import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

def surface_distances(result, reference, spacing):
    footprint = generate_binary_structure(result.ndim, 1)
    result_border = result ^ binary_erosion(result, structure=footprint, iterations=1)
    reference_border = reference ^ binary_erosion(reference, structure=footprint, iterations=1)
    dt = distance_transform_edt(~reference_border, sampling=spacing)
    return dt[result_border]

out = []
for case in json.load(open(sys.argv[1])):
    shape = tuple(case['dims'])
    a = np.fromfile(case['a'], dtype=np.uint8).reshape(shape, order='F').astype(bool)
    b = np.fromfile(case['b'], dtype=np.uint8).reshape(shape, order='F').astype(bool)
    hd1 = surface_distances(a, b, case['spacing'])
    hd2 = surface_distances(b, a, case['spacing'])
    out.append(float(np.percentile(np.hstack((hd1, hd2)), 95)))
print(json.dumps(out))
`;

/** hd95 of each pair by SciPy, as MedPy computes it. */
async function scipyHd95(
  cases: { a: Uint8Array; b: Uint8Array; dims: Dims; spacing: number[] }[],
): Promise<number[]> {
  const dir = await Deno.makeTempDir({ prefix: "hd95-" });
  try {
    const manifest = [];
    for (const [i, c] of cases.entries()) {
      const a = join(dir, `${i}a.bin`);
      const b = join(dir, `${i}b.bin`);
      await Deno.writeFile(a, c.a);
      await Deno.writeFile(b, c.b);
      manifest.push({ a, b, dims: c.dims, spacing: c.spacing });
    }
    await Deno.writeTextFile(join(dir, "cases.json"), JSON.stringify(manifest));
    const { success, stdout, stderr } = await new Deno.Command(PYTHON, {
      args: ["-c", SCIPY_HD95, join(dir, "cases.json")],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!success) throw new Error(`scipy hd95 failed:\n${new TextDecoder().decode(stderr)}`);
    return JSON.parse(new TextDecoder().decode(stdout));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A temporary folder removed when disposed. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "evaluate-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Says what a run did, for assertion messages. */
function show(run: Run): string {
  return `exit ${run.code}\n--- stdout\n${run.stdout}--- stderr\n${run.stderr}`;
}

/** Writes `files` (relative path → bytes) under a local folder. */
async function writeTree(root: string, files: Record<string, Uint8Array>): Promise<void> {
  for (const [rel, bytes] of Object.entries(files)) {
    await Deno.mkdir(join(root, rel, ".."), { recursive: true });
    await Deno.writeFile(join(root, rel), bytes);
  }
}

// ---------------------------------------------------------------------------------------------
// Distances

Deno.test("squaredDistanceTransform() equals brute force, anisotropic, on random features", () => {
  const rand = seededRandom(7);
  for (let t = 0; t < 20; t++) {
    const dims: Dims = [
      1 + Math.floor(rand() * 9),
      1 + Math.floor(rand() * 8),
      1 + Math.floor(rand() * 7),
    ];
    const spacing = [0.5 + rand() * 2, 0.5 + rand() * 2, 0.5 + rand() * 3];
    const n = dims[0] * dims[1] * dims[2];
    const f = Uint8Array.from({ length: n }, () => (rand() < 0.08 ? 1 : 0));
    const d = squaredDistanceTransform(f, dims, spacing);
    const at = (
      i: number,
    ) => [i % dims[0], Math.floor(i / dims[0]) % dims[1], Math.floor(i / (dims[0] * dims[1]))];
    for (let i = 0; i < n; i++) {
      let best = Infinity;
      for (let j = 0; j < n; j++) {
        if (!f[j]) continue;
        const p = at(i);
        const q = at(j);
        best = Math.min(best, p.reduce((s, v, k) => s + ((v - q[k]) * spacing[k]) ** 2, 0));
      }
      if (best === Infinity) assertEquals(d[i], Infinity);
      else assertAlmostEquals(d[i], best, 1e-9 * Math.max(1, best), `dims ${dims} voxel ${i}`);
    }
  }
});

Deno.test("surface() counts mask voxels on the volume border as surface (6-connected erosion)", () => {
  // A mask filling a 4×4×4 volume: all but the 2×2×2 centre is surface.
  const full = new Uint8Array(64).fill(1);
  assertEquals(surface(full, [4, 4, 4]).reduce((s, v) => s + v, 0), 56);
  // A 3×3×3 cube inside a 5×5×5 volume: only its centre is not surface, as in MedPy.
  const cube = new Uint8Array(125);
  for (let z = 1; z < 4; z++) {
    for (let y = 1; y < 4; y++) for (let x = 1; x < 4; x++) cube[x + 5 * (y + 5 * z)] = 1;
  }
  const s = surface(cube, [5, 5, 5]);
  assertEquals(s.reduce((n, v) => n + v, 0), 26);
  assertEquals(s[2 + 5 * (2 + 5 * 2)], 0);
  // A 3D plus sign: its centre has all six neighbours and is the one voxel not on the surface.
  const cross = new Uint8Array(27);
  for (const i of [13, 12, 14, 10, 16, 4, 22]) cross[i] = 1;
  assertEquals([...surface(cross, [3, 3, 3])].reduce((n, v) => n + v, 0), 6);
  // Diagonal neighbours do not protect a voxel: a 3×3×3 cube minus one face-neighbour of its centre.
  const notched = new Uint8Array(27).fill(1);
  notched[12] = 0;
  assertEquals([...surface(notched, [3, 3, 3])].reduce((n, v) => n + v, 0), 26);
  // Every case agrees with the brute-force surface.
  const rand = seededRandom(3);
  for (let t = 0; t < 10; t++) {
    const dims: Dims = [6, 5, 4];
    const m = blob(dims, rand, 2);
    const mine = surface(m, dims);
    const want = new Uint8Array(m.length);
    for (const [x, y, z] of bruteSurface(m, dims)) want[x + 6 * (y + 5 * z)] = 1;
    assertEquals(mine, want);
  }
});

Deno.test("percentile() interpolates linearly like numpy.percentile", () => {
  assertEquals(percentile([3, 1, 2], 50), 2);
  assertEquals(percentile([0, 10], 95), 9.5);
  assertEquals(percentile([0, 0, 0, 0, 0, 0, 0, 0, 2], 95), 1.1999999999999993); // numpy's value
  assertEquals(percentile([5], 95), 5);
  assertThrows(() => percentile([], 95), RangeError, "no values");
});

Deno.test("hd95() of x=[1 voxel at z=0] vs [z=3] with spacing [1,1,2] is 6 mm; empty masks throw", () => {
  const a = new Uint8Array(64);
  const b = new Uint8Array(64);
  a[1 + 4 * (1 + 4 * 0)] = 1;
  b[1 + 4 * (1 + 4 * 3)] = 1;
  assertEquals(hd95(a, b, [4, 4, 4], [1, 1, 2]), 6);
  assertEquals(surfaceDistances(a, b, [4, 4, 4], [1, 1, 2]), new Float64Array([6]));
  assertEquals(maskBox(a, [4, 4, 4]), { start: [1, 1, 0], size: [1, 1, 1] });
  assertThrows(() => hd95(a, new Uint8Array(64), [4, 4, 4]), RangeError, "second mask is empty");
  assertThrows(() => hd95(a, b, [4, 4, 3]), RangeError, "does not fit dims");
  assertThrows(() => hd95(a, b, [4, 4, 4], [1, 0, 1]), RangeError, "spacing");
});

Deno.test("hd95() equals the all-pairs brute force on 60 random blob pairs, anisotropic spacing", () => {
  const rand = seededRandom(11);
  let worst = 0;
  for (let t = 0; t < 60; t++) {
    const dims: Dims = [
      4 + Math.floor(rand() * 10),
      4 + Math.floor(rand() * 9),
      3 + Math.floor(rand() * 8),
    ];
    const spacing = t % 3 === 0
      ? [1, 1, 1]
      : [0.5 + rand() * 1.5, 0.5 + rand() * 1.5, 1 + rand() * 3];
    const a = blob(dims, rand, 1 + (t % 3));
    const b = blob(dims, rand, 1 + ((t + 1) % 3));
    const want = bruteHd95(a, b, dims, spacing);
    const got = hd95(a, b, dims, spacing);
    worst = Math.max(worst, Math.abs(got - want));
    assertAlmostEquals(got, want, 1e-9, `pair ${t}: dims ${dims} spacing ${spacing}`);
    assertEquals(hd95(b, a, dims, spacing), got); // symmetric
  }
  console.log(`hd95 vs all-pairs brute force: 60 pairs, largest difference ${worst} mm`);
});

Deno.test({
  name: "hd95() equals SciPy running MedPy's hd95 code (small blobs, border masks, 64×56×40)",
  ignore: !HAS_SCIPY,
  fn: async () => {
    const rand = seededRandom(5);
    const cases: { a: Uint8Array; b: Uint8Array; dims: Dims; spacing: number[] }[] = [];
    for (let t = 0; t < 30; t++) {
      const dims: Dims = [
        5 + Math.floor(rand() * 12),
        5 + Math.floor(rand() * 12),
        3 + Math.floor(rand() * 10),
      ];
      const spacing = t % 2 ? [1, 1, 1] : [0.9375, 0.9375 + rand(), 1 + rand() * 4];
      cases.push({ a: blob(dims, rand, 3), b: blob(dims, rand, 2), dims, spacing });
    }
    // A mask filling the volume (all its border is surface) against a smaller one.
    const full = new Uint8Array(7 * 6 * 5).fill(1);
    cases.push({ a: full, b: blob([7, 6, 5], rand, 1), dims: [7, 6, 5], spacing: [1, 2, 3] });
    // Larger, tumor-like: nested blobs far apart in part, anisotropic.
    for (let t = 0; t < 3; t++) {
      const dims: Dims = [64, 56, 40];
      cases.push({ a: blob(dims, rand, 4), b: blob(dims, rand, 4), dims, spacing: [1, 1.2, 2.5] });
    }
    const want = await scipyHd95(cases);
    let worst = 0;
    for (const [i, c] of cases.entries()) {
      const got = hd95(c.a, c.b, c.dims, c.spacing);
      worst = Math.max(worst, Math.abs(got - want[i]));
      assertAlmostEquals(got, want[i], 1e-9, `case ${i}: dims ${c.dims} spacing ${c.spacing}`);
    }
    console.log(`hd95 vs SciPy/MedPy: ${cases.length} pairs, largest difference ${worst} mm`);
  },
});

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

/** Two 2021 cases and a 2023 case with their labels on 6×5×4 grids; `P` predictions for some. */
function labelsFor(seed: number, enhancing: 3 | 4, dims: Dims = [6, 5, 4]): Uint8Array {
  const rand = seededRandom(seed);
  const wt = blob(dims, rand, 2);
  const et = blob(dims, rand, 1);
  return wt.map((w, i) => (w ? (et[i] ? enhancing : i % 3 === 0 ? 1 : 2) : 0));
}

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
// The command

/** A small local dataset: 2021 references for P, Q, R; predictions for P, Q and an extra X. */
async function commandFixture(root: string): Promise<void> {
  const dims: Dims = [6, 5, 4];
  await writeTree(root, {
    "truth/BraTS20_Training_P/BraTS20_Training_P_seg.nii.gz": segFile(labelsFor(40, 4), dims),
    "truth/BraTS20_Training_Q/BraTS20_Training_Q_seg.nii.gz": segFile(labelsFor(41, 4), dims),
    "truth/BraTS20_Training_R/BraTS20_Training_R_seg.nii.gz": segFile(labelsFor(42, 4), dims),
    "pred/BraTS20_Training_P.nii.gz": segFile(labelsFor(40, 4), dims),
    "pred/BraTS20_Training_Q.nii.gz": segFile(labelsFor(43, 4), dims),
    "pred/BraTS20_Training_X.nii.gz": segFile(labelsFor(44, 4), dims),
  });
}

function checkShape(ev: Evaluation, cases: string[], missing: string[], extra: string[]): void {
  assertEquals(Object.keys(ev), ["cases", "summary", "missing", "extra"]);
  assertEquals(ev.cases.map((c) => c.case), cases);
  for (const c of ev.cases) {
    assertEquals(Object.keys(c), ["case", "ET", "TC", "WT"]);
    for (const r of ["ET", "TC", "WT"] as const) {
      assertEquals(Object.keys(c[r]), ["dice", "hd95", "sensitivity", "specificity"]);
      for (const v of Object.values(c[r])) assert(typeof v === "number" && Number.isFinite(v));
    }
  }
  assertEquals(Object.keys(ev.summary), ["ET", "TC", "WT"]);
  for (const r of ["ET", "TC", "WT"] as const) {
    assertEquals(Object.keys(ev.summary[r]), ["dice", "hd95", "sensitivity", "specificity"]);
    assertEquals(Object.keys(ev.summary[r].dice), ["mean", "std", "median", "q25", "q75"]);
  }
  assertEquals(ev.missing, missing);
  assertEquals(ev.extra, extra);
}

Deno.test("evaluate --json prints one JSON object, writes --out, and exits 1 on missing cases", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const pred = join(tmp.path, "pred");
  const truth = join(tmp.path, "truth");
  const out = join(tmp.path, "metrics");
  const strict = await runMain([
    "evaluate",
    "--pred",
    pred,
    "--truth",
    truth,
    "--json",
    "--out",
    out,
  ]);
  assertEquals(strict.code, 1, show(strict));
  const lines = strict.stdout.split("\n").filter((l) => l !== "");
  assertEquals(lines.length, 1, show(strict));
  const ev = JSON.parse(lines[0]) as Evaluation;
  checkShape(ev, ["BraTS20_Training_P", "BraTS20_Training_Q"], ["BraTS20_Training_R"], [
    "BraTS20_Training_X",
  ]);
  assertEquals(ev.cases[0].WT.dice, 1);
  assertStringIncludes(strict.stderr, 'missing: no prediction for case "BraTS20_Training_R"');
  assertStringIncludes(strict.stderr, 'extra: prediction "BraTS20_Training_X" has no reference');
  assertStringIncludes(strict.stderr, "--allow-missing");
  // What was computed is written all the same.
  assertEquals(JSON.parse(await Deno.readTextFile(join(out, "metrics.json"))), ev);
  const csv = (await Deno.readTextFile(join(out, "metrics.csv"))).trim().split("\n");
  assertEquals(csv[0], ["case", ...CSV_COLUMNS].join(","));
  assertEquals(csv.length, 3);
  assertEquals(csv[1].split(",").slice(1).map(Number), [1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1]);
  assertEquals(
    csv[2].split(",").map((v, k) => (k === 0 ? v : Number(v))),
    [
      ev.cases[1].case,
      ...(["ET", "TC", "WT"] as const).flatMap((r) => Object.values(ev.cases[1][r])),
    ],
  );

  const [allowed, table] = [
    await runMain(["evaluate", "--pred", pred, "--truth", truth, "--json", "--allow-missing"]),
    await runMain(["evaluate", "--pred", pred, "--truth", truth, "--allow-missing"]),
  ];
  assertEquals(allowed.code, 0, show(allowed));
  assertEquals(JSON.parse(allowed.stdout), ev);
  assertEquals(table.code, 0, show(table));
  assertStringIncludes(table.stdout, "Dice ET");
  assertStringIncludes(table.stdout, "BraTS20_Training_Q");
  assertStringIncludes(table.stdout, "median");
  assertStringIncludes(
    table.stdout,
    "1 missing (BraTS20_Training_R); 1 extra (BraTS20_Training_X)",
  );
});

Deno.test("evaluateShard() takes one shard's cases; writeShardEvaluation() and shardOutUri() name its outputs", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const [pred, truth, out] = ["pred", "truth", "out"].map((d) => join(tmp.path, d));
  const ids = ["P", "Q", "R"].map((x) => `BraTS20_Training_${x}`);
  for (const index of [0, 1]) {
    const shard = { index, count: 2 };
    const ev = await evaluateShard(pred, truth, { shard });
    const mine = ids.filter((id) => shardOf(id, 2) === index);
    assertEquals([...ev.cases.map((c) => c.case), ...ev.missing].sort(), mine);
    const written = await writeShardEvaluation(out, ev, shard);
    assertEquals(written, [
      join(out, `metrics-shard-${index}-of-2.json`),
      join(out, `metrics-shard-${index}-of-2.csv`),
    ]);
    assertEquals(shardOutUri(out, shard), join(out, `shard-${index}-of-2`));
  }
  const all = await evaluateShard(pred, truth);
  assertEquals(all.cases.map((c) => c.case), ids.slice(0, 2));
  assertEquals(await writeShardEvaluation(out, all), [
    join(out, "metrics.json"),
    join(out, "metrics.csv"),
  ]);
  assertEquals(shardOutUri(out), out);
});

Deno.test("formatTable() and formatLesionTable(): the rows of a table as wide as its rule", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const ev = await evaluateShard(join(tmp.path, "pred"), join(tmp.path, "truth"), {
    lesionWise: { dilation: 1, minVolume: 0 },
  });
  const [table, footer] = formatTable(ev).split("\n\n");
  const rows = table.split("\n");
  assertEquals(rows.length, 1 + 1 + 2 + 1 + 5); // head, rule, 2 cases, rule, 5 statistics
  assert(rows.every((r) => r.length === rows[1].length), table);
  assert(/^-+$/.test(rows[1]) && rows[4] === rows[1], table);
  assertEquals(rows.slice(5).map((r) => r.split(" ")[0]), ["mean", "std", "median", "q25", "q75"]);
  assertEquals(
    footer,
    "2 cases evaluated; 1 missing (BraTS20_Training_R); 1 extra (BraTS20_Training_X)",
  );
  const [title, ...lesionRows] = formatLesionTable(ev).split("\n");
  assertStringIncludes(title, "lesion-wise (custom: dilation 1, lesions <= 0 mm³ left out");
  assertEquals(lesionRows.length, 1 + 1 + 2 + 1 + 1); // head, rule, 2 cases, rule, mean
  // The mean row has no counts: its trailing empty cells are trimmed.
  const full = lesionRows.slice(0, -1);
  assert(full.every((r) => r.length === lesionRows[1].length), lesionRows.join("\n"));
  assert(lesionRows[0].startsWith("case") && lesionRows.at(-1)!.startsWith("mean"));
});

Deno.test("evaluate --report --shard: the shard's metrics files and its report folder, no others", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const [pred, truth, out] = ["pred", "truth", "out"].map((d) => join(tmp.path, d));
  const index = shardOf("BraTS20_Training_P", 2);
  const r = await runMain([
    "evaluate",
    "--pred",
    pred,
    "--truth",
    truth,
    "--out",
    out,
    "--report",
    "--shard",
    `${index}/2`,
    "--allow-missing",
    "--json",
  ]);
  assertEquals(r.code, 0, show(r));
  const ev = JSON.parse(r.stdout) as Evaluation;
  assert(ev.cases.some((c) => c.case === "BraTS20_Training_P"), r.stdout);
  const name = `shard-${index}-of-2`;
  assertEquals(JSON.parse(await Deno.readTextFile(join(out, `metrics-${name}.json`))), ev);
  const html = await Deno.readTextFile(join(out, name, "report", "index.html"));
  for (const c of ev.cases) assertStringIncludes(html, c.case);
  assertStringIncludes(r.stderr, `evaluate: report ${join(out, name, "report", "index.html")}`);
  assertStringIncludes(r.stderr, `evaluate: wrote ${join(out, `metrics-${name}.json`)} and `);
  const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
  assertEquals(names, [`metrics-${name}.csv`, `metrics-${name}.json`, name]);
});

Deno.test("evaluate exits 2 on usage errors and 1 on a broken file, writing nothing", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const pred = join(tmp.path, "pred");
  const truth = join(tmp.path, "truth");
  const out = join(tmp.path, "metrics");
  await Deno.writeFile(join(pred, "BraTS20_Training_R.nii.gz"), new Uint8Array([0x1f, 0x8b, 8, 0]));
  const noPred = await runMain(["evaluate", "--truth", truth]);
  const badLabels = await runMain([
    "evaluate",
    "--pred",
    pred,
    "--truth",
    truth,
    "--labels",
    "2022",
  ]);
  const broken = await runMain(["evaluate", "--pred", pred, "--truth", truth, "--out", out]);
  assertEquals(noPred.code, 2, show(noPred));
  assertStringIncludes(noPred.stderr, "--pred <uri> is required");
  assertEquals(badLabels.code, 2, show(badLabels));
  assertStringIncludes(badLabels.stderr, "--labels must be 2021 or 2023");
  assertEquals(broken.code, 1, show(broken));
  assertStringIncludes(broken.stderr, join(pred, "BraTS20_Training_R.nii.gz"));
  assertEquals(broken.stdout, "");
  await assertRejects(() => Deno.stat(out), Deno.errors.NotFound);
});

Deno.test("evaluate reads predictions and references from s3rver and writes --out there", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const dims: Dims = [6, 5, 4];
  const id = "BraTS-GLI-00001-000";
  await putObject(`s3://brats/truth/${id}/${id}-seg.nii.gz`, segFile(labelsFor(50, 3), dims));
  await putObject(`s3://brats/pred/${id}.nii.gz`, segFile(labelsFor(51, 3), dims));
  const env = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([k]) => k.startsWith("AWS_")),
  );
  assertEquals(env.AWS_ENDPOINT_URL_S3, s3.endpoint);
  const r = await runMain([
    "evaluate",
    "--pred",
    "s3://brats/pred/",
    "--truth",
    "s3://brats/truth",
    "--out",
    "s3://brats/eval",
    "--json",
  ], env);
  assertEquals(r.code, 0, show(r));
  const ev = JSON.parse(r.stdout) as Evaluation;
  checkShape(ev, [id], [], []);
  assertEquals(
    ev.cases[0].ET,
    caseMetrics(labelsFor(51, 3), labelsFor(50, 3), dims, [1, 1, 1], 3).ET,
  );
  const dec = new TextDecoder();
  assertEquals(JSON.parse(dec.decode(await getObject("s3://brats/eval/metrics.json"))), ev);
  const csv = dec.decode(await getObject("s3://brats/eval/metrics.csv")).trim().split("\n");
  assertEquals(csv.length, 2);
  assert(csv[1].startsWith(`${id},`), csv[1]);
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
