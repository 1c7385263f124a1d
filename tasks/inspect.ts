/**
 * `inspect <path-or-uri>`: prints a NIfTI volume's grid and value statistics as one JSON object.
 * @module
 */
import { DEFAULT_MAX_BYTES, describeNifti } from "../pipeline/nifti/mod.ts";
import { readNifti } from "../pipeline/nifti/mod.ts";
import { defineCommand, printJson, UsageError } from "./_cli.ts";

export const inspectCommand = defineCommand({
  name: "inspect",
  summary: "Print a NIfTI volume's dims, voxel size, datatype, affine and value range as JSON",
  help: `Usage: deno task inspect <path-or-uri> [--non-finite error|zero] [--max-bytes <n>]

Reads one NIfTI-1 or NIfTI-2 volume (.nii or .nii.gz, gzip told by its magic bytes) from a local
path, a file:// URL or s3://bucket/key, and prints one JSON object on stdout:
  {"dims":[240,240,155],"pixdim":[1,1,1],"datatype":"int16",
   "affine":[[-1,0,0,0],[0,-1,0,239],[0,0,1,0],[0,0,0,1]],"min":0,"max":1234,"mean":86.2}
dims and pixdim list the used dimensions only; datatype is the stored type; affine maps voxel
(i, j, k) to world (x, y, z) millimetres as nibabel chooses it (sform, else qform, else pixdim);
min, max and mean are over all voxels after scl_slope/scl_inter, in float64.

Options:
  --non-finite <mode>  NaN or infinite voxels: "error" refuses the file (default), "zero" reads
                       them as 0
  --max-bytes <n>      refuse a header announcing more than <n> bytes of voxel data
                       (default 2147483648)

Examples:
  deno task inspect out/synth/BraTS2021_00000/BraTS2021_00000_flair.nii.gz   # from synth
  deno task inspect s3://my-bucket/BraTS2021/BraTS2021_00000/BraTS2021_00000_seg.nii.gz
  deno task inspect probabilities.nii.gz --non-finite zero`,
  positionals: true,
  async run(flags) {
    const positionals = flags.positionals;
    if (positionals.length !== 1) {
      throw new UsageError(
        `inspect: expected one path or URI of a NIfTI file, got ${positionals.length}`,
      );
    }
    const nonFinite = flags.choice("non-finite", ["error", "zero"], "error");
    const maxBytes = flags.int("max-bytes", DEFAULT_MAX_BYTES, 1);
    const uri = positionals[0];
    printJson(describeNifti(await readNifti(uri, { nonFinite, maxBytes })));
  },
});
