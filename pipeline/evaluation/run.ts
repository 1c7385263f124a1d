/**
 * One `evaluate` run over storage: the cases of one shard (or all), its metrics files named after
 * the shard so that shards sharing an output folder never overwrite each other.
 * @module
 */
import { inShard, type Shard, shardName } from "../cases/mod.ts";
import { joinUri } from "../storage/mod.ts";
import {
  evaluateCases,
  type EvaluateOptions,
  type Evaluation,
  findReferenceDataset,
  metricsBaseName,
  writeEvaluation,
} from "./evaluation.ts";

/** Options of {@linkcode evaluateShard}. */
export interface ShardEvaluateOptions extends Omit<EvaluateOptions, "only"> {
  /** Only this shard's cases; the others are neither evaluated nor missing. @default every case */
  shard?: Shard;
}

/**
 * Evaluates the predictions under `pred` against the references under `truth`, only the cases of
 * `options.shard` when given (see {@linkcode evaluateCases}).
 */
export function evaluateShard(
  pred: string,
  truth: string,
  options: ShardEvaluateOptions = {},
): Promise<Evaluation> {
  const { shard, ...rest } = options;
  return evaluateCases(pred, truth, {
    ...rest,
    ...(shard ? { only: (id: string) => inShard(id, shard) } : {}),
  });
}

/**
 * Writes the evaluation under `out` as `metrics.json` and `metrics.csv`, or for a shard as
 * `metrics-shard-<i>-of-<n>.json` and `.csv`.
 * @returns the URIs written, JSON first
 */
export function writeShardEvaluation(
  out: string,
  evaluation: Evaluation,
  shard?: Shard,
): Promise<string[]> {
  return writeEvaluation(out, evaluation, metricsBaseName(shard));
}

/** Where a shard's report goes: `<out>/shard-<i>-of-<n>`, or `out` itself without a shard. */
export function shardOutUri(out: string, shard?: Shard): string {
  return shard ? joinUri(out, shardName(shard)) : out;
}

/**
 * Why BraTS-only options cannot apply to `truthUri`: undefined when it is not an nnU-Net or MSD
 * dataset (or no such option is given), else a sentence naming the options, the dataset's layout,
 * its dataset.json and its regions.
 */
export async function bratsOnlyProblem(
  options: readonly string[],
  truthUri: string,
  datasetJson?: string,
): Promise<string | undefined> {
  if (options.length === 0) return undefined;
  const dataset = await findReferenceDataset(truthUri, datasetJson);
  if (!dataset) return undefined;
  return `${options.join(", ")}: BraTS-named references only; ${truthUri} is an ` +
    `${dataset.description.layout === "msd" ? "MSD" : "nnU-Net"} dataset ` +
    `(${dataset.datasetJson}, regions ${
      dataset.scheme.regions.map((r) => `"${r.name}"`).join(", ")
    })`;
}

/**
 * The error of a run with missing predictions, as nnU-Net has it: how many reference cases have
 * none under `predUri`, naming the first five.
 */
export function missingPredictionsError(evaluation: Evaluation, predUri: string): Error {
  const ids = evaluation.missing;
  return new Error(
    `${ids.length} of ${ids.length + evaluation.cases.length} reference cases have no ` +
      `prediction under ${predUri} (${ids.slice(0, 5).join(", ")}${
        ids.length > 5 ? ", ..." : ""
      }); the metrics above cover the others. Pass --allow-missing to accept this.`,
  );
}
