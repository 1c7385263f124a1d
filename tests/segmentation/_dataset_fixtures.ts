/**
 * Fixtures of the dataset segmentation tests: small nnU-Net v2 and MSD datasets of phantom cases,
 * written with the project's NIfTI writer (locally or on S3), and tiny random networks that carry
 * such a dataset's description as training would keep it.
 * @module
 */
import { createUNet, disposeUNet, resolveConfig } from "../../model/mod.ts";
import type { DatasetDescription } from "../../pipeline/cases/mod.ts";
import { createNiftiHeader, encodeNifti } from "../../pipeline/nifti/mod.ts";
import { putObject } from "../../pipeline/storage/objects.ts";
import { phantomCase } from "../../pipeline/synth/phantom.ts";
import { saveModel } from "../../pipeline/training/model_store.ts";
import { TINY } from "./_segment_fixtures.ts";

export const DIMS: [number, number, number] = [24, 24, 16];
const AFFINE = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]];
const json = (v: unknown) => JSON.stringify(v, null, 2) + "\n";

/** The description training keeps for the nnU-Net dataset {@linkcode writeNnunet} writes. */
export const NNUNET_DATASET: DatasetDescription = {
  layout: "nnunet",
  name: "PhantomWT",
  channels: ["FLAIR", "T1"],
  labels: { background: 0, whole_tumor: 1 },
  fileEnding: ".nii.gz",
};

/** The description training keeps for the MSD task {@linkcode writeMsd} writes. */
export const MSD_DATASET: DatasetDescription = {
  layout: "msd",
  name: "BRATS",
  channels: ["FLAIR", "T1w", "t1gd", "T2w"],
  labels: { background: 0, edema: 1, "non-enhancing tumor": 2, "enhancing tumour": 3 },
};

/** One image file of a phantom nnU-Net case: channel `k` (FLAIR, T1) as int16. */
export async function writeNnunetImage(uri: string, seed: number, k: 0 | 1): Promise<void> {
  const c = phantomCase(DIMS, seed);
  const header = createNiftiHeader(DIMS, AFFINE, "int16");
  await putObject(
    uri,
    encodeNifti(c.images[k === 0 ? "flair" : "t1"], "int16", header, { name: uri }),
  );
}

/** A phantom case's whole tumour as a uint8 0/1 label file. */
export async function writeWholeTumour(uri: string, seed: number): Promise<void> {
  const c = phantomCase(DIMS, seed);
  const wt = Uint8Array.from(c.seg, (l) => (l > 0 ? 1 : 0));
  await putObject(
    uri,
    encodeNifti(wt, "uint8", createNiftiHeader(DIMS, AFFINE, "uint8"), { name: uri }),
  );
}

/**
 * An nnU-Net v2 raw dataset under `root`: `dataset.json` (FLAIR, T1; whole_tumor 1), `train`
 * labelled cases in imagesTr/labelsTr and `test` cases in imagesTs.
 * @returns the case ids, training cases first
 */
export async function writeNnunet(root: string, train: number, test: number): Promise<string[]> {
  const { name, labels } = NNUNET_DATASET;
  await putObject(
    `${root}/dataset.json`,
    json({
      name,
      channel_names: { "0": "FLAIR", "1": "T1" },
      labels,
      numTraining: train,
      file_ending: ".nii.gz",
    }),
  );
  const ids: string[] = [];
  for (let k = 0; k < train + test; k++) {
    const id = `Phantom_${String(k).padStart(3, "0")}`;
    const folder = k < train ? "imagesTr" : "imagesTs";
    for (const ch of [0, 1] as const) {
      await writeNnunetImage(`${root}/${folder}/${id}_000${ch}.nii.gz`, 50 + k, ch);
    }
    if (k < train) await writeWholeTumour(`${root}/labelsTr/${id}.nii.gz`, 50 + k);
    ids.push(id);
  }
  return ids;
}

/** One phantom MSD image: FLAIR, T1, T1ce, T2 along a 4th dimension, int16. */
export async function writeMsdImage(uri: string, seed: number): Promise<void> {
  const c = phantomCase(DIMS, seed);
  const n = DIMS[0] * DIMS[1] * DIMS[2];
  const image = new Int16Array(4 * n);
  (["flair", "t1", "t1ce", "t2"] as const).forEach((m, v) => image.set(c.images[m], v * n));
  const header = createNiftiHeader([...DIMS, 4], AFFINE, "int16");
  await putObject(uri, encodeNifti(image, "int16", header, { name: uri }));
}

/** A phantom case's labels in MSD's convention (1 edema, 2 non-enhancing, 3 enhancing). */
export async function writeMsdLabels(uri: string, seed: number): Promise<void> {
  const c = phantomCase(DIMS, seed);
  const seg = Uint8Array.from(c.seg, (l) => [0, 2, 1, 0, 3][l]);
  await putObject(
    uri,
    encodeNifti(seg, "uint8", createNiftiHeader(DIMS, AFFINE, "uint8"), { name: uri }),
  );
}

/**
 * An MSD task under `root`: `dataset.json` with its training and test lists, one 4-D image per
 * case, `train` of them labelled.
 * @returns the case ids, training cases first
 */
export async function writeMsd(root: string, train: number, test: number): Promise<string[]> {
  const ids: string[] = [];
  const training = [];
  const tests = [];
  for (let k = 0; k < train + test; k++) {
    const id = `BRATS_${String(k + 1).padStart(3, "0")}`;
    const folder = k < train ? "imagesTr" : "imagesTs";
    await writeMsdImage(`${root}/${folder}/${id}.nii.gz`, 70 + k);
    if (k < train) {
      await writeMsdLabels(`${root}/labelsTr/${id}.nii.gz`, 70 + k);
      training.push({ image: `./imagesTr/${id}.nii.gz`, label: `./labelsTr/${id}.nii.gz` });
    } else tests.push(`./imagesTs/${id}.nii.gz`);
    ids.push(id);
  }
  await putObject(
    `${root}/dataset.json`,
    json({
      name: "BRATS",
      tensorImageSize: "4D",
      modality: { "0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w" },
      labels: {
        "0": "background",
        "1": "edema",
        "2": "non-enhancing tumor",
        "3": "enhancing tumour",
      },
      numTraining: train,
      training,
      test: tests,
    }),
  );
  return ids;
}

/**
 * A tiny random network for `dataset` (its channels in, its regions out: `outChannels`) saved as
 * `<dir>/model` with the description in its metadata, as training keeps it.
 */
export async function datasetModel(
  dir: string,
  dataset: DatasetDescription,
  outChannels: number,
): Promise<string> {
  const config = resolveConfig({ ...TINY, inChannels: dataset.channels.length, outChannels });
  const net = createUNet(config, { seed: 4, zeroInitResidual: false });
  await saveModel(`${dir}/model`, net, undefined, {
    train_crop: "16",
    dataset: JSON.stringify(dataset),
  });
  disposeUNet(net);
  return `${dir}/model`;
}
