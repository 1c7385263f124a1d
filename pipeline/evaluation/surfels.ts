/**
 * The robust Hausdorff distance as the BraTS 2023 lesion-wise scoring measures it (it uses
 * DeepMind's surface-distance definition, not MedPy's of pipeline/evaluation/distance.ts): surfaces are the
 * corners of the voxel grid whose 2×2×2 neighbourhood is neither all inside nor all outside a
 * mask; each such corner carries the area of the marching-cubes surface through its cell; the
 * `q`-th percentile of each directed set of distances is taken over the surface *area* (no
 * interpolation: the first distance at which the cumulated area reaches q %), and the larger of
 * the two directions is the result.
 *
 * The areas are derived here from geometry, not from a table: in each cell the corners on the
 * smaller side (inside if at most 4 are, else outside) are split into edge-connected groups; each
 * group is cut off by a polygon through the midpoints of the cell edges leaving it; a non-planar
 * polygon is split into the triangles of largest total area. These are the surfaces the
 * challenge's lookup table holds (checked for all 256 cells, isotropic and anisotropic, in
 * tests/evaluation/lesion_wise_test.ts's cross-check). Masks are flat, x fastest, as in pipeline/evaluation/distance.ts.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { robustHausdorff } from "./surfels.ts";
 * // Two single voxels 3 voxels apart along x.
 * const a = new Uint8Array(5);
 * const b = new Uint8Array(5);
 * a[0] = 1;
 * b[3] = 1;
 * assertEquals(robustHausdorff(a, b, [5, 1, 1]), 3);
 * ```
 * @module
 */
import { type MaskArray, squaredDistanceTransform } from "./distance.ts";
import { cropMask, maskBox, unionBox } from "../volume/mod.ts";

type Vec = [number, number, number];

/** Corner `(i, j, k)` of a cell (i along x) holds bit `7 − (4i + 2j + k)` of its code. */
function cornerBit(i: number, j: number, k: number): number {
  return 7 - (4 * i + 2 * j + k);
}

const CORNERS: Vec[] = [];
for (let i = 0; i < 2; i++) {
  for (let j = 0; j < 2; j++) for (let k = 0; k < 2; k++) CORNERS.push([i, j, k]);
}

/** Corners `a` and `b` (indices into CORNERS) share a cell edge. */
function adjacent(a: number, b: number): boolean {
  const p = CORNERS[a];
  const q = CORNERS[b];
  return Math.abs(p[0] - q[0]) + Math.abs(p[1] - q[1]) + Math.abs(p[2] - q[2]) === 1;
}

function cross(u: Vec, v: Vec): Vec {
  return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
}

/** Half the cross product: the triangle's area vector. */
function areaVector(p: Vec, q: Vec, r: Vec): Vec {
  const c = cross([q[0] - p[0], q[1] - p[1], q[2] - p[2]], [r[0] - p[0], r[1] - p[1], r[2] - p[2]]);
  return [c[0] / 2, c[1] / 2, c[2] / 2];
}

// As numpy.linalg.norm computes it (not Math.hypot), so that areas agree to the last bit.
const norm = (v: Vec) => Math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);

/** Every triangulation of a convex-ordered polygon of `n` vertices, as index triples. */
function triangulations(ids: number[]): number[][][] {
  if (ids.length < 3) return [[]];
  if (ids.length === 3) return [[ids]];
  const out: number[][][] = [];
  const first = ids[0];
  const last = ids[ids.length - 1];
  // The edge (first, last) lies in exactly one triangle (first, m, last).
  for (let m = 1; m < ids.length - 1; m++) {
    for (const left of triangulations(ids.slice(0, m + 1))) {
      for (const right of triangulations(ids.slice(m))) {
        out.push([...left, ...right, [first, ids[m], last]]);
      }
    }
  }
  return out;
}

/** The ordered cycle of edge midpoints cutting the corner group `group` off its cell. */
function cutPolygon(group: Set<number>): Vec[] {
  const cuts: [number, number][] = [];
  for (let a = 0; a < 8; a++) {
    for (let b = 0; b < 8; b++) {
      if (group.has(a) && !group.has(b) && adjacent(a, b)) cuts.push([a, b]);
    }
  }
  // Two cut edges on one face of the cell are joined by a segment of the polygon.
  const links: number[][] = cuts.map(() => []);
  for (let axis = 0; axis < 3; axis++) {
    for (let side = 0; side < 2; side++) {
      const onFace = cuts.flatMap(([a, b], n) =>
        CORNERS[a][axis] === side && CORNERS[b][axis] === side ? [n] : []
      );
      if (onFace.length === 0) continue;
      if (onFace.length !== 2) {
        throw new Error(`surfels: a face of the cell cuts ${onFace.length} edges (internal)`);
      }
      links[onFace[0]].push(onFace[1]);
      links[onFace[1]].push(onFace[0]);
    }
  }
  const order = [0];
  for (let prev = -1, at = 0;;) {
    const next = links[at].find((n) => n !== prev)!;
    if (next === 0) break;
    order.push(next);
    prev = at;
    at = next;
  }
  return order.map((n) => {
    const [a, b] = cuts[n];
    return [0, 1, 2].map((k) => (CORNERS[a][k] + CORNERS[b][k]) / 2) as Vec;
  });
}

