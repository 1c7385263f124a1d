/**
 * Channel-last volumes on a voxel grid ([z, y, x, channels], x fastest): their extent, boxes on the
 * grid, the bounding box of a mask, copying a box out (zero-padded) and back in, and mirroring.
 * Pure array code, shared by preprocessing, sampling, inference, evaluation and reports.
 * @module
 */

/** Voxels along x, y, z. */
export type Dims = [number, number, number];

/** A box on a grid: first voxel and extent along x, y, z. */
export interface Box {
  start: Dims;
  size: Dims;
}

/**
 * The smallest box holding every nonzero voxel of `mask` ([z, y, x] order, x fastest), or
 * undefined when it has none: the one bounding-box scan of the project.
 * @throws {RangeError} when `mask` does not have one value per voxel of `dims`
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { maskBox } from "./geometry.ts";
 * const m = new Uint8Array(3 * 3 * 3);
 * m[1 + 3 * (2 + 3 * 0)] = 1; // voxel x 1, y 2, z 0
 * assertEquals(maskBox(m, [3, 3, 3]), { start: [1, 2, 0], size: [1, 1, 1] });
 * assertEquals(maskBox(new Uint8Array(27), [3, 3, 3]), undefined);
 * ```
 */
export function maskBox(mask: ArrayLike<number>, dims: readonly number[]): Box | undefined {
  const [nx, ny, nz] = checkGrid(mask, dims, "the bounding box");
  let x0 = nx, y0 = ny, z0 = nz;
  let x1 = -1, y1 = -1, z1 = -1;
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        if (mask[i] === 0) continue;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
        if (z < z0) z0 = z;
        if (z > z1) z1 = z;
      }
    }
  }
  if (x1 < 0) return undefined;
  return { start: [x0, y0, z0], size: [x1 - x0 + 1, y1 - y0 + 1, z1 - z0 + 1] };
}

/**
 * The smallest box holding every nonzero voxel of `mask` ([z, y, x] order, x fastest), or the whole
 * grid when the mask is empty (nothing to crop to).
 */
export function boundingBox(mask: ArrayLike<number>, dims: Dims): Box {
  return maskBox(mask, dims) ?? { start: [0, 0, 0], size: [...dims] };
}

/** The smallest box holding both boxes. */
export function unionBox(a: Box, b: Box): Box {
  const start = [0, 1, 2].map((k) => Math.min(a.start[k], b.start[k])) as Dims;
  const end = [0, 1, 2].map((k) => Math.max(a.start[k] + a.size[k], b.start[k] + b.size[k]));
  return { start, size: [end[0] - start[0], end[1] - start[1], end[2] - start[2]] };
}

/**
 * The voxels of `box` (inside the grid) copied out of a one-channel volume as 0/1, x fastest, the
 * box's `size` their dims: 1 where the value is nonzero, or with `table`, `table[value]` (each
 * value's 0/1 membership, e.g. of a region's labels).
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { cropMask, type Dims } from "./geometry.ts";
 * const labels = new Uint8Array([0, 2, 4, 1]); // 4 × 1 × 1
 * const box = { start: [1, 0, 0], size: [3, 1, 1] } as { start: Dims; size: Dims };
 * assertEquals([...cropMask(labels, [4, 1, 1], box)], [1, 1, 1]);
 * const enhancing = new Uint8Array(256);
 * enhancing[4] = 1;
 * assertEquals([...cropMask(labels, [4, 1, 1], box, enhancing)], [0, 1, 0]);
 * ```
 */
export function cropMask(
  mask: ArrayLike<number>,
  dims: readonly number[],
  box: Box,
  table?: Uint8Array,
): Uint8Array {
  const [nx, ny] = checkGrid(mask, dims, "a crop");
  const [bx, by, bz] = box.size;
  const [x0, y0, z0] = box.start;
  const out = new Uint8Array(bx * by * bz);
  let o = 0;
  for (let z = z0; z < z0 + bz; z++) {
    for (let y = y0; y < y0 + by; y++) {
      let i = x0 + nx * (y + ny * z);
      if (table) { for (let x = 0; x < bx; x++, i++, o++) out[o] = table[mask[i]]; }
      else for (let x = 0; x < bx; x++, i++, o++) out[o] = mask[i] !== 0 ? 1 : 0;
    }
  }
  return out;
}

