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

Segments every case under --input (one case's folder or a dataset: BraTS in any naming, an
nnU-Net v2 raw dataset or an MSD task; local or s3://) with the model at --model: a training run's
folder (its best/ weights, as the log says), its best/ or a checkpoint folder, or the
model.safetensors file itself. Writes <out>/<case>.nii.gz (uint8 labels in the case's own
convention, on its exact grid and affine) and, for a case with its reference, the metrics
\`evaluate\` computes as <out>/<case>.metrics.json; last <out>/<case>.json, recording the model,
inputs, options and outputs. Each file is written whole or not at all. A case done before with the
same model, inputs and options and every output now asked for is skipped unless --force. A case
that fails or cannot be used (a missing modality, two files for one, modalities on different
grids) is recorded in <out>/<case>.error.json, the others go on, and the exit status is 1.

--event <file> (or - for standard input) takes the cases from one S3 event notification (as
\`serve\` accepts it): each case whose inputs are all present is segmented, the others are listed
as waiting; objects under --out and files that are not case inputs are ignored; a malformed event
is an error (exit 1), nothing written.

--shard <i>/<n> segments only the cases of shard i of n (0-based, by a hash of the case id, so a
case never changes shard). Without it, AWS Batch array jobs (AWS_BATCH_JOB_ARRAY_INDEX,
AWS_BATCH_JOB_ARRAY_SIZE) and Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX with
REVUNET_SHARD_COUNT) set it; --shard auto/<n> takes the index from them. A retried shard skips
its finished cases; evaluate over the whole --out merges the shards. More in the README, "segment".

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
