/**
 * `bench memory|speed|kernels`: the flags, help and printing of pipeline/training/bench's
 * benchmarks.
 * @module
 */
import { datasetShape } from "../pipeline/cases/mod.ts";
import {
  type BackendChoice,
  benchKernels,
  benchMemory,
  benchSpeed,
  BRATS_DIMS,
  formatKernels,
  formatSpeed,
  isGpuBackend,
  selectBackend,
} from "../pipeline/training/mod.ts";
import { backendFlag, defineCommand, type Flags, printJson, UsageError } from "./_cli.ts";

/** Parses `--case-sizes`: comma-separated XxYxZ sizes, or "none". */
function caseSizesFlag(value: string | undefined): [number, number, number][] | undefined {
  if (value === undefined) return undefined;
  if (value === "none") return [];
  return value.split(",").map((part) => {
    const dims = part.trim().split("x").map(Number);
    if (dims.length !== 3 || dims.some((d) => !Number.isInteger(d) || d < 1)) {
      throw new UsageError(
        `--case-sizes must be comma-separated XxYxZ sizes (e.g. 60x60x39,240x240x155) or "none", ` +
          `got "${part}"`,
      );
    }
    return dims as [number, number, number];
  });
}

/** Flags every benchmark takes. */
const COMMON_FLAGS = ["json", "crop", "backend"];
/** Each benchmark's own flags. */
const OWN_FLAGS: Record<"memory" | "speed" | "kernels", string[]> = {
  memory: ["budget", "search-crop", "data"],
  speed: ["steps", "case-sizes", "window", "threads", "no-peer"],
  kernels: ["steps"],
};

export const benchCommand = defineCommand({
  name: "bench",
  summary: "Benchmarks: memory (reversible vs standard), speed (vs PyTorch), the project's kernels",
  help: `Usage: deno task bench memory [--json] [--budget <gib>] [--crop <n>] [--search-crop <n>]
                              [--backend <backend>]
       deno task bench speed [--json] [--crop <n>] [--steps <n>] [--case-sizes <x>x<y>x<z>,...]
                             [--window <n>] [--threads <n>] [--no-peer] [--backend <backend>]
       deno task bench kernels [--json] [--crop <n>] [--steps <n>] [--backend <backend>]

memory: the peak bytes (tf.profile) of one training step (forward, loss, backward, Adam update) at
batch 1, reversible network and standard twin; then the seed paper's experiment: the largest crop,
the most blocks per level and the widest base whose step fits --budget, fitted from measured crops.

speed: medians of --steps training steps and inference passes at the crop, sliding-window inference
(overlap 0.5) over synthetic cases of each --case-sizes, and case_seconds at ${
    BRATS_DIMS.join("x")
  };
then the same network in PyTorch (\`deno task setup --peer\`) as "peer", and the ratios ours/peer.

kernels: the project's kernels one by one at the reference network's shapes, the median of --steps
calls; on webgpu also the kernels they replace ("baseline", "ratio"). Needs cpu with the native
library, or webgpu. More in the README, "Benchmarks"; the figures are in BENCHMARKS.md.

Options:
  --json                print only the JSON object (default: progress on stderr; memory prints its
                        JSON on stdout, speed a summary)
  --budget <gib>        memory: budget for the searches (default 16)
  --crop <n>            a multiple of 8; memory: of the reported peak bytes (default 32); speed:
                        timed (default 32, 128 on a GPU); kernels: the shapes' (32, 64 on a GPU)
  --search-crop <n>     memory: crop for the depth and width searches (default 96)
  --data <uri>          memory: the reference network with this dataset's channels in and regions
                        out (as train makes it; BraTS: 4 and 3)
  --steps <n>           speed, kernels: timed steps, passes or calls; the median is reported
                        (default 3)
  --case-sizes <sizes>  speed: XxYxZ sizes for sliding-window inference, comma-separated, or "none"
                        (default WxWxW,WxWx2W,WxWx4W for the window W, plus ${BRATS_DIMS.join("x")}
                        on a GPU backend: a whole case takes hours on the cpu backend)
  --window <n>          speed: sliding-window edge, a multiple of 8 (default the crop)
  --threads <n>         speed: the peer's torch threads (default the number of cores)
  --no-peer             speed: skip the PyTorch peer
  --backend <backend>   auto|tensorflow|webgpu|wasm|cpu (default cpu)

Examples:
  deno task bench memory --json
  deno task bench speed
  deno task bench speed --json --crop 16 --case-sizes 64x64x40 --no-peer
  deno task bench kernels --backend webgpu`,
  positionals: true,
  async run(flags) {
    const which = benchName(flags);
    const log = flags.bool("json") ? () => {} : (m: string) => console.error(`bench: ${m}`);
    const choice = await selectBackend(backendFlag(flags), log);
    if (which === "kernels") await runKernels(flags, choice, log);
    else if (which === "speed") await runSpeed(flags, choice, log);
    else await runMemory(flags, log);
  },
});

