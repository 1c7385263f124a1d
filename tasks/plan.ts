/**
 * `plan`: the command line of {@linkcode planCrop}: the largest training crop that fits a memory
 * budget, reversible and standard side by side.
 * @module
 */
import { planCrop, planNetworkConfig, selectBackend } from "../pipeline/training/mod.ts";
import { backendFlag, defineCommand, intFlag, printJson, UsageError } from "./_cli.ts";

export const planCommand = defineCommand({
  name: "plan",
  summary: "Largest training crop that fits a memory budget, reversible vs standard",
  help: `Usage: deno task plan --budget <gib> [--config <json>] [--data <uri>] [--batch <n>]
                      [--measure-crops <a>,<b>] [--backend <backend>]

Measures the peak memory of one training step (forward, loss, backward, Adam update) at two crops
with tf.profile, fits bytes = fixed + per-voxel · voxels, and prints as one JSON object the largest
cubic crop (a multiple of 2^(levels-1)) whose step fits the budget, for the reversible network and
its standard twin, and max_window, the largest inference window under the budget (measured alike),
the cap of \`segment --window auto\`.

Options:
  --budget <gib>           memory budget (required), e.g. 16 for a 16 GiB GPU with headroom
  --config <json>          network fields over the reference, e.g. '{"baseChannels":32}'
  --data <uri>             the dataset to train on: its channels (inChannels) and regions
                           (outChannels) shape the network, as train makes it (BraTS: 4 and 3)
  --batch <n>              batch size (default 1)
  --measure-crops <a>,<b>  crops to measure (default for the reference network: 32,48 for the
                           reversible step, 16,24 for the standard one, where each is linear)
  --backend <backend>      auto|tensorflow|webgpu|wasm|cpu (default cpu; memory is counted the same)

Examples:
  deno task plan --budget 16
  deno task plan --budget 40 --config '{"blocksPerLevel":4}' --batch 2
  deno task plan --budget 16 --data ../data/Dataset501_BraTS2018WT`,
  async run(flags) {
    if (flags.str("budget") === undefined) throw new UsageError("plan: --budget <gib> is required");
    const budget = flags.gib("budget", 16, 1e-6);
    const config = await planNetworkConfig(flags.str("config"), flags.str("data"));
    const measureCrops = flags.str("measure-crops")?.split(",").map((s, i) =>
      intFlag(`measure-crops[${i}]`, s.trim(), 0, 1, 512)
    );
    if (
      measureCrops &&
      (measureCrops.length < 2 || new Set(measureCrops).size !== measureCrops.length)
    ) {
      throw new UsageError(
        `--measure-crops needs two or more different crops, got ${flags.str("measure-crops")}`,
      );
    }
    await selectBackend(backendFlag(flags), (m) => console.error(`plan: ${m}`));
    printJson(
      await planCrop({
        budget,
        config,
        batch: flags.int("batch", 1, 1, 1024),
        ...(measureCrops ? { measureCrops } : {}),
      }),
    );
  },
});
