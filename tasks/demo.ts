/**
 * `demo`: the embedded default run (pipeline/demo: synth, train, segment, evaluate, report under
 * one folder, an earlier demo's output cleared first); this file parses the flags and prints.
 * @module
 */
import { runDemo } from "../pipeline/demo/mod.ts";
import { trainEventPrinter } from "../pipeline/training/mod.ts";
import { backendFlag, defineCommand, printJson, sizeFlag, stderrProgress } from "./_cli.ts";

export const demoCommand = defineCommand({
  name: "demo",
  summary: "The embedded default end to end: synth → train → segment → evaluate → report",
  help: `Usage: deno task demo [--out <uri>] [--cases <n>] [--size <x,y,z>] [--epochs <n>]
                        [--steps-per-epoch <n>] [--crop <n>] [--seed <n>] [--backend <backend>]

Generates N BraTS-like cases (<out>/data), trains the reference network on all but the held-out
ones (<out>/run), segments those with the best weights (<out>/seg), scores them (<out>/eval) and
writes an HTML report (<out>/report/index.html); prints one JSON summary line. Needs nothing but
this repository (local storage, generated data, CPU). A re-run replaces the previous demo output.

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
    const summary = await runDemo({
      out: flags.str("out") ?? "out/demo",
      cases: flags.int("cases", 6, 2, 1000),
      dims: sizeFlag(flags, [64, 64, 48], 32, 256),
      epochs: flags.int("epochs", 3, 1),
      stepsPerEpoch: flags.int("steps-per-epoch", 25, 1),
      crop: flags.edge("crop", 32, 256),
      seed: flags.int("seed", 0, 0),
      backend: backendFlag(flags),
      onProgress: trainEventPrinter(stderrProgress()),
      log: (m) => console.error(`demo: ${m}`),
    });
    printJson(summary);
  },
});
