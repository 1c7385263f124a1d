/**
 * `synth --out <uri>`: writes a dataset of BraTS-like synthetic cases (pipeline/synth.ts).
 * @module
 */
import {
  CH2BET_PATH,
  DEFAULT_SYNTH_DIMS,
  SYNTH_MAX_DIM,
  SYNTH_MIN_DIM,
  SYNTH_NAMINGS,
  writeSynthDataset,
} from "../pipeline/synth/mod.ts";
import { defineCommand, printJson, sizeFlag, UsageError } from "./_cli.ts";

export const synthCommand = defineCommand({
  name: "synth",
  summary: "Write BraTS-like synthetic cases (four modalities and a tumor segmentation)",
  help: `Usage: deno task synth --out <uri> [--cases <n>] [--seed <seed>] [--naming <naming>]
                       [--size <x,y,z>] [--template <path>|procedural] [--concurrency <n>]

Writes N synthetic cases under <uri> (a local folder, file:// URL or s3://bucket/prefix), one folder
per case as BraTS ships them (four int16 modalities, a uint8 segmentation, gzipped NIfTI-1, 1 mm):
a real brain (ch2bet, else a procedural head) moved slightly, with tissue contrasts, a bias field,
Rician noise and one or two tumors (1-10% of the brain). The same seed writes the same bytes.

Prints one JSON object per case on stdout when all are written:
  {"id":"BraTS2021_00000","files":{"flair":"...","t1":"...","t1ce":"...","t2":"...","seg":"..."},
   "voxels":{"brain":1588155,"WT":113872,"TC":39797,"ET":21493},"tumorPercent":7.17,"lesions":2}
and a one-line summary on stderr.

Options:
  --out <uri>        where to write (required)
  --cases <n>        how many cases (default 4)
  --seed <seed>      integer seed, 0..4294967295 (default 1); case k does not depend on N
  --naming <naming>  file names and labels (default brats2021):
                       brats2020  BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}
                       brats2021  BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}
                       brats2023  BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}
                     enhancing tumor is label 4 in brats2020/2021 and 3 in brats2023
  --size <x,y,z>     voxels per axis, each ${SYNTH_MIN_DIM}..${SYNTH_MAX_DIM} (default 240,240,155);
                     on a grid smaller than the brain the brain is scaled down to fit
  --template <path>  template brain: a skull-stripped T1 NIfTI path or URI, or "procedural"
                     (default ${CH2BET_PATH}
                     when mricron-data is installed, else procedural)
  --concurrency <n>  cases in flight at once (default 2)

Examples:
  deno task synth --out ./data/synthetic --cases 4 --seed 1 --naming brats2021 --size 240,240,155
  deno task synth --out ./data/small --cases 20 --size 64,64,48 --naming brats2023
  AWS_ENDPOINT_URL=http://127.0.0.1:9000 deno task synth --out s3://my-bucket/synthetic/`,
  async run(flags) {
    const out = flags.str("out");
    if (out === undefined || out === "") {
      throw new UsageError("synth: --out <uri> is required (a local folder or s3://bucket/prefix)");
    }
    const cases = flags.int("cases", 4, 1);
    const seed = flags.int("seed", 1, 0, 0xffffffff);
    const naming = flags.choice("naming", SYNTH_NAMINGS, "brats2021");
    const dims = sizeFlag(flags, DEFAULT_SYNTH_DIMS, SYNTH_MIN_DIM, SYNTH_MAX_DIM);
    const concurrency = flags.int("concurrency", 2, 1, 64);
    const given = flags.str("template");
    const template = given === undefined ? undefined : given === "procedural" ? null : given;

    const start = performance.now();
    let done = 0;
    const summary = await writeSynthDataset(out, {
      cases,
      seed,
      naming,
      dims,
      template,
      concurrency,
      onCase: (c) => console.error(`synth: wrote ${c.id} (${++done}/${cases})`),
    });
    for (const c of summary.cases) printJson(c);
    const seconds = (performance.now() - start) / 1000;
    const what = `${naming}, ${dims.join("×")}, enhancing label ${summary.enhancingLabel}`;
    console.error(
      `synth: wrote ${cases} case${
        cases === 1 ? "" : "s"
      } (${what}, template ${summary.template}) ` +
        `to ${out} in ${seconds.toFixed(1)} s`,
    );
  },
});
