/**
 * `cases <dataset-uri>`: lists the cases found under a dataset as JSON lines.
 * @module
 */
import { findCases } from "../pipeline/cases/mod.ts";
import { defineCommand, printJson, UsageError } from "./_cli.ts";

export const casesCommand = defineCommand({
  name: "cases",
  summary: "List the cases under a dataset URI (BraTS, nnU-Net, MSD) as JSON lines",
  help: `Usage: deno task cases <dataset-uri> [--no-check] [--concurrency <n>]

Finds every case under <dataset-uri> (a local folder, file:// URL or s3://bucket/prefix): BraTS
cases in the 2018-2021 naming (<id>_{flair,t1,t1ce,t2,seg}.nii[.gz]) or the 2023+ naming
(<id>-{t2f,t1n,t1c,t2w,seg}.nii[.gz]), one folder per case or flat, or the cases of an nnU-Net v2
raw dataset or MSD task (README, "Your own data"). Prints one JSON object per usable case:
  {"id":"BraTS20_Training_001","naming":"brats2021","enhancingLabel":4,
   "images":{"flair":"...","t1":"...","t1ce":"...","t2":"..."},"seg":"...",
   "shape":[240,240,155],"spacing":[1,1,1]}
A case with a missing modality, or modalities whose dims or affines disagree, is reported on stderr;
the others are still listed, and the exit code is 1. A folder that does not exist, or holds no case
file, is an error (exit 1) naming the names expected.

Options:
  --no-check         do not read the volumes' headers (no shape/affine checks; faster on S3)
  --concurrency <n>  headers read at once (default 8)

Examples:
  deno task cases ./data/brats
  AWS_ENDPOINT_URL=http://127.0.0.1:9000 deno task cases s3://my-bucket/BraTS2021/`,
  positionals: true,
  async run(flags) {
    const positionals = flags.positionals;
    if (positionals.length !== 1) {
      throw new UsageError(`cases: expected one dataset URI, got ${positionals.length}`);
    }
    const { cases, problems } = await findCases(positionals[0], {
      checkHeaders: !flags.bool("no-check"),
      concurrency: flags.int("concurrency", 8, 1, 256),
      required: true,
    });
    for (const c of cases) printJson(c);
    for (const p of problems) console.error(`error: cases: ${p.error}`);
    if (problems.length > 0) {
      throw new Error(
        `${problems.length} of ${cases.length + problems.length} cases in ${
          positionals[0]
        } could not be used (listed above)`,
      );
    }
  },
});
