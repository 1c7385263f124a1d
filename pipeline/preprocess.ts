/**
 * From a case's files to network-ready arrays: the four modalities z-scored over brain voxels,
 * stacked channel-last, and the nested region targets (WT, TC, ET) from either label convention.
 * @module
 */
import { type Case, MODALITIES } from "./cases.ts";
import { decodeNifti, scaledData } from "./nifti.ts";
import { getObject } from "./storage.ts";

/** A case in memory: channel-last float32 arrays on the case's grid (x fastest, then y, z). */
export interface LoadedCase {
  id: string;
  /** Voxels along x, y, z. */
  dims: [number, number, number];
  /** [z, y, x, 4] z-scored FLAIR, T1, T1ce, T2; 0 outside the brain. */
  image: Float32Array;
  /** [z, y, x, 3] WT, TC, ET masks (0/1), when the case has a segmentation. */
  target?: Float32Array;
}

/**
 * The nested BraTS regions of a label volume: WT = any tumor label, TC = necrosis + enhancing,
 * ET = enhancing (label 4 in 2018–2021, 3 in 2023+).
 * @returns [voxels, 3] channel-last masks
 */
export function regionTargets(
  labels: ArrayLike<number>,
  enhancingLabel: 3 | 4,
  name = "segmentation",
): Float32Array {
  const out = new Float32Array(labels.length * 3);
  const known = new Set([0, 1, 2, enhancingLabel]);
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i];
    if (!known.has(l)) {
      throw new RangeError(
        `${name}: voxel ${i} has label ${l}; expected 0, 1, 2 or ${enhancingLabel} (enhancing tumor)`,
      );
    }
    out[3 * i] = l !== 0 ? 1 : 0;
    out[3 * i + 1] = l === 1 || l === enhancingLabel ? 1 : 0;
    out[3 * i + 2] = l === enhancingLabel ? 1 : 0;
  }
  return out;
}

/** Reads a case's volumes, z-scores each modality over the brain (nonzero in any modality). */
export async function loadCase(c: Case): Promise<LoadedCase> {
  const volumes = await Promise.all(
    MODALITIES.map(async (m) => decodeNifti(await getObject(c.images[m]), c.images[m])),
  );
  const dims = volumes[0].header.dims.slice(0, 3) as [number, number, number];
  const n = dims[0] * dims[1] * dims[2];
  const data = volumes.map((v, k) => {
    if (v.header.dims.slice(0, 3).join() !== dims.join()) {
      throw new RangeError(
        `case "${c.id}": ${MODALITIES[k]} has dims [${v.header.dims}], flair [${dims}]`,
      );
    }
    return scaledData(v);
  });
  const brain = new Uint8Array(n);
  for (const d of data) for (let i = 0; i < n; i++) if (d[i] !== 0) brain[i] = 1;
  const image = new Float32Array(n * 4);
  data.forEach((d, k) => {
    let sum = 0;
    let sum2 = 0;
    let count = 0;
    for (let i = 0; i < n; i++) {
      if (brain[i]) {
        sum += d[i];
        sum2 += d[i] * d[i];
        count++;
      }
    }
    const mean = count ? sum / count : 0;
    const std = count ? Math.sqrt(Math.max(sum2 / count - mean * mean, 0)) || 1 : 1;
    for (let i = 0; i < n; i++) image[4 * i + k] = brain[i] ? (d[i] - mean) / std : 0;
  });
  let target: Float32Array | undefined;
  if (c.seg) {
    const seg = decodeNifti(await getObject(c.seg), c.seg);
    target = regionTargets(scaledData(seg), c.enhancingLabel, c.seg);
  }
  return { id: c.id, dims, image, ...(target ? { target } : {}) };
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
  const out = new Float32Array(size ** 3 * channels);
  const [nx, ny, nz] = dims;
  for (let z = 0; z < size; z++) {
    const sz = start[2] + z;
    if (sz < 0 || sz >= nz) continue;
    for (let y = 0; y < size; y++) {
      const sy = start[1] + y;
      if (sy < 0 || sy >= ny) continue;
      for (let x = 0; x < size; x++) {
        const sx = start[0] + x;
        if (sx < 0 || sx >= nx) continue;
        const src = ((sz * ny + sy) * nx + sx) * channels;
        const dst = ((z * size + y) * size + x) * channels;
        for (let k = 0; k < channels; k++) out[dst + k] = data[src + k];
      }
    }
  }
  return out;
}