/** For each of the 256 cell codes, the area vectors (unit cell) of its surface's triangles. */
function buildCellSurfaces(): Vec[][] {
  const table: Vec[][] = [];
  for (let code = 0; code < 256; code++) {
    let side = [...CORNERS.keys()].filter((c) => (code >> cornerBit(...CORNERS[c])) & 1);
    if (side.length > 4) side = [...CORNERS.keys()].filter((c) => !side.includes(c));
    const left = new Set(side);
    const triangles: Vec[] = [];
    while (left.size > 0) {
      const start = left.values().next().value!;
      const group = new Set([start]);
      left.delete(start);
      for (const stack = [start]; stack.length > 0;) {
        const c = stack.pop()!;
        for (const d of [...left]) {
          if (adjacent(c, d)) {
            left.delete(d);
            group.add(d);
            stack.push(d);
          }
        }
      }
      const polygon = cutPolygon(group);
      let best: Vec[] = [];
      let bestArea = -1;
      for (const tris of triangulations([...polygon.keys()])) {
        const vectors = tris.map(([p, q, r]) => areaVector(polygon[p], polygon[q], polygon[r]));
        const area = vectors.reduce((s, v) => s + norm(v), 0);
        if (area > bestArea + 1e-12) {
          bestArea = area;
          best = vectors;
        }
      }
      triangles.push(...best);
    }
    table.push(triangles);
  }
  return table;
}

const CELL_SURFACES = buildCellSurfaces();

/**
 * The surface area in mm² through a cell of each code 0..255 for a voxel size `spacing`: each
 * triangle's area vector scaled as the cell is (x by sy·sz, y by sx·sz, z by sx·sy).
 * @example
 * ```ts
 * import { assertAlmostEquals } from "@std/assert";
 * import { cellAreas } from "./surfels.ts";
 * // One corner inside: the triangle cutting it off, √3/8 of a unit cell.
 * assertAlmostEquals(cellAreas([1, 1, 1])[1], Math.sqrt(3) / 8, 1e-12);
 * ```
 */
export function cellAreas(spacing: readonly number[]): Float64Array {
  const [sx, sy, sz] = spacing;
  const out = new Float64Array(256);
  for (let code = 0; code < 256; code++) {
    for (const v of CELL_SURFACES[code]) {
      out[code] += norm([v[0] * sy * sz, v[1] * sx * sz, v[2] * sx * sy]);
    }
  }
  return out;
}

/** Both directed surface-distance sets of two masks, with the area of each surface corner. */
export interface SurfelDistances {
  /** From each surface corner of `a` to the nearest of `b`, ascending (mm). */
  aToB: Float64Array;
  /** The area (mm²) of each corner of `aToB`, in its order. */
  areasA: Float64Array;
  bToA: Float64Array;
  areasB: Float64Array;
}

/**
 * The surface corners of both masks, their areas and their distances (mm) to the other surface,
 * each set sorted by distance then area. An empty mask has no surface corners; the corners of the
 * other are then at distance Infinity.
 */
export function surfelDistances(
  a: MaskArray,
  b: MaskArray,
  dims: readonly number[],
  spacing: readonly number[] = [1, 1, 1],
): SurfelDistances {
  const boxA = maskBox(a, dims);
  const boxB = maskBox(b, dims);
  if (!boxA && !boxB) {
    const none = new Float64Array(0);
    return { aToB: none, areasA: none, bToA: none, areasB: none };
  }
  const box = boxA && boxB ? unionBox(boxA, boxB) : (boxA ?? boxB)!;
  const cropDims = box.size;
  const codesA = cellCodes(cropMask(a, dims, box), cropDims);
  const codesB = cellCodes(cropMask(b, dims, box), cropDims);
  const grid = cropDims.map((d) => d + 1);
  const areas = cellAreas(spacing);
  const [aToB, areasA] = directed(codesA, codesB, grid, spacing, areas);
  const [bToA, areasB] = directed(codesB, codesA, grid, spacing, areas);
  return { aToB, areasA, bToA, areasB };
}

