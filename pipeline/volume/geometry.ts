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
 * The smallest box holding every nonzero voxel of `mask` ([z, y, x] order, x fastest), or the whole
 * grid when the mask is empty (nothing to crop to).
 */
export function boundingBox(mask: ArrayLike<number>, dims: Dims): Box {
  const [nx, ny, nz] = dims;
  const lo = [nx, ny, nz];
  const hi = [-1, -1, -1];
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        if (mask[i] === 0) continue;
        if (x < lo[0]) lo[0] = x;
        if (x > hi[0]) hi[0] = x;
        if (y < lo[1]) lo[1] = y;
        if (y > hi[1]) hi[1] = y;
        if (z < lo[2]) lo[2] = z;
        if (z > hi[2]) hi[2] = z;
      }
    }
  }
  if (hi[0] < 0) return { start: [0, 0, 0], size: [...dims] };
  return {
    start: lo as Dims,
    size: [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1],
  };
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
