/**
 * A small procedural BraTS-like case: an ellipsoidal head, four MRI contrasts with a smooth bias
 * field and noise, and a tumor with necrotic core, enhancing rim and edema. Deterministic for a
 * seed. It is the embedded default data of `deno task demo` and of tests that need a whole case.
 * @module
 */
import { ENHANCING_LABEL, MODALITIES, type Modality, type Naming, SUFFIXES } from "../cases/mod.ts";
import { createNiftiHeader, encodeNifti } from "../nifti/mod.ts";
import { seededRandom } from "../cases/mod.ts";
import { joinUri, putObject } from "../storage/mod.ts";

/** Relative intensity of each tissue in each modality: brain, edema, enhancing, necrosis. */
const CONTRAST: Record<Modality, [number, number, number, number]> = {
  flair: [0.5, 0.95, 0.8, 0.6],
  t1: [0.6, 0.45, 0.55, 0.3],
  t1ce: [0.5, 0.45, 1.0, 0.3],
  t2: [0.4, 0.85, 0.7, 0.95],
};

/** One generated case: int16 images (x fastest) and the uint8 segmentation. */
export interface PhantomCase {
  dims: [number, number, number];
  images: Record<Modality, Int16Array>;
  seg: Uint8Array;
}

/**
 * Generates one case.
 * @param dims voxels along x, y, z (1 mm each)
 * @param enhancingLabel 4 (2018–2021) or 3 (2023+)
 */
export function phantomCase(
  dims: [number, number, number],
  seed: number,
  enhancingLabel: 3 | 4 = 4,
): PhantomCase {
  const rand = seededRandom(seed);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  const [nx, ny, nz] = dims;
  const n = nx * ny * nz;
  const c = dims.map((d) => (d - 1) / 2);
  const head = dims.map((d) => 0.45 * d);
  // The tumor sits inside the brain, its radius a fraction of the smallest head axis.
  const r = (0.12 + 0.08 * rand()) * Math.min(...head);
  const t = c.map((ci, i) => ci + (rand() - 0.5) * (head[i] - 2 * r));
  const stretch = [0.8 + 0.4 * rand(), 0.8 + 0.4 * rand(), 0.8 + 0.4 * rand()];
  const bias = [rand() * 6, rand() * 6, rand() * 6];
  const images = Object.fromEntries(MODALITIES.map((m) => [m, new Int16Array(n)])) as Record<
    Modality,
    Int16Array
  >;
  const seg = new Uint8Array(n);
  for (let z = 0, i = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const p = [x, y, z];
        const inHead = p.reduce((s, v, k) => s + ((v - c[k]) / head[k]) ** 2, 0);
        if (inHead > 1) continue;
        const d = Math.sqrt(p.reduce((s, v, k) => s + ((v - t[k]) * stretch[k]) ** 2, 0)) / r;
        const tissue = d < 0.45 ? 3 : d < 0.7 ? 2 : d < 1.25 ? 1 : 0;
        seg[i] = [0, 2, enhancingLabel, 1][tissue];
        const field = 1 + 0.1 * Math.sin(x / nx * bias[0] + y / ny * bias[1] + z / nz * bias[2]);
        for (const m of MODALITIES) {
          const v = CONTRAST[m][tissue] * field + 0.03 * gauss();
          images[m][i] = Math.max(1, Math.round(1000 * v));
        }
      }
    }
  }
  return { dims: [nx, ny, nz], images, seg };
}

/** Options of {@linkcode writePhantomDataset}. */
export interface PhantomDatasetOptions {
  cases: number;
  dims: [number, number, number];
  seed: number;
  naming?: Naming;
}

/**
 * Writes `cases` phantom cases under `outUri`, one folder per case, in the chosen naming.
 * @returns the case ids
 */
export async function writePhantomDataset(
  outUri: string,
  o: PhantomDatasetOptions,
): Promise<string[]> {
  const naming = o.naming ?? "brats2021";
  const header = createNiftiHeader(o.dims, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [
    0,
    0,
    0,
    1,
  ]], "int16");
  const ids: string[] = [];
  for (let k = 0; k < o.cases; k++) {
    const num = String(k + 1).padStart(5, "0");
    const id = naming === "brats2021" ? `BraTS2021_${num}` : `BraTS-GLI-${num}-000`;
    const sep = naming === "brats2021" ? "_" : "-";
    const c = phantomCase(o.dims, o.seed * 1000 + k, ENHANCING_LABEL[naming]);
    const file = (part: Modality | "seg") =>
      joinUri(outUri, id, `${id}${sep}${SUFFIXES[naming][part]}.nii.gz`);
    for (const m of MODALITIES) {
      await putObject(file(m), encodeNifti(c.images[m], "int16", header, { name: file(m) }));
    }
    await putObject(file("seg"), encodeNifti(c.seg, "uint8", header, { name: file("seg") }));
    ids.push(id);
  }
  return ids;
}
