/**
 * pipeline/evaluation/distance.ts: the exact distance transform, surfaces, percentiles and HD95,
 * against brute force written here and against SciPy (MedPy's definition, when Debian's python3
 * has scipy).
 * @module
 */
import { assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  hd95,
  percentile,
  squaredDistanceTransform,
  surface,
  surfaceDistances,
} from "../../pipeline/evaluation/distance.ts";
import { maskBox } from "../../pipeline/volume/mod.ts";
import { seededRandom } from "../../pipeline/cases/random.ts";
import {
  blob,
  bruteHd95,
  bruteSurface,
  type Dims,
  HAS_SCIPY,
  scipyHd95,
} from "../_evaluation_fixtures.ts";

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
