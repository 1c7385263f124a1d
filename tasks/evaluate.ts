/**
 * `evaluate --pred <uri> --truth <uri>`: BraTS metrics (Dice, HD95, sensitivity, specificity of
 * ET, TC and WT, or of an nnU-Net or MSD dataset's own regions) of a folder of predicted
 * segmentations against a dataset's references
 * (pipeline/evaluation), with the report of pipeline/report.
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
  type Command,
  intFlag,
  numberFlag,
  parseFlags,
  printJson,
  shardFlag,
  stderrProgress,
  UsageError,
} from "./_cli.ts";

export const evaluateCommand: Command = {
  name: "evaluate",
  summary: "Score predictions against references: Dice, HD95, sensitivity, specificity",
  help: `Usage: deno task evaluate --pred <uri> --truth <uri> [--out <uri>] [--json] [options]

Evaluates each predicted segmentation under --pred against the reference of the same case under
--truth, for the BraTS regions ET (enhancing tumor), TC (tumor core: necrosis + enhancing) and
WT (whole tumor: every tumor label):
  dice         2·TP / (2·TP + FP + FN)
  hd95         95th percentile Hausdorff distance in mm (MedPy's hd95: surfaces from the 6-connected
               erosion, exact Euclidean distances with the reference's voxel spacing, both
               directions pooled)
  sensitivity  TP / (TP + FN)
  specificity  TN / (TN + FP), over the whole volume
Empty regions are scored by the legacy BraTS rules: both empty → Dice 1, HD95 0; one empty →
Dice 0, HD95 373.1287 mm (√(240² + 240² + 155²), the diagonal of the 1 mm BraTS grid);
sensitivity with an empty reference is 1 if nothing is predicted, else 0.

--pred    a folder (local, file:// or s3://) of <case>.nii.gz or <case>_seg.nii.gz files, directly
          in it (as \`segment\` writes them; <case>_probabilities.nii.gz files are skipped)
--truth   a BraTS dataset (case folders or flat, 2018-2021 naming <id>_seg.nii.gz or 2023 naming
          <id>-seg.nii.gz); an nnU-Net v2 raw dataset or MSD task (a folder with a
          dataset.json: its labelsTr/<case>.nii.gz are the references), its labelsTr folder,
          or with --dataset-json any folder of <case>.nii.gz references that file describes;
          or else a flat folder of <case>.nii.gz references in BraTS labels
Cases are matched by id. Each prediction must be on its reference's grid (same dims, affines equal
within --affine-tolerance). Labels are 0, 1, 2, 4 (2018-2021) or 0, 1, 2, 3 (2023): a BraTS
reference follows its naming; a flat reference, and every prediction, is read as 2023 when it
holds 3 and not 4; --labels fixes one convention for all files.

Datasets with a dataset.json are scored in their own regions and values, as nnU-Net evaluates:
region-based labels ({"whole tumor": [1, 2, 3], ...} with regions_class_order) score those
regions, plain labels one region per non-background label (MSD Task01: edema, non-enhancing
tumor, enhancing tumour), named as the dataset.json names them in the JSON keys, CSV columns
(<region>_dice, ...) and the table; metrics.json then also has "dataset" ({layout, name,
datasetJson, regions: [{name, labels}]}). Every label of a prediction or reference must be one of
the dataset's values. Predictions are <case>.nii.gz, the whole name the case id (x_t1.nii.gz is
case x_t1, not a BraTS image). --labels, --lesion-wise and --report are for BraTS-named data
only (a usage error with such a dataset).

Missing and extra cases: a reference without a prediction is listed in "missing" and a prediction
without a reference in "extra" (both also on stderr). Summary statistics cover the evaluated cases.
As nnU-Net does, a missing prediction is an error: the command writes and prints what it computed,
then exits with status 1 — unless --allow-missing is given. Extra predictions are only reported.

Output: a table on stdout, or with --json exactly one JSON object:
  {"cases":[{"case":"<id>","ET":{"dice":..,"hd95":..,"sensitivity":..,"specificity":..},
             "TC":{..},"WT":{..}}, ...],
   "summary":{"ET":{"dice":{"mean":..,"std":..,"median":..,"q25":..,"q75":..},"hd95":{..},..},..},
   "missing":[ids],"extra":[ids]}
(std is the population standard deviation; quartiles interpolate linearly, as numpy's.)
--out <uri> also writes that object as <uri>/metrics.json and a per-case <uri>/metrics.csv
(columns case, ET_dice, ET_hd95, ET_sensitivity, ET_specificity, TC_..., WT_...), each atomically.
A broken file, unknown labels or mismatched grids stop the command (exit 1) before anything is
written.

Options:
  --pred <uri>              predicted segmentations (required)
  --truth <uri>             reference segmentations (required)
  --out <uri>               folder for metrics.json and metrics.csv
  --json                    print the JSON object instead of the table
  --dataset-json <uri>      the dataset.json of --truth's labels, when it is not in --truth
                            (or above its labelsTr)
  --labels 2021|2023        the label convention of every file (default: per file, see above)
  --allow-missing           missing predictions are not an error
  --affine-tolerance <mm>   largest affine difference between prediction and reference (1e-3)
  --concurrency <n>         cases read at once (default 4)
  --lesion-wise             also score the BraTS 2023 lesion-wise Dice and HD95 of each region:
                            26-connected lesions; reference lesions merged when their dilations
                            touch; reference lesions of volume <= the minimum left out; each missed
                            reference lesion and each false-positive prediction scores Dice 0 and
                            HD95 374 mm; both empty: 1 and 0. Per case and in the summary as
                            "lesionWise" ({dice, hd95, tp, fp, fn, small} per region), CSV columns
                            ET_lesion_dice, ..., WT_lesion_fn, and a second table
  --challenge <name>        the lesion-wise parameters (default BraTS-GLI):
${
    Object.entries(LESION_WISE_CHALLENGES).map(([k, c]) =>
      `                            ${k}: dilation ${c.dilation}, minimum ${c.minVolume} mm³`
    ).join("\n")
  }
  --lesion-dilation <n>     override the challenge's dilation (voxels)
  --lesion-min-volume <mm3> override the challenge's minimum lesion volume (mm³)
  --shard <i>/<n>|auto/<n>|auto
                            only the cases of shard i of n (0-based; "auto" reads the AWS Batch or
                            Kubernetes Indexed Job variables, see segment --help); the others are
                            neither evaluated nor missing. A shard without cases gives an empty
                            result (exit 0). --out then gets metrics-shard-<i>-of-<n>.json and .csv
                            (and the report goes under <out>/shard-<i>-of-<n>/), so shards sharing
                            one --out never overwrite each other. Merge by evaluating the whole
                            output without --shard: that writes metrics.json and metrics.csv.
  --report                  also write <out>/report/index.html: per case FLAIR slices through the
                            tumor with reference and prediction overlaid (when --truth holds the
                            case's images), and the metrics tables (needs --out)

Examples:
  deno task evaluate --pred out/seg --truth data/BraTS2021_Training --out out/seg
  deno task evaluate --pred s3://bucket/runs/7/seg --truth s3://bucket/BraTS2023/ --json
  deno task evaluate --pred out/seg --truth data/labels --labels 2023 --allow-missing
  deno task evaluate --pred out/seg501 --truth data/Dataset501_BraTS2018WT --out out/seg501`,
  async run(args) {
    const { values } = parseFlags("evaluate", args, {
      pred: { type: "string" },
      truth: { type: "string" },
      out: { type: "string" },
      json: { type: "boolean" },
      labels: { type: "string" },
      "allow-missing": { type: "boolean" },
      "affine-tolerance": { type: "string" },
      concurrency: { type: "string" },
      report: { type: "boolean" },
      shard: { type: "string" },
      "lesion-wise": { type: "boolean" },
      challenge: { type: "string" },
      "lesion-dilation": { type: "string" },
      "lesion-min-volume": { type: "string" },
      "dataset-json": { type: "string" },
    });
    if (!values.pred) throw new UsageError("evaluate: --pred <uri> is required");
    if (!values.truth) throw new UsageError("evaluate: --truth <uri> is required");
    if (values.labels !== undefined && values.labels !== "2021" && values.labels !== "2023") {
      throw new UsageError(`--labels must be 2021 or 2023, got "${values.labels}"`);
    }
    if (values.report && !values.out) throw new UsageError("--report needs --out <uri>");
    const labels = values.labels as LabelConvention | undefined;
    const shard = shardFlag(values.shard);
    const concurrency = intFlag("concurrency", values.concurrency, 4, 1, 64);
    const affineTolerance = numberFlag("affine-tolerance", values["affine-tolerance"], 1e-3, 0);
    const lesionWise = lesionWiseFlags(values);
    const bratsOnly = [
      lesionWise ? "--lesion-wise" : "",
      values.labels !== undefined ? "--labels" : "",
      values.report ? "--report" : "",
    ].filter((f) => f !== "");
    const problem = await bratsOnlyProblem(bratsOnly, values.truth, values["dataset-json"]);
    if (problem) throw new UsageError(problem);

    const progress = stderrProgress();
    const t0 = performance.now();
    const evaluation = await evaluateShard(values.pred, values.truth, {
      labels,
      concurrency,
      affineTolerance,
      ...(values["dataset-json"] !== undefined ? { datasetJson: values["dataset-json"] } : {}),
      ...(lesionWise ? { lesionWise } : {}),
      shard,
      onCase: (r, done, total) => {
        const eta = ((performance.now() - t0) / 1000 / done) * (total - done);
        progress.update("evaluate", done, total, r.case, eta);
      },
    });
    await printEvaluation(evaluation, values, shard, progress);
    if (evaluation.missing.length > 0 && !values["allow-missing"]) {
      throw missingPredictionsError(evaluation, values.pred);
    }
  },
};

/** Prints an evaluation (table or JSON on stdout, notes on stderr) and writes its files. */
async function printEvaluation(
  evaluation: Evaluation,
  values: { pred?: string; truth?: string; out?: string; json?: boolean; report?: boolean },
  shard: Shard | undefined,
  progress: Progress,
): Promise<void> {
  const { pred, truth, out } = values as { pred: string; truth: string; out?: string };
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
  if (values.report) {
    // One report folder per shard, for the same reason as the metrics' names.
    const uri = await writeEvaluationReport(pred, truth, shardOutUri(out!, shard), evaluation);
    progress.log(`evaluate: report ${uri}`);
  }
  if (values.json) printJson(evaluation);
  else console.log(formatTable(evaluation));
  if (!values.json && evaluation.lesionWise) console.log("\n" + formatLesionTable(evaluation));
  if (written) progress.log(`evaluate: wrote ${written.join(" and ")}`);
}

/** The lesion-wise parameters from `--lesion-wise`, `--challenge` and the overrides. */
function lesionWiseFlags(values: {
  "lesion-wise"?: boolean;
  challenge?: string;
  "lesion-dilation"?: string;
  "lesion-min-volume"?: string;
}): LesionWiseParams | undefined {
  if (!values["lesion-wise"]) {
    const stray = (["challenge", "lesion-dilation", "lesion-min-volume"] as const)
      .find((k) => values[k] !== undefined);
    if (stray) throw new UsageError(`--${stray} needs --lesion-wise`);
    return undefined;
  }
  const name = values.challenge ?? "BraTS-GLI";
  const challenge = Object.hasOwn(LESION_WISE_CHALLENGES, name)
    ? LESION_WISE_CHALLENGES[name]
    : undefined;
  if (!challenge) {
    throw new UsageError(
      `--challenge must be one of ${Object.keys(LESION_WISE_CHALLENGES).join(", ")}, got "${name}"`,
    );
  }
  return {
    challenge: name,
    dilation: intFlag("lesion-dilation", values["lesion-dilation"], challenge.dilation, 0, 50),
    minVolume: numberFlag("lesion-min-volume", values["lesion-min-volume"], challenge.minVolume, 0),
  };
}
