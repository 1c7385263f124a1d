/**
 * `evaluate`: the flags and printing of pipeline/evaluation's scores, and pipeline/report's report.
 * @module
 */
import type { Shard } from "../pipeline/cases/mod.ts";
import {
  bratsOnlyProblem,
  evaluateShard,
  type Evaluation,
  formatLesionTable,
  formatTable,
  type LabelConvention,
  LESION_WISE_CHALLENGES,
  type LesionWiseParams,
  missingPredictionsError,
  shardOutUri,
  writeShardEvaluation,
} from "../pipeline/evaluation/mod.ts";
import { type Progress, writeEvaluationReport } from "../pipeline/report/mod.ts";
import {
  defineCommand,
  type Flags,
  printJson,
  shardFlag,
  stderrProgress,
  UsageError,
} from "./_cli.ts";

export const evaluateCommand = defineCommand({
  name: "evaluate",
  summary: "Score predictions against references: Dice, HD95, sensitivity, specificity",
  help: `Usage: deno task evaluate --pred <uri> --truth <uri> [--out <uri>] [--json] [options]

Scores each prediction under --pred against the same case's reference under --truth: Dice, HD95
(mm, as MedPy), sensitivity and specificity of the BraTS regions ET, TC and WT, or of the regions
a dataset.json (nnU-Net v2 raw, MSD) names. Empty regions follow the legacy BraTS rules; each
prediction must be on its reference's grid. A reference without a prediction is "missing" (exit 1
unless --allow-missing), a prediction without one "extra". Prints a table, or with --json one
object {cases, summary, missing, extra}; --out writes it as metrics.json and metrics.csv. A bad
file, label or grid stops it before anything is written. Definitions, formats: README, "evaluate".

Options:
  --pred <uri>              a folder (local, file:// or s3://) of <case>.nii.gz or <case>_seg.nii.gz
                            predictions, as \`segment\` writes them (required)
  --truth <uri>             the references: a BraTS dataset (any naming), an nnU-Net v2 raw dataset
                            or MSD task (its labelsTr) or its labelsTr folder, or a flat folder of
                            <case>.nii.gz (required)
  --out <uri>               folder for metrics.json and metrics.csv
  --json                    print the JSON object instead of the table
  --dataset-json <uri>      the dataset.json of --truth's labels, when it is not in --truth
                            (or above its labelsTr)
  --labels 2021|2023        the label convention of every file (default: per file, see above)
  --allow-missing           missing predictions are not an error
  --affine-tolerance <mm>   largest affine difference between prediction and reference (1e-3)
  --concurrency <n>         cases read at once (default 4)
  --lesion-wise             also score the BraTS 2023 lesion-wise Dice and HD95 of each region (as
                            the challenges' code: 26-connected lesions, missed and false-positive
                            lesions Dice 0 and HD95 374 mm), per case and in the summary as
                            "lesionWise", in CSV columns ET_lesion_dice .. WT_lesion_fn and a table
  --challenge <name>        the lesion-wise parameters (default BraTS-GLI):
${
    Object.entries(LESION_WISE_CHALLENGES).map(([k, c]) =>
      `                            ${k}: dilation ${c.dilation}, minimum ${c.minVolume} mm³`
    ).join("\n")
  }
  --lesion-dilation <n>     override the challenge's dilation (voxels)
  --lesion-min-volume <mm3> override the challenge's minimum lesion volume (mm³)
  --shard <i>/<n>|auto/<n>|auto
                            only the cases of shard i of n (see segment --help), into
                            metrics-shard-<i>-of-<n>.json and .csv (and shard-<i>-of-<n>/report/);
                            evaluating the whole output without --shard merges them
  --report                  also write <out>/report/index.html: per case FLAIR slices with reference
                            and prediction, and the metrics tables (needs --out)

--lesion-wise, --labels and --report are for BraTS-named data only.

Examples:
  deno task evaluate --pred out/seg --truth data/BraTS2021_Training --out out/seg
  deno task evaluate --pred s3://bucket/runs/7/seg --truth s3://bucket/BraTS2023/ --json
  deno task evaluate --pred out/seg --truth data/labels --labels 2023 --allow-missing
  deno task evaluate --pred out/seg501 --truth data/Dataset501_BraTS2018WT --out out/seg501`,
  async run(flags) {
    const [pred, truth, out] = [flags.str("pred"), flags.str("truth"), flags.str("out")];
    if (!pred) throw new UsageError("evaluate: --pred <uri> is required");
    if (!truth) throw new UsageError("evaluate: --truth <uri> is required");
    const labels = flags.choice<LabelConvention>("labels", ["2021", "2023"]);
    if (flags.bool("report") && !out) throw new UsageError("--report needs --out <uri>");
    const shard = shardFlag(flags);
    const concurrency = flags.int("concurrency", 4, 1, 64);
    const affineTolerance = flags.num("affine-tolerance", 1e-3, 0);
    const lesionWise = lesionWiseFlags(flags);
    const bratsOnly = [
      lesionWise ? "--lesion-wise" : "",
      labels !== undefined ? "--labels" : "",
      flags.bool("report") ? "--report" : "",
    ].filter((f) => f !== "");
    const datasetJson = flags.str("dataset-json");
    const problem = await bratsOnlyProblem(bratsOnly, truth, datasetJson);
    if (problem) throw new UsageError(problem);

    const progress = stderrProgress();
    const t0 = performance.now();
    const evaluation = await evaluateShard(pred, truth, {
      labels,
      concurrency,
      affineTolerance,
      ...(datasetJson !== undefined ? { datasetJson } : {}),
      ...(lesionWise ? { lesionWise } : {}),
      shard,
      onCase: (r, done, total) => {
        const eta = ((performance.now() - t0) / 1000 / done) * (total - done);
        progress.update("evaluate", done, total, r.case, eta);
      },
    });
    await printEvaluation(evaluation, flags, shard, progress);
    if (evaluation.missing.length > 0 && !flags.bool("allow-missing")) {
      throw missingPredictionsError(evaluation, pred);
    }
  },
});

