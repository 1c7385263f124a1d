/**
 * Fixtures of the evaluation tests (tests/evaluation/, tests/evaluate_test.ts): label volumes as
 * NIfTI, random blobs, brute-force surfaces and HD95, MedPy's hd95 through SciPy, folders.
 * @module
 */
import { join } from "node:path";
import { createNiftiHeader, encodeNifti } from "../pipeline/nifti/mod.ts";
import { type Run } from "./_cli.ts";
import { PYTHON } from "./_nifti_fixtures.ts";
import { seededRandom } from "../pipeline/cases/random.ts";

export type Dims = [number, number, number];

/** BraTS's own grid orientation, 1 mm. */
export const LPS = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]];

/** A label volume as NIfTI bytes (uint8 unless told), on `affine`'s grid. */
export function segFile(
  labels: ArrayLike<number>,
  dims: number[],
  affine: number[][] = LPS,
  datatype: "uint8" | "float64" | "int16" = "uint8",
): Uint8Array {
  return encodeNifti(labels, datatype, createNiftiHeader(dims, affine, datatype));
}

/** Union of random ellipsoids (and a few stray voxels) in a grid: a tumor-like random blob. */
export function blob(dims: Dims, rand: () => number, count = 3): Uint8Array {
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
export function bruteSurface(mask: ArrayLike<number>, [nx, ny, nz]: Dims): number[][] {
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
export function bruteHd95(a: Uint8Array, b: Uint8Array, dims: Dims, spacing: number[]): number {
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

export const HAS_SCIPY: boolean = (() => {
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
export const SCIPY_HD95 = String.raw`
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
export async function scipyHd95(
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
export async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "evaluate-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Says what a run did, for assertion messages. */
export function show(run: Run): string {
  return `exit ${run.code}\n--- stdout\n${run.stdout}--- stderr\n${run.stderr}`;
}

/** Writes `files` (relative path → bytes) under a local folder. */
export async function writeTree(root: string, files: Record<string, Uint8Array>): Promise<void> {
  for (const [rel, bytes] of Object.entries(files)) {
    await Deno.mkdir(join(root, rel, ".."), { recursive: true });
    await Deno.writeFile(join(root, rel), bytes);
  }
}

/** Two 2021 cases and a 2023 case with their labels on 6×5×4 grids; `P` predictions for some. */
export function labelsFor(seed: number, enhancing: 3 | 4, dims: Dims = [6, 5, 4]): Uint8Array {
  const rand = seededRandom(seed);
  const wt = blob(dims, rand, 2);
  const et = blob(dims, rand, 1);
  return wt.map((w, i) => (w ? (et[i] ? enhancing : i % 3 === 0 ? 1 : 2) : 0));
}
