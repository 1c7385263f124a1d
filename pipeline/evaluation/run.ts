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
