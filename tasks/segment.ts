/**
 * `segment`: the flags, printing and exit status of pipeline/segmentation's `segment`.
 * @module
 */
import { formatDuration } from "../pipeline/report/mod.ts";
import { segment, segmentEvent, type SegmentResult } from "../pipeline/segmentation/mod.ts";
import {
  backendFlag,
  defineCommand,
  INFERENCE_HELP,
  inferenceOptions,
  printJson,
  shardFlag,
  stderrProgress,
  UsageError,
} from "./_cli.ts";

/** Reads an event notification from a file, or from standard input for "-". */
async function readEvent(source: string): Promise<string> {
  if (source === "-") return await new Response(Deno.stdin.readable).text();
  try {
    return await Deno.readTextFile(source);
  } catch (e) {
    throw new Error(`--event ${source}: cannot read it (${(e as Error).message})`);
  }
}

export const segmentCommand = defineCommand({
  name: "segment",
  summary: "Segment cases with a trained model: BraTS label NIfTIs on the inputs' grids",
  help: `Usage: deno task segment --model <uri> --input <uri> --out <uri> [options]

Segments every case under --input (a case's folder or a dataset: BraTS in any naming, nnU-Net v2
raw or MSD; local or s3://) with the model at --model. Writes <out>/<case>.nii.gz (uint8 labels in
the case's convention, on its grid and affine), <out>/<case>.metrics.json for a case with its
reference, and last <out>/<case>.json (model, inputs, options, outputs), each whole or not at all.
A case already done alike is skipped unless --force; a case that fails is recorded in
<out>/<case>.error.json, the others go on, and the exit status is 1.

--event <file>|- segments the cases one S3 event notification completes (as \`serve\`); the rest
are listed as waiting; a malformed event is an error, nothing written.

--shard <i>/<n>: only shard i of n (0-based, by a hash of the case id). Without it AWS Batch array
jobs and Kubernetes Indexed Jobs (with REVUNET_SHARD_COUNT) set it; auto/<n> takes their index.
evaluate over the whole --out merges the shards. More in the README, "segment".

Options:
  --model <uri>             trained model: run folder, best/, checkpoint folder or file (required)
  --input <uri>             a case folder or a dataset (required unless --event)
  --event <file>|-          segment the cases an S3 event notification completes
  --shard <i>/<n>|auto/<n>  only the cases of one shard (see above)
  --out <uri>               output folder or s3:// prefix (required)
${INFERENCE_HELP}
  --force                   redo cases that are already done
  --report                  write <out>/report/index.html (with a shard, under shard-<i>-of-<n>/):
                            FLAIR slices with the prediction (and reference and metrics)
  --backend <backend>       auto|tensorflow|webgpu|wasm|cpu (default cpu)
  --quiet                   no progress output
  --json                    print a JSON summary

Example:
  deno task segment --model out/run1/best --input out/synth --out out/seg`,
  async run(flags) {
    flags.require("model", "out");
    const [input, event, out] = [flags.str("input"), flags.str("event"), flags.str("out")!];
    if (!input && event === undefined) throw new UsageError("--input is required (or --event)");
    const shard = shardFlag(flags);
    const quiet = flags.bool("quiet");
    const common = {
      model: flags.str("model")!,
      input: input ?? "",
      out,
      ...inferenceOptions(flags),
      force: flags.bool("force"),
      report: flags.bool("report"),
      backend: backendFlag(flags),
      progress: stderrProgress(quiet),
    };
    const result = event !== undefined
      ? await segmentEvent(await readEvent(event), common)
      : await segment({ ...common, ...(shard ? { shard } : {}) });
    if (shard && !quiet) {
      console.error(`segment: shard ${shard.index}/${shard.count}: ${result.cases.length} cases`);
    }
    if (flags.bool("json")) printJson(result);
    if (!quiet) printSummary(result, out);
    if (result.failed.length > 0) {
      throw new Error(
        `${result.failed.length} case(s) failed: ${
          result.failed.map((f) => `${f.id} (${f.error})`).join("; ")
        }`,
      );
    }
  },
});

/** The closing line: segmented, skipped and failed cases, and the time taken. */
function printSummary(result: SegmentResult, out: string): void {
  const done = result.cases.filter((c) => c.status === "done").length;
  console.error(
    `segment: ${done} segmented, ${result.cases.length - done} skipped, ${result.failed.length} ` +
      `failed in ${formatDuration(result.seconds)} → ${out}`,
  );
}