type Log = (message: string) => void;

/** The benchmark named, its flags checked against the ones it takes. */
function benchName(flags: Flags): keyof typeof OWN_FLAGS {
  const [which, ...extra] = flags.positionals;
  if (which !== "memory" && which !== "speed" && which !== "kernels") {
    throw new UsageError(
      `bench: expected a benchmark name (memory, speed or kernels), got ${which ?? "none"}`,
    );
  }
  if (extra.length > 0) throw new UsageError(`bench: unexpected arguments: ${extra.join(" ")}`);
  const own = OWN_FLAGS[which];
  const misplaced = flags.given().find((k) => !COMMON_FLAGS.includes(k) && !own.includes(k));
  if (misplaced) {
    const owners = Object.entries(OWN_FLAGS).filter(([, flags]) => flags.includes(misplaced));
    throw new UsageError(
      `bench ${which}: --${misplaced} belongs to bench ${
        owners.map(([name]) => name).join(" and ")
      } (bench ${which} takes ${[...COMMON_FLAGS, ...own].map((k) => `--${k}`).join(", ")})`,
    );
  }
  return which;
}

/** Prints a result: the JSON alone with --json, else the summary for people and the JSON. */
function printResult(json: boolean, result: unknown, summary: string): void {
  if (json) printJson(result);
  else console.log(`${summary}\n${JSON.stringify(result)}`);
}

async function runKernels(flags: Flags, choice: BackendChoice, log: Log): Promise<void> {
  const crop = flags.edge("crop", isGpuBackend(choice.name, choice.device) ? 64 : 32);
  const result = await benchKernels({
    crop,
    steps: flags.int("steps", 3, 1),
    device: choice.device,
    log,
  });
  printResult(flags.bool("json"), result, formatKernels(result));
}

async function runSpeed(flags: Flags, choice: BackendChoice, log: Log): Promise<void> {
  const crop = flags.edge("crop", isGpuBackend(choice.name, choice.device) ? 128 : 32);
  const window = flags.edge("window", crop);
  const result = await benchSpeed({
    crop,
    steps: flags.int("steps", 3, 1),
    caseSizes: caseSizesFlag(flags.str("case-sizes")),
    window,
    threads: flags.int("threads", navigator.hardwareConcurrency ?? 1, 1),
    peer: !flags.bool("no-peer"),
    device: choice.device,
    log,
  });
  printResult(flags.bool("json"), result, formatSpeed(result));
}

async function runMemory(flags: Flags, log: Log): Promise<void> {
  const crop = flags.edge("crop", 32);
  const data = flags.str("data");
  const io = data === undefined ? undefined : await datasetShape(data);
  printJson(
    await benchMemory({
      budget: flags.gib("budget", 16, 0.001),
      crop,
      searchCrop: flags.int("search-crop", 96, 8),
      log,
      ...(io ? { io: { inChannels: io.inChannels, outChannels: io.outChannels } } : {}),
    }),
  );
}
