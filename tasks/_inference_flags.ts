/**
 * The inference flags `segment` and `serve` share, declared and parsed once: --overlap, --window,
 * --tta, --batch and --et-threshold, into the options of each case's segmentation.
 * @module
 */
import { MAX_OVERLAP } from "../pipeline/inference/mod.ts";
import type { CaseOptions } from "../pipeline/segmentation/mod.ts";
import { intFlag, numberFlag } from "./_cli.ts";

/** The flags' table, for parseFlags. */
export const INFERENCE_FLAGS = {
  overlap: { type: "string" },
  window: { type: "string" },
  tta: { type: "boolean" },
  batch: { type: "string" },
  "et-threshold": { type: "string" },
} as const;

/** The flags' values as parseFlags returns them. */
export interface InferenceFlagValues {
  overlap?: string;
  window?: string;
  tta?: boolean;
  batch?: string;
  "et-threshold"?: string;
}

/**
 * The case options the flags give: overlap in [0, MAX_OVERLAP] (default 0.5), window an integer
 * in [8, 1024] or "auto" (the default, left out), batch in [1, 64] (default 1), et-threshold
 * >= 0 (default 0). Checked in that order.
 * @throws {UsageError} naming the flag and the value given
 */
export function inferenceOptions(values: InferenceFlagValues):
  & Required<
    Pick<CaseOptions, "overlap" | "tta" | "batch" | "etThreshold">
  >
  & { window?: number } {
  const overlap = numberFlag("overlap", values.overlap, 0.5, 0, MAX_OVERLAP);
  const window = values.window === undefined || values.window === "auto"
    ? undefined
    : intFlag("window", values.window, 128, 8, 1024);
  return {
    overlap,
    ...(window ? { window } : {}),
    tta: values.tta ?? false,
    batch: intFlag("batch", values.batch, 1, 1, 64),
    etThreshold: intFlag("et-threshold", values["et-threshold"], 0, 0),
  };
}