/**
 * The `percent`-th robust Hausdorff distance (mm) between two masks as the BraTS 2023 lesion-wise
 * code computes it: per direction, the first distance (ascending) at which the cumulated surface
 * area divided by the total reaches `percent`/100; the larger of the two. Infinity when either
 * mask is empty.
 * @param percent 0..100. @default 95
 */
export function robustHausdorff(
  a: MaskArray,
  b: MaskArray,
  dims: readonly number[],
  spacing: readonly number[] = [1, 1, 1],
  percent = 95,
): number {
  if (!(percent >= 0 && percent <= 100)) {
    throw new RangeError(`A percentile must be in 0..100, got ${percent}`);
  }
  const d = surfelDistances(a, b, dims, spacing);
  return Math.max(
    areaPercentile(d.aToB, d.areasA, percent),
    areaPercentile(d.bToA, d.areasB, percent),
  );
}

/** The first sorted distance whose cumulated area fraction is ≥ q %; Infinity for none. */
function areaPercentile(distances: Float64Array, areas: Float64Array, q: number): number {
  if (distances.length === 0) return Infinity;
  const total = pairwiseSum(areas, 0, areas.length);
  const target = q / 100;
  let cum = 0;
  for (let i = 0; i < areas.length; i++) {
    cum += areas[i];
    if (cum / total >= target) return distances[i];
  }
  return distances[distances.length - 1];
}

/**
 * numpy's float64 sum (pairwise, 8 accumulators per block of up to 128 values), so that the
 * cumulated fractions compare with the threshold exactly as the reference's do.
 */
function pairwiseSum(v: Float64Array, start: number, n: number): number {
  if (n < 8) {
    let s = 0;
    for (let i = 0; i < n; i++) s += v[start + i];
    return s;
  }
  if (n <= 128) {
    const r = Array.from({ length: 8 }, (_, j) => v[start + j]);
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += v[start + i + j];
    let s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) s += v[start + i];
    return s;
  }
  let half = Math.floor(n / 2);
  half -= half % 8;
  return pairwiseSum(v, start, half) + pairwiseSum(v, start + half, n - half);
}

/**
 * The code of every corner of a grid of `dims` voxels: corner `(cx, cy, cz)`, on a grid of
 * `dims + 1` corners, touches voxels `cx − 1 .. cx` (and so on); voxels outside are outside.
 */
function cellCodes(mask: Uint8Array, dims: readonly number[]): Uint8Array {
  const [nx, ny, nz] = dims;
  const gx = nx + 1;
  const gy = ny + 1;
  const codes = new Uint8Array(gx * gy * (nz + 1));
  let v = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, v++) {
        if (mask[v] === 0) continue;
        // The voxel is offset (i, j, k) = (1, 1, 1) − (corner − voxel) in the cell of each corner.
        for (let i = 0; i < 2; i++) {
          for (let j = 0; j < 2; j++) {
            for (let k = 0; k < 2; k++) {
              const c = (x + 1 - i) + gx * ((y + 1 - j) + gy * (z + 1 - k));
              codes[c] |= 1 << cornerBit(i, j, k);
            }
          }
        }
      }
    }
  }
  return codes;
}

const isSurface = (code: number) => code !== 0 && code !== 255;

/** Distances from the surface corners of `from` to those of `to`, sorted, with their areas. */
function directed(
  from: Uint8Array,
  to: Uint8Array,
  grid: readonly number[],
  spacing: readonly number[],
  areas: Float64Array,
): [Float64Array, Float64Array] {
  const features = new Uint8Array(to.length);
  for (let i = 0; i < to.length; i++) features[i] = isSurface(to[i]) ? 1 : 0;
  const dt = squaredDistanceTransform(features, grid, spacing);
  let n = 0;
  for (let i = 0; i < from.length; i++) if (isSurface(from[i])) n++;
  const distance = new Float64Array(n);
  const area = new Float64Array(n);
  for (let i = 0, k = 0; i < from.length; i++) {
    if (!isSurface(from[i])) continue;
    distance[k] = Math.sqrt(dt[i]);
    area[k++] = areas[from[i]];
  }
  // By distance, then area (as the reference sorts its (distance, area) pairs).
  const order = new Uint32Array(n).map((_, k) => k);
  order.sort((p, q) => distance[p] - distance[q] || area[p] - area[q]);
  return [Float64Array.from(order, (k) => distance[k]), Float64Array.from(order, (k) => area[k])];
}
