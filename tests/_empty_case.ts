/**
 * The case with no brain voxel (every modality 0 everywhere) that preprocessing, batch
 * segmentation, the service and training must each refuse by name.
 * @module
 */
import { MODALITIES, SUFFIXES } from "../pipeline/cases/cases.ts";
import { createNiftiHeader, encodeNifti } from "../pipeline/nifti/mod.ts";
import { joinUri, putObject } from "../pipeline/storage/objects.ts";

/** The empty case's id. */
export const EMPTY_ID = "BraTS2021_00009";
/** The empty case's grid (and that of the phantom cases written beside it). */
export const DIMS: [number, number, number] = [24, 28, 20];

/** Writes case `EMPTY_ID` under `root`: four all-zero int16 modalities and an empty reference. */
export async function writeEmptyCase(root: string): Promise<void> {
  const n = DIMS[0] * DIMS[1] * DIMS[2];
  const affine = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]];
  const header = createNiftiHeader(DIMS, affine, "int16");
  for (const part of [...MODALITIES, "seg"] as const) {
    const uri = joinUri(root, EMPTY_ID, `${EMPTY_ID}_${SUFFIXES.brats2021[part]}.nii.gz`);
    await putObject(uri, encodeNifti(new Int16Array(n), "int16", header, { name: uri }));
  }
}
