/**
 * One case inferred and its files encoded in memory: labels on the input's grid (and header), the
 * optional probabilities, and the metrics against a reference.
 * @module
 */
import { type UNet, unetPredictor } from "../../model/mod.ts";
import { type Case, caseChannels, preprocessCase, readNiftiHeader } from "../cases/mod.ts";
import { type CaseResult, evaluateImages } from "../evaluation/mod.ts";
import {
  keepLargestComponent,
  resolveOverlap,
  slidingWindowProbabilities,
} from "../inference/mod.ts";
import { type Labels, probabilitiesToLabels } from "../labels.ts";
import { decodeNifti, encodeNifti, type NiftiHeader, readNifti } from "../nifti/mod.ts";
import { uncropBox } from "../volume/mod.ts";
import type { OutputPlan, RecordOptions } from "./outputs.ts";
import type { CaseOptions } from "./segmenter.ts";

/** What `<out>/<case>.metrics.json` holds: `evaluate`'s entry for the case, and its two files. */
export interface CaseMetricsRecord extends CaseResult {
  prediction: string;
  reference: string;
}

/** Channel-last [voxels, c] to channel-major (NIfTI's 4th dimension slowest). */
function channelMajor(data: Float32Array, channels: number): Float32Array {
  const n = data.length / channels;
  const out = new Float32Array(data.length);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < channels; k++) out[k * n + i] = data[i * channels + k];
  }
  return out;
}

/**
 * Infers one case and encodes its files (labels, probabilities, metrics) in memory: scored from
 * the bytes about to be written, as `evaluate` would score the file, so a reference that cannot
 * be read fails the case with nothing written.
 */
export async function encodeCase(
  net: UNet,
  modelSha256: string,
  c: Case,
  how: { plan: OutputPlan; labelsOut: Labels; opts: RecordOptions; options: CaseOptions },
): Promise<EncodedCase> {
  const { plan, labelsOut, opts, options } = how;
  const header = await readNiftiHeader(caseChannels(c)[0].uri);
  // The reference is read once, below, for the metrics: inference needs only the images.
  const { seg: _reference, ...images } = c;
  const p = await preprocessCase(images);
  const predictor = unetPredictor(net);
  const window = Math.min(opts.window, 1024);
  // "auto" resolved on the brain's box, which the windows cover.
  const overlap = resolveOverlap(opts.overlap, p.box.size, window, predictor.multiple);
  const probs = await slidingWindowProbabilities(predictor, p.image, p.box.size, {
    window,
    overlap,
    batch: options.batch ?? 1,
    mirror: opts.tta,
    onWindow: options.onWindow,
  });
  const boxLabels = probabilitiesToLabels(probs, labelsOut, opts.et_threshold);
  if (opts.largest_component) keepLargestComponent(boxLabels, p.box.size);
  const labels = uncropBox(boxLabels, p.box, p.dims, 1);
  const counts: Record<string, number> = {};
  for (const l of labels) if (l) counts[l] = (counts[l] ?? 0) + 1;
  const description = `revunet ${modelSha256.slice(0, 12)}`;
  const nifti = (
    data: Float32Array | Uint8Array,
    type: "uint8" | "float32",
    name: string,
    k?: number,
  ) => encodeNifti(data, type, header, { dims: niftiDims(header, k), description, name });
  const labelBytes = nifti(labels, "uint8", plan.output);
  let metrics: CaseMetricsRecord | undefined;
  if (c.seg && plan.metrics) {
    const truth = await readNifti(c.seg);
    const scored = evaluateImages(
      decodeNifti(labelBytes, plan.output),
      plan.output,
      truth,
      c.seg,
      {
        truthEnhancingLabel: c.enhancingLabel,
      },
    );
    metrics = { case: c.id, ...scored.metrics, prediction: plan.output, reference: c.seg };
  }
  const k = net.config.outChannels;
  const probabilities = plan.probabilities
    ? nifti(channelMajor(uncropBox(probs, p.box, p.dims, k), k), "float32", plan.probabilities, k)
    : undefined;
  return { labels: labelBytes, probabilities, metrics, counts, overlap };
}

/** A case's files as bytes, and the voxels per label of its segmentation. */
export interface EncodedCase {
  labels: Uint8Array;
  probabilities?: Uint8Array;
  metrics?: CaseMetricsRecord;
  counts: Record<string, number>;
  /** The window overlap used (`"auto"` resolved). */
  overlap: number;
}

/** The grid of an output: the input's, with `k` channels as a 4th dimension when given. */
function niftiDims(header: NiftiHeader, k?: number): number[] {
  const grid = header.dims.slice(0, 3);
  return k === undefined ? grid : [...grid, k];
}