/**
 * The grid `[nx, ny, nz]` of a one-channel volume, checked: 3 positive integers whose product is
 * the volume's length.
 * @param what what the caller computes, for the message (`Cannot compute ${what}: …`)
 * @throws {RangeError} naming `what`, the dims and the length found
 */
export function checkGrid(mask: ArrayLike<number>, dims: readonly number[], what: string): Dims {
  if (dims.length !== 3 || !dims.every((d) => Number.isInteger(d) && d >= 1)) {
    throw new RangeError(
      `Cannot compute ${what}: dims must be 3 positive integers [nx, ny, nz], got ${
        JSON.stringify(dims)
      }`,
    );
  }
  const n = dims[0] * dims[1] * dims[2];
  if (mask.length !== n) {
    throw new RangeError(
      `Cannot compute ${what}: a mask of ${mask.length} voxels does not fit dims [${dims}] (${n})`,
    );
  }
  return [dims[0], dims[1], dims[2]];
}

/**
 * Puts channel-last data covering `box` back on the full grid `dims`, `fill` elsewhere: the inverse
 * of cropping to the box.
 */
export function uncropBox<T extends Float32Array | Uint8Array>(
  data: T,
  box: Box,
  dims: Dims,
  channels: number,
  fill = 0,
): T {
  const n = dims[0] * dims[1] * dims[2] * channels;
  const out = new (data.constructor as { new (n: number): T })(n);
  if (fill !== 0) out.fill(fill);
  const [bx, by, bz] = box.size;
  const row = bx * channels;
  for (let z = 0; z < bz; z++) {
    for (let y = 0; y < by; y++) {
      const src = (z * by + y) * row;
      const dst = (((box.start[2] + z) * dims[1] + box.start[1] + y) * dims[0] + box.start[0]) *
        channels;
      out.set(data.subarray(src, src + row), dst);
    }
  }
  return out;
}

/**
 * Copies a box of `size` voxels (x, y, z) starting at `start` (x, y, z, may be negative) out of a
 * channel-last volume, zero-padded where it leaves the volume.
 * @returns [size z, size y, size x, channels]
 */
export function cropBox<T extends Float32Array | Uint8Array>(
  data: T,
  dims: Dims,
  channels: number,
  start: Dims,
  size: Dims,
): T {
  const [sx0, sy0, sz0] = size;
  const out = new (data.constructor as { new (n: number): T })(sx0 * sy0 * sz0 * channels);
  const [nx, ny, nz] = dims;
  const x0 = Math.max(0, -start[0]);
  const x1 = Math.min(sx0, nx - start[0]);
  if (x1 <= x0) return out;
  for (let z = 0; z < sz0; z++) {
    const sz = start[2] + z;
    if (sz < 0 || sz >= nz) continue;
    for (let y = 0; y < sy0; y++) {
      const sy = start[1] + y;
      if (sy < 0 || sy >= ny) continue;
      const src = ((sz * ny + sy) * nx + start[0] + x0) * channels;
      const dst = ((z * sy0 + y) * sx0 + x0) * channels;
      out.set(data.subarray(src, src + (x1 - x0) * channels), dst);
    }
  }
  return out;
}

/**
 * Copies a cube of `size` voxels starting at `start` (x, y, z) out of a channel-last volume,
 * zero-padded where it leaves the volume.
 * @returns [size, size, size, channels] in z, y, x order (the network's d, h, w)
 */
export function cropCube(
  data: Float32Array,
  dims: [number, number, number],
  channels: number,
  start: [number, number, number],
  size: number,
): Float32Array {
  return cropBox(data, dims, channels, start, [size, size, size]);
}

/** Mirrors a channel-last [z, y, x, c] array along the axes whose bit is set (1 x, 2 y, 4 z). */
export function mirrorVolume(data: Float32Array, shape: Dims, channels: number, axes: number) {
  if (axes === 0) return data;
  const [nx, ny, nz] = shape;
  const out = new Float32Array(data.length);
  for (let z = 0; z < nz; z++) {
    const sz = axes & 4 ? nz - 1 - z : z;
    for (let y = 0; y < ny; y++) {
      const sy = axes & 2 ? ny - 1 - y : y;
      for (let x = 0; x < nx; x++) {
        const sx = axes & 1 ? nx - 1 - x : x;
        const dst = ((z * ny + y) * nx + x) * channels;
        const src = ((sz * ny + sy) * nx + sx) * channels;
        for (let k = 0; k < channels; k++) out[dst + k] = data[src + k];
      }
    }
  }
  return out;
}