/** Prints an evaluation (table or JSON on stdout, notes on stderr) and writes its files. */
async function printEvaluation(
  evaluation: Evaluation,
  flags: Flags,
  shard: Shard | undefined,
  progress: Progress,
): Promise<void> {
  const [pred, truth, out, json] = [
    flags.str("pred")!,
    flags.str("truth")!,
    flags.str("out"),
    flags.bool("json"),
  ];
  // On stderr, with or without --json: stdout holds the table or the JSON alone.
  for (const id of evaluation.missing) {
    progress.log(`missing: no prediction for case "${id}" under ${pred}`);
  }
  for (const id of evaluation.extra) {
    progress.log(`extra: prediction "${id}" has no reference under ${truth}`);
  }
  progress.log(
    `evaluate: ${evaluation.cases.length} cases evaluated, ${evaluation.missing.length} ` +
      `missing, ${evaluation.extra.length} extra`,
  );
  const written = out ? await writeShardEvaluation(out, evaluation, shard) : undefined;
  if (flags.bool("report")) {
    // One report folder per shard, for the same reason as the metrics' names.
    const uri = await writeEvaluationReport(pred, truth, shardOutUri(out!, shard), evaluation);
    progress.log(`evaluate: report ${uri}`);
  }
  if (json) printJson(evaluation);
  else console.log(formatTable(evaluation));
  if (!json && evaluation.lesionWise) console.log("\n" + formatLesionTable(evaluation));
  if (written) progress.log(`evaluate: wrote ${written.join(" and ")}`);
}

/** The lesion-wise parameters from `--lesion-wise`, `--challenge` and the overrides. */
function lesionWiseFlags(flags: Flags): LesionWiseParams | undefined {
  if (!flags.bool("lesion-wise")) {
    const stray = ["challenge", "lesion-dilation", "lesion-min-volume"]
      .find((k) => flags.str(k) !== undefined);
    if (stray) throw new UsageError(`--${stray} needs --lesion-wise`);
    return undefined;
  }
  const name = flags.choice("challenge", Object.keys(LESION_WISE_CHALLENGES), "BraTS-GLI");
  const challenge = LESION_WISE_CHALLENGES[name];
  return {
    challenge: name,
    dilation: flags.int("lesion-dilation", challenge.dilation, 0, 50),
    minVolume: flags.num("lesion-min-volume", challenge.minVolume, 0),
  };
}
