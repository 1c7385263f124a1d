/**
 * `demo`: the embedded default run (pipeline/demo: synth, train, segment, evaluate, report under
 * one folder); this file parses the flags, clears an earlier demo output and prints.
 * @module
 */
import { DEMO_MARKER as MARKER, DEMO_STAGES as STAGES, runDemo } from "../pipeline/demo/mod.ts";
import { deleteObject, exists, joinUri, listObjects } from "../pipeline/storage/mod.ts";
import { trainEventPrinter } from "../pipeline/training/mod.ts";
import {
  backendFlag,
  defineCommand,
  printJson,
  sizeFlag,
  stderrProgress,
  UsageError,
} from "./_cli.ts";

/** Removes what an earlier demo run wrote under `out`; refuses a folder the demo did not make. */
async function clearDemoOutput(out: string): Promise<void> {
  const existing = await listObjects(out).catch(() => []);
  if (existing.length === 0) return;
  if (!(await exists(joinUri(out, MARKER)))) {
    throw new UsageError(
      `${out} is not empty and was not written by demo (no ${MARKER}); choose another --out`,
    );
  }
  for (const o of existing) {
    if (STAGES.includes(o.key.split("/")[0]) || o.key === MARKER) await deleteObject(o.uri);
  }
}

export const demoCommand = defineCommand({
  name: "demo",
  summary: "The embedded default end to end: synth → train → segment → evaluate → report",
  help: `Usage: deno task demo [--out <uri>] [--cases <n>] [--size <x,y,z>] [--epochs <n>]
                        [--steps-per-epoch <n>] [--crop <n>] [--seed <n>] [--backend <backend>]

Generates N BraTS-like cases (synth: the real ch2bet brain when mricron-data is installed) under
<out>/data, trains the reversible U-Net (reference configuration) on all but the validation cases
(<out>/run: checkpoints, best/, metrics.jsonl, curves.svg), segments the held-out cases with the
best weights (<out>/seg), evaluates them against their labels (<out>/eval) and writes an HTML
report (<out>/report/index.html). Prints one JSON summary line. Needs nothing but this repository:
local storage, generated data, CPU. A re-run replaces the previous demo output in the same folder.

Options:
  --out <uri>            output folder or s3:// prefix (default out/demo)
  --cases <n>            cases to generate (default 6, at least 2); 2 are held out
  --size <x,y,z>         grid of the generated cases (default 64,64,48)
  --epochs <n>           training epochs (default 3)
  --steps-per-epoch <n>  training steps per epoch (default 25)
  --crop <n>             training crop edge, a multiple of 8 (default 32)
  --seed <n>             seed of the data, the split, the weights and the crops (default 0)
  --backend <backend>    auto|tensorflow|webgpu|wasm|cpu (default cpu)

Example:
  deno task demo --epochs 6`,
  async run(flags) {
    const out = flags.str("out") ?? "out/demo";
    const options = {
      out,
      cases: flags.int("cases", 6, 2, 1000),
      dims: sizeFlag(flags, [64, 64, 48], 32, 256),
      epochs: flags.int("epochs", 3, 1),
      stepsPerEpoch: flags.int("steps-per-epoch", 25, 1),
      crop: flags.int("crop", 32, 8, 256),
      seed: flags.int("seed", 0, 0),
      backend: backendFlag(flags),
    };
    if (options.crop % 8 !== 0) {
      throw new UsageError(`--crop must be a multiple of 8, got ${options.crop}`);
    }
    await clearDemoOutput(out);
    printJson(
      await runDemo({
        ...options,
        onProgress: trainEventPrinter(stderrProgress()),
        log: (m) => console.error(`demo: ${m}`),
      }),
    );
  },
});
