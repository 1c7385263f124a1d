/**
 * NIfTI volumes as bytes: decode NIfTI-1 and NIfTI-2 (`.nii` or `.nii.gz`, told apart by their gzip
 * magic, either byte order, eight datatypes), and encode NIfTI-1 on a template's grid. Pure: bytes
 * in, bytes out; every function takes the file's name for its error messages.
 *
 * Header values and the affine are read as nibabel 5 reads them (sform, else qform, else the base
 * affine), so this module and nibabel agree on where every voxel is.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { createNiftiHeader, decodeNifti, encodeNifti, volumeStats } from "./mod.ts";
 * const like = createNiftiHeader([2, 2, 2], [[-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]);
 * const bytes = encodeNifti(new Float32Array([0, 1, 2, 3, 4, 5, 6, 7]), "float32", like);
 * const image = decodeNifti(bytes, "probabilities.nii.gz");
 * assertEquals(volumeStats(image).mean, 3.5);
 * ```
 * @module
 */
export {
  createNiftiHeader,
  type NiftiDatatype,
  type NiftiHeader,
  type NiftiTypedArray,
} from "./header.ts";
export {
  decodeNifti,
  decodeNiftiHeader,
  type DecodeOptions,
  DEFAULT_MAX_BYTES,
  describeNifti,
  inspectNifti,
  isGzip,
  type NiftiImage,
  type NiftiInspection,
  scaledData,
  type VolumeStats,
  volumeStats,
} from "./read.ts";
export { encodeNifti, type EncodeOptions } from "./write.ts";
export * from "./object.ts";
