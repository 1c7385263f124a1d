/**
 * BraTS evaluation, layered from pure to I/O as nnU-Net layers it: metrics of label volumes in
 * memory ({@linkcode caseMetrics}, {@linkcode regionMetrics}) → one prediction file against its
 * reference ({@linkcode evaluatePair}) → a folder of predictions against a dataset
 * ({@linkcode evaluateCases}), with summary statistics and the JSON and CSV that `evaluate` writes.
 *
 * Per region (ET, TC, WT): Dice, HD95 in mm (MedPy's definition, see pipeline/evaluation/distance.ts),
 * sensitivity and specificity over the whole volume. Empty regions are scored by the legacy BraTS
 * rules: both empty → Dice 1 and HD95 0; one empty → Dice 0 and HD95 {@linkcode EMPTY_HD95}
 * (373.1287 mm, the diagonal of the 240×240×155 1 mm grid); sensitivity with an empty reference is 1 when nothing is predicted, else 0;
 * specificity with no negatives is 1.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { caseMetrics } from "./evaluation.ts";
 * // A 4×1×1 volume: the reference has enhancing tumor (4) at x = 0..1, the prediction at x = 1..2.
 * const truth = new Uint8Array([4, 4, 0, 0]);
 * const pred = new Uint8Array([0, 4, 4, 0]);
 * const m = caseMetrics(pred, truth, [4, 1, 1], [1, 1, 1], 4);
 * assertEquals(m.ET.dice, 0.5);
 * assertEquals(m.ET.sensitivity, 0.5);
 * assertEquals(m.ET.specificity, 0.5);
 * ```
 * @module
 */
import {
  type DatasetDescription,
  ENHANCING_LABEL,
  labelScheme,
  parseCaseFileName,
  parseDatasetJson,
} from "../cases/mod.ts";
import { hd95, type MaskArray, percentile } from "./distance.ts";
import { type Box, cropMask } from "../volume/mod.ts";
import { type LesionWiseParams, type LesionWiseRegion, lesionWiseRegion } from "./lesion_wise.ts";
import type { NiftiHeader, NiftiImage } from "../nifti/mod.ts";
import { readNifti } from "../nifti/mod.ts";
import {
  INVALID_LABEL as INVALID,
  type Labels,
  type LabelScheme,
  REGION_BITS as BIT,
  regionMask,
  regionMaskTable,
  regionTable,
  schemeLabels,
} from "../labels.ts";
import { diceOfCounts, type Region } from "./metrics.ts";
import { shardName } from "../cases/mod.ts";
import {
  emptyFolderReason,
  exists,
  getObject,
  joinUri,
  listObjects,
  mapConcurrent,
  putObject,
} from "../storage/mod.ts";

/** The regions in the order they are reported (JSON keys, CSV columns, table). */
export const EVAL_REGIONS: readonly Region[] = ["ET", "TC", "WT"];
/** The metrics of each region, in the order they are reported. */
export const METRICS = ["dice", "hd95", "sensitivity", "specificity"] as const;
/** One of {@linkcode METRICS}. */
export type MetricName = typeof METRICS[number];

/**
 * HD95 (mm) when exactly one of prediction and reference is empty, the legacy BraTS value: the
 * diagonal of the 240×240×155 grid of 1 mm voxels, √(240² + 240² + 155²) = 373.12866413611…
 * (exact to the last bit: the sum is an integer and the square root is correctly rounded).
 */
export const EMPTY_HD95: number = Math.sqrt(240 ** 2 + 240 ** 2 + 155 ** 2);

/** A BraTS label convention: enhancing tumor is 4 in 2018–2021 and 3 from 2023 on. */
export type LabelConvention = "2021" | "2023";
/** The enhancing label of each convention. */
export const CONVENTION_ENHANCING: Record<LabelConvention, 3 | 4> = { "2021": 4, "2023": 3 };

/** The four metrics of one region of one case. */
export interface RegionMetrics {
  /** 2·TP / (2·TP + FP + FN); 1 when both are empty. */
  dice: number;
  /** 95th-percentile Hausdorff distance in mm; 0 when both are empty, EMPTY_HD95 when one is. */
  hd95: number;
  /** TP / (TP + FN); with an empty reference, 1 when nothing is predicted, else 0. */
  sensitivity: number;
  /** TN / (TN + FP) over the whole volume; 1 when there are no negatives. */
  specificity: number;
}

/** Metrics of the three regions of one case. */
export type CaseMetrics = Record<Region, RegionMetrics>;

/** Lesion-wise scores (BraTS 2023, pipeline/evaluation/lesion_wise.ts) of the three regions of one case. */
export type CaseLesionWise = Record<Region, LesionWiseRegion>;

/** One row of an evaluation: the case id and its metrics. */
export interface CaseResult extends CaseMetrics {
  case: string;
  /** With `lesionWise` options only. */
  lesionWise?: CaseLesionWise;
}

/** Statistics of one metric over cases; null when no case was evaluated. */
export interface Stats {
  mean: number | null;
  /** Population standard deviation (numpy's default, ddof = 0). */
  std: number | null;
  median: number | null;
  /** 25th percentile, interpolated linearly as numpy.percentile does. */
  q25: number | null;
  q75: number | null;
}

/** Statistics of every metric of every region. */
export type Summary = Record<Region, Record<MetricName, Stats>>;

/** What `evaluate --json` prints and `--out` writes as metrics.json. */
export interface Evaluation {
  /** One entry per case with both a prediction and a reference, sorted by id. */
  cases: CaseResult[];
  summary: Summary;
  /** Ids of reference cases without a prediction. */
  missing: string[];
  /** Ids of predictions without a reference. */
  extra: string[];
  /** With `lesionWise` options only: the parameters used and the statistics over cases. */
  lesionWise?: LesionWiseParams & { summary: LesionWiseSummary };
  /**
   * For a reference dataset with a `dataset.json` (nnU-Net v2, MSD) only: its regions, which
   * replace ET, TC and WT as the keys of `cases` and `summary`, in this order.
   */
  dataset?: EvaluatedDataset;
}

/** What an evaluation of an nnU-Net or MSD dataset records about it. */
export interface EvaluatedDataset {
  layout: "nnunet" | "msd";
  /** The dataset's `name`, when its `dataset.json` gives one. */
  name?: string;
  /** Where its `dataset.json` was read. */
  datasetJson: string;
  /** The regions scored, each with the label values it holds. */
  regions: { name: string; labels: number[] }[];
}

/** The regions of an evaluation in report order: the dataset's, or ET, TC, WT. */
export function evaluationRegions(e: Pick<Evaluation, "dataset">): readonly string[] {
  return e.dataset ? e.dataset.regions.map((r) => r.name) : EVAL_REGIONS;
}

/** The metrics of region `region` of a case (a BraTS region, or a dataset's by name). */
export function caseRegion(c: CaseResult, region: string): RegionMetrics {
  return (c as unknown as Record<string, RegionMetrics>)[region];
}

/** The lesion-wise values of a region, in the order they are reported. */
export const LESION_METRICS = ["dice", "hd95", "tp", "fp", "fn"] as const;
/** Statistics of the lesion-wise values of every region. */
export type LesionWiseSummary = Record<Region, Record<typeof LESION_METRICS[number], Stats>>;

// ---------------------------------------------------------------------------------------------
// Metrics of volumes in memory

/**
 * Dice, HD95, sensitivity and specificity of a binary prediction against a binary reference
 * (nonzero is inside), with the legacy BraTS rules for empty masks.
 * @param dims `[nx, ny, nz]`, x fastest in the arrays
 * @param spacing voxel size in mm along x, y, z
 */
export function regionMetrics(
  pred: MaskArray,
  truth: MaskArray,
  dims: readonly number[],
  spacing: readonly number[] = [1, 1, 1],
): RegionMetrics {
  if (pred.length !== truth.length) {
    throw new RangeError(
      `Cannot compare masks: the prediction has ${pred.length} voxels, the reference ${truth.length}`,
    );
  }
  let tp = 0;
  let p = 0;
  let t = 0;
  for (let i = 0; i < pred.length; i++) {
    const a = pred[i] !== 0;
    const b = truth[i] !== 0;
    if (a) p++;
    if (b) t++;
    if (a && b) tp++;
  }
  const distance = () => hd95(pred, truth, dims, spacing);
  return scores(tp, p, t, pred.length, distance);
}

/**
 * {@linkcode lesionWiseRegion} of ET, TC and WT between two label volumes that
 * {@linkcode caseMetrics} accepted (the same regions of the same labels).
 */
export function lesionWiseCase(
  pred: ArrayLike<number>,
  truth: ArrayLike<number>,
  dims: readonly number[],
  spacing: readonly number[],
  enhancingLabel: { pred: 3 | 4; truth: 3 | 4 },
  params: LesionWiseParams,
): CaseLesionWise {
  const out = {} as CaseLesionWise;
  const pm = new Uint8Array(pred.length);
  const tm = new Uint8Array(truth.length);
  for (const region of EVAL_REGIONS) {
    regionMask(pred, enhancingLabel.pred, BIT[region], pm);
    regionMask(truth, enhancingLabel.truth, BIT[region], tm);
    out[region] = lesionWiseRegion(pm, tm, dims, spacing, params);
  }
  return out;
}

/** The label set of a convention, for messages. */
function labelList(enhancing: 3 | 4): string {
  return `0, 1, 2, ${enhancing} (BraTS ${enhancing === 4 ? "2018–2021" : "2023"} convention)`;
}

/** Checks that `dims` are 3 positive integers and that both volumes have that many voxels. */
function checkVolumes(
  pred: ArrayLike<number>,
  truth: ArrayLike<number>,
  dims: readonly number[],
  names: { pred: string; truth: string },
): void {
  if (dims.length !== 3 || !dims.every((d) => Number.isInteger(d) && d >= 1)) {
    throw new RangeError(`Cannot evaluate: dims must be 3 positive integers, got [${dims}]`);
  }
  const n = dims[0] * dims[1] * dims[2];
  for (const [what, v] of [[names.pred, pred], [names.truth, truth]] as const) {
    if (v.length !== n) {
      throw new RangeError(
        `Cannot evaluate "${what}": it has ${v.length} voxels, dims [${dims}] need ${n}`,
      );
    }
  }
}

/**
 * The metrics of each region of a dataset's {@linkcode LabelScheme} (an nnU-Net or MSD
 * `dataset.json`, see pipeline/cases/datasets.ts `labelScheme`) between two label volumes on one
 * grid, keyed by region name in the scheme's order: region-based labels score their regions
 * (e.g. "whole tumor" of labels 1, 2, 3), plain labels one region per non-background label, as
 * nnU-Net's evaluation does. Empty regions follow the same rules as {@linkcode caseMetrics}.
 * @param names what to call the volumes in errors. @default {pred: "prediction", truth: "reference"}
 * @throws {RangeError} a label that is not one of the scheme's values (naming the volume, voxel
 *   and value), or volumes that do not fit `dims`
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { schemeMetrics } from "./evaluation.ts";
 * const scheme = { regions: [{ name: "tumour", labels: [1] }], order: [1] };
 * const m = schemeMetrics([1, 1, 0, 0], [0, 1, 1, 0], [4, 1, 1], [1, 1, 1], scheme);
 * assertEquals(m.tumour.dice, 0.5);
 * ```
 */
export function schemeMetrics(
  pred: ArrayLike<number>,
  truth: ArrayLike<number>,
  dims: readonly number[],
  spacing: readonly number[],
  scheme: LabelScheme,
  names: { pred: string; truth: string } = { pred: "prediction", truth: "reference" },
): Record<string, RegionMetrics> {
  checkVolumes(pred, truth, dims, names);
  const k = scheme.regions.length;
  const expected = () =>
    `${schemeLabels(scheme).join(", ")} (the dataset's labels: ${
      scheme.regions.map((r) => `${r.name} ${r.labels.join("+")}`).join(", ")
    })`;
  const scored = regionScores(
    pred,
    truth,
    dims,
    spacing,
    k,
    {
      pred: scheme,
      truth: scheme,
    },
    names,
    expected,
  );
  const out: Record<string, RegionMetrics> = {};
  scheme.regions.forEach((r, b) => out[r.name] = scored[b]);
  return out;
}

/**
 * Metrics of ET, TC and WT between two BraTS label volumes on one grid: WT is every tumor label
 * (1, 2 and enhancing), TC is 1 and enhancing, ET is enhancing. One pass counts the overlaps and
 * finds each region's bounding box; distances are computed only in the box holding both masks.
 *
 * @param pred predicted labels, x fastest
 * @param truth reference labels, same grid
 * @param dims `[nx, ny, nz]`
 * @param spacing voxel size in mm along x, y, z (the reference's pixdim). @default [1, 1, 1]
 * @param enhancingLabel the enhancing label of both volumes, or of each: 4 (2018–2021) or 3 (2023)
 * @param names what to call the volumes in errors. @default {pred: "prediction", truth: "reference"}
 * @throws {RangeError} a label outside the convention (naming the volume, voxel and value), or
 *   volumes that do not fit `dims`
 */
export function caseMetrics(
  pred: ArrayLike<number>,
  truth: ArrayLike<number>,
  dims: readonly number[],
  spacing: readonly number[] = [1, 1, 1],
  enhancingLabel: 3 | 4 | { pred: 3 | 4; truth: 3 | 4 } = 4,
  names: { pred: string; truth: string } = { pred: "prediction", truth: "reference" },
): CaseMetrics {
  checkVolumes(pred, truth, dims, names);
  const enh = typeof enhancingLabel === "number"
    ? { pred: enhancingLabel, truth: enhancingLabel }
    : enhancingLabel;
  const scored = regionScores(
    pred,
    truth,
    dims,
    spacing,
    3,
    {
      pred: enh.pred,
      truth: enh.truth,
    },
    names,
    (volume) => labelList(enh[volume]),
  );
  const out = {} as CaseMetrics;
  for (const region of EVAL_REGIONS) out[region] = scored[Math.log2(BIT[region])];
  return out;
}

/**
 * The metrics of each of the `k` regions of a label volume pair (region bit b of
 * {@linkcode regionTable} is region b), for any {@linkcode Labels}: one pass counts the overlaps
 * and finds each region's bounding box; distances are computed only in the box holding both.
 * @param expected the labels of a volume's convention, for the error on an unknown label
 */
function regionScores(
  pred: ArrayLike<number>,
  truth: ArrayLike<number>,
  dims: readonly number[],
  spacing: readonly number[],
  k: number,
  labels: { pred: Labels; truth: Labels },
  names: { pred: string; truth: string },
  expected: (volume: "pred" | "truth") => string,
): RegionMetrics[] {
  const [nx, ny, nz] = dims;
  const n = nx * ny * nz;
  const lp = regionTable(labels.pred);
  const lt = regionTable(labels.truth);

  // Per region bit b: counts, and the boxes of prediction and reference.
  const tp = new Array<number>(k).fill(0);
  const np = new Array<number>(k).fill(0);
  const nt = new Array<number>(k).fill(0);
  // box[(volume * k + b) * 6 + ...]: min x, y, z then max x, y, z; volume 0 prediction, 1 reference.
  const box = new Int32Array(12 * k);
  for (let j = 0; j < 2 * k; j++) {
    for (let c = 0; c < 3; c++) box[j * 6 + c] = 2 ** 30;
    for (let c = 3; c < 6; c++) box[j * 6 + c] = -1;
  }
  const grow = (j: number, x: number, y: number, z: number) => {
    const o = j * 6;
    if (x < box[o]) box[o] = x;
    if (y < box[o + 1]) box[o + 1] = y;
    if (z < box[o + 2]) box[o + 2] = z;
    if (x > box[o + 3]) box[o + 3] = x;
    if (y > box[o + 4]) box[o + 4] = y;
    if (z > box[o + 5]) box[o + 5] = z;
  };
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const p = lp[pred[i]] ?? INVALID;
        const t = lt[truth[i]] ?? INVALID;
        if ((p | t) === 0) continue;
        if ((p | t) & INVALID) {
          const volume = p & INVALID ? "pred" : "truth";
          const value = p & INVALID ? pred[i] : truth[i];
          throw new RangeError(
            `Cannot evaluate "${names[volume]}": voxel [${x}, ${y}, ${z}] has label ${value}; ` +
              `the labels are ${expected(volume)}`,
          );
        }
        for (let b = 0; b < k; b++) {
          const inP = (p >> b) & 1;
          const inT = (t >> b) & 1;
          if (inP) {
            np[b]++;
            grow(b, x, y, z);
          }
          if (inT) {
            nt[b]++;
            grow(k + b, x, y, z);
          }
          tp[b] += inP & inT;
        }
      }
    }
  }

  const out: RegionMetrics[] = [];
  for (let b = 0; b < k; b++) {
    const distance = () => {
      // The box holding both masks holds every surface voxel and every nearest neighbour.
      const pa = b * 6;
      const ta = (k + b) * 6;
      const start = [0, 1, 2].map((c) => Math.min(box[pa + c], box[ta + c]));
      const end = [3, 4, 5].map((c) => Math.max(box[pa + c], box[ta + c]) + 1);
      const union: Box = {
        start: [start[0], start[1], start[2]],
        size: [end[0] - start[0], end[1] - start[1], end[2] - start[2]],
      };
      const pm = cropMask(pred, dims, union, regionMaskTable(labels.pred, 1 << b));
      const tm = cropMask(truth, dims, union, regionMaskTable(labels.truth, 1 << b));
      return hd95(pm, tm, union.size, spacing);
    };
    out.push(scores(tp[b], np[b], nt[b], n, distance));
  }
  return out;
}

/** The four metrics from the counts, with the legacy BraTS rules for empty masks. */
function scores(
  tp: number,
  predicted: number,
  actual: number,
  voxels: number,
  distance: () => number,
): RegionMetrics {
  const fp = predicted - tp;
  const fn = actual - tp;
  const tn = voxels - tp - fp - fn;
  const bothEmpty = predicted === 0 && actual === 0;
  const oneEmpty = (predicted === 0) !== (actual === 0);
  return {
    dice: diceOfCounts(tp, predicted, actual),
    hd95: bothEmpty ? 0 : oneEmpty ? EMPTY_HD95 : distance(),
    sensitivity: actual === 0 ? (predicted === 0 ? 1 : 0) : tp / actual,
    specificity: tn + fp === 0 ? 1 : tn / (tn + fp),
  };
}
// ---------------------------------------------------------------------------------------------
// Label volumes from NIfTI files

/**
 * The voxels of a decoded segmentation as labels 0..255 (after scl_slope/scl_inter, as nibabel
 * reads them), whatever its datatype: BraTS releases store uint8, int16 or float64.
 * @param name the file's name or URI, for errors
 * @throws {RangeError} a volume that is not 3D (a 4th dimension of 1 is allowed), or a voxel whose
 *   value is not an integer in 0..255
 */
export function labelVolume(image: NiftiImage, name: string): Uint8Array {
  const { data, header } = image;
  const dims = header.dims;
  if (dims.length < 3 || dims.slice(3).some((d) => d !== 1)) {
    throw new RangeError(
      `Cannot read labels from "${name}": a segmentation must be 3D, found dims [${dims}]`,
    );
  }
  const slope = header.sclSlope;
  const scaled = slope !== 0 && Number.isFinite(slope) && (slope !== 1 || header.sclInter !== 0);
  if (!scaled && data instanceof Uint8Array) return data;
  const out = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = scaled ? data[i] * slope + header.sclInter : data[i];
    if (!(Number.isInteger(v) && v >= 0 && v <= 255)) {
      const [nx, ny] = dims;
      const at = [i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))];
      throw new RangeError(
        `Cannot read labels from "${name}": voxel [${at.join(", ")}] holds ${v}, not a label ` +
          `(an integer 0..255); is it a probability map or an image rather than a segmentation?`,
      );
    }
    out[i] = v;
  }
  return out;
}

/** The distinct labels in a volume, ascending. */
export function labelsPresent(labels: Uint8Array): number[] {
  const seen = new Uint8Array(256);
  for (let i = 0; i < labels.length; i++) seen[labels[i]] = 1;
  const out: number[] = [];
  for (let l = 0; l < 256; l++) if (seen[l]) out.push(l);
  return out;
}

/**
 * The enhancing label of a volume by what it holds: 3 when it has 3 and not 4 (2023), 4 when it
 * has 4 and not 3 (2018–2021), undefined when it has neither (no enhancing tumor: either fits).
 * @param name the file, for errors
 * @throws {RangeError} labels outside 0..4, or both 3 and 4
 */
export function detectEnhancingLabel(present: readonly number[], name: string): 3 | 4 | undefined {
  const unknown = present.filter((l) => l > 4);
  if (unknown.length > 0) {
    throw new RangeError(
      `Cannot evaluate "${name}": label${unknown.length > 1 ? "s" : ""} ${unknown.join(", ")} ` +
        `${unknown.length > 1 ? "are" : "is"} not a BraTS label (0, 1, 2 and 4 for 2018–2021, ` +
        `0, 1, 2 and 3 for 2023)`,
    );
  }
  const has3 = present.includes(3);
  const has4 = present.includes(4);
  if (has3 && has4) {
    throw new RangeError(
      `Cannot evaluate "${name}": it holds both 3 and 4, so it follows neither BraTS convention ` +
        `(enhancing tumor is 4 in 2018–2021, 3 in 2023)`,
    );
  }
  return has3 ? 3 : has4 ? 4 : undefined;
}

/** Checks that a volume holds only the labels of a known convention. */
function checkConvention(
  present: readonly number[],
  enhancing: 3 | 4,
  name: string,
  why: string,
): void {
  const allowed = [0, 1, 2, enhancing];
  const bad = present.filter((l) => !allowed.includes(l));
  if (bad.length === 0) return;
  const other = enhancing === 4 ? "2023" : "2021";
  throw new RangeError(
    `Cannot evaluate "${name}": label${bad.length > 1 ? "s" : ""} ${bad.join(", ")} ` +
      `${bad.length > 1 ? "are" : "is"} not among ${labelList(enhancing)}, ${why}` +
      (bad.every((l) => l === 3 || l === 4)
        ? `; for the other convention pass --labels ${other}`
        : ""),
  );
}

/** Options of {@linkcode evaluatePair}. */
export interface PairOptions {
  /**
   * The label convention of both files. Unset: the reference's is `truthEnhancingLabel` or else
   * detected from its labels, and the prediction's is detected (falling back on the reference's).
   */
  labels?: LabelConvention;
  /** The reference's enhancing label as its BraTS file name tells it (2021 or 2023 naming). */
  truthEnhancingLabel?: 3 | 4;
  /** Largest difference allowed between the two affines' entries (mm). @default 1e-3 */
  affineTolerance?: number;
  /** Also score BraTS 2023 lesion-wise Dice and HD95 with these parameters. */
  lesionWise?: LesionWiseParams;
}

/** What {@linkcode evaluatePair} found besides the metrics. */
export interface PairResult {
  metrics: CaseMetrics;
  dims: number[];
  /** The reference's voxel size (pixdim), used for the distances. */
  spacing: number[];
  enhancingLabel: { pred: 3 | 4; truth: 3 | 4 };
  /** With `lesionWise` options only. */
  lesionWise?: CaseLesionWise;
}

/**
 * Evaluates one predicted segmentation file against its reference: reads both, checks that they
 * share a grid (dims, and the affine within tolerance), reads their labels and conventions, and
 * computes {@linkcode caseMetrics} with the reference's voxel spacing.
 * @throws {SyntaxError|RangeError} a broken file, labels outside the convention, or two grids,
 *   naming the file(s)
 */
export async function evaluatePair(
  predUri: string,
  truthUri: string,
  options: PairOptions = {},
): Promise<PairResult> {
  const [predImage, truthImage] = await Promise.all([readNifti(predUri), readNifti(truthUri)]);
  return evaluateImages(predImage, predUri, truthImage, truthUri, options);
}

/**
 * {@linkcode evaluatePair} of two decoded volumes: what `segment` uses on a prediction it holds in
 * memory, so that its metrics are those `evaluate` computes from the written file.
 * @param predUri the prediction's name or URI, for errors
 * @param truthUri the reference's name or URI, for errors
 * @throws {RangeError} labels outside the convention, or two grids, naming the file(s)
 */
export function evaluateImages(
  predImage: NiftiImage,
  predUri: string,
  truthImage: NiftiImage,
  truthUri: string,
  options: PairOptions = {},
): PairResult {
  checkSameGrid(predImage.header, predUri, truthImage.header, truthUri, options.affineTolerance);
  const truth = labelVolume(truthImage, truthUri);
  const pred = labelVolume(predImage, predUri);
  const truthPresent = labelsPresent(truth);
  const predPresent = labelsPresent(pred);

  const fixed = options.labels ? CONVENTION_ENHANCING[options.labels] : undefined;
  let truthE: 3 | 4 | undefined;
  let predE: 3 | 4 | undefined;
  if (fixed) {
    checkConvention(
      truthPresent,
      fixed,
      truthUri,
      `the convention --labels ${options.labels} sets`,
    );
    checkConvention(predPresent, fixed, predUri, `the convention --labels ${options.labels} sets`);
    truthE = predE = fixed;
  } else {
    if (options.truthEnhancingLabel) {
      truthE = options.truthEnhancingLabel;
      checkConvention(truthPresent, truthE, truthUri, "the convention its BraTS file name implies");
    } else {
      truthE = detectEnhancingLabel(truthPresent, truthUri);
    }
    predE = detectEnhancingLabel(predPresent, predUri);
    truthE ??= predE ?? 4;
    predE ??= truthE;
  }
  const dims = truthImage.header.dims.slice(0, 3);
  const spacing = truthImage.header.pixdim.slice(0, 3);
  const metrics = caseMetrics(pred, truth, dims, spacing, { pred: predE, truth: truthE }, {
    pred: predUri,
    truth: truthUri,
  });
  const enhancingLabel = { pred: predE, truth: truthE };
  const lesionWise = options.lesionWise
    ? lesionWiseCase(pred, truth, dims, spacing, enhancingLabel, options.lesionWise)
    : undefined;
  return { metrics, dims, spacing, enhancingLabel, ...(lesionWise ? { lesionWise } : {}) };
}

function checkSameGrid(
  p: NiftiHeader,
  predUri: string,
  t: NiftiHeader,
  truthUri: string,
  tolerance = 1e-3,
): void {
  const spatial = (h: NiftiHeader) => [0, 1, 2].map((k) => h.dims[k] ?? 1);
  if (spatial(p).join() !== spatial(t).join()) {
    throw new RangeError(
      `Cannot evaluate "${predUri}" against "${truthUri}": the prediction has dims [${p.dims}], ` +
        `the reference [${t.dims}]; a prediction must be on its reference's grid`,
    );
  }
  let diff = 0;
  for (let r = 0; r < 4; r++) {
    for (let c = 0; c < 4; c++) diff = Math.max(diff, Math.abs(p.affine[r][c] - t.affine[r][c]));
  }
  if (!(diff <= tolerance)) {
    throw new RangeError(
      `Cannot evaluate "${predUri}" against "${truthUri}": their affines differ by ` +
        `${diff.toPrecision(3)} mm (tolerance ${tolerance}); a prediction must be on its ` +
        `reference's grid (prediction ${JSON.stringify(p.affine.slice(0, 3))}, reference ` +
        `${JSON.stringify(t.affine.slice(0, 3))})`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Folders of predictions against a dataset

/** A reference segmentation found under the truth URI. */
export interface TruthCase {
  id: string;
  uri: string;
  /** The enhancing label its BraTS naming implies; unset for a flat `<case>.nii.gz`. */
  enhancingLabel?: 3 | 4;
}

/** A predicted segmentation found under the prediction URI. */
export interface Prediction {
  id: string;
  uri: string;
}

const NIFTI_NAME = /^(.+)\.nii(?:\.gz)?$/;
/** `segment --save-probabilities` writes these beside the labels: not segmentations. */
const PROBABILITIES = /_probabilities\.nii(?:\.gz)?$/;

/** Why nothing usable was found under a folder: it is missing or empty, else what is expected. */
async function whyEmpty(uri: string, expected: string): Promise<string> {
  return (await listObjects(uri)).length === 0
    ? `${await emptyFolderReason(uri)}; ${expected}`
    : expected;
}

/**
 * The reference segmentations under `truthUri`: the seg files of a BraTS dataset in any release's
 * naming (`<id>_seg.nii.gz`, `<id>-seg.nii.gz`; case folders or flat, as pipeline/cases/cases.ts names
 * them), or, when it has none, every `<case>.nii[.gz]` directly under it.
 * @throws {Error} when a case has two reference files, naming both
 */
export async function findTruth(truthUri: string): Promise<TruthCase[]> {
  const objects = await listObjects(truthUri);
  const brats: TruthCase[] = [];
  const flat: TruthCase[] = [];
  for (const o of objects) {
    const name = o.key.split("/").pop()!;
    if (name.startsWith(".")) continue;
    const parsed = parseCaseFileName(name);
    if (parsed) {
      if (parsed.part === "seg") {
        brats.push({ id: parsed.id, uri: o.uri, enhancingLabel: ENHANCING_LABEL[parsed.naming] });
      }
      continue;
    }
    const m = NIFTI_NAME.exec(name);
    if (m && !o.key.includes("/") && !PROBABILITIES.test(name)) flat.push({ id: m[1], uri: o.uri });
  }
  return unique(brats.length > 0 ? brats : flat, "reference segmentations", truthUri);
}

/**
 * The predicted segmentations directly under `predUri`: `<case>.nii[.gz]` or
 * `<case>_seg.nii[.gz]` (also `<case>-seg`), not BraTS image files (`<id>_t1.nii.gz`, ...) and not
 * `segment`'s `<case>_probabilities.nii.gz`. With `plainNames` (an nnU-Net or MSD dataset's
 * predictions, which `segment` names `<case>.nii.gz`), every `<case>.nii[.gz]` is case `<case>`,
 * BraTS suffixes included (`x_t1.nii.gz` is case `x_t1`).
 * @throws {Error} when a case has two predictions (e.g. `<case>.nii.gz` and `<case>_seg.nii.gz`)
 */
export async function findPredictions(
  predUri: string,
  options: { plainNames?: boolean } = {},
): Promise<Prediction[]> {
  const found: Prediction[] = [];
  for (const o of await listObjects(predUri)) {
    if (o.key.includes("/") || o.key.startsWith(".") || PROBABILITIES.test(o.key)) continue;
    const parsed = options.plainNames ? undefined : parseCaseFileName(o.key);
    if (parsed) {
      if (parsed.part === "seg") found.push({ id: parsed.id, uri: o.uri });
      continue;
    }
    const m = NIFTI_NAME.exec(o.key);
    if (m) found.push({ id: m[1], uri: o.uri });
  }
  return unique(found, "predictions", predUri);
}

function unique<T extends { id: string; uri: string }>(list: T[], what: string, root: string): T[] {
  const byId = new Map<string, T[]>();
  for (const item of list) byId.set(item.id, [...(byId.get(item.id) ?? []), item]);
  const dup = [...byId].filter(([, items]) => items.length > 1);
  if (dup.length > 0) {
    throw new Error(
      `Cannot evaluate: ${root} holds more than one of the ${what} of ${
        dup.map(([id, items]) => `case "${id}" (${items.map((i) => i.uri).join(", ")})`)
          .join("; ")
      }; keep one per case`,
    );
  }
  return [...list].sort((a, b) => compareIds(a.id, b.id));
}

function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A reference dataset described by a `dataset.json` (nnU-Net v2 raw dataset or MSD task). */
export interface ReferenceDataset {
  description: DatasetDescription;
  /** Its regions: the dataset's region-based labels, or one per non-background label. */
  scheme: LabelScheme;
  /** Where its `dataset.json` was read. */
  datasetJson: string;
  /** The folder of its `<case><file_ending>` reference label files. */
  labelsUri: string;
}

/** Names a region may not have: they are the other keys of a case's metrics. */
const RESERVED_REGION_NAMES = ["case", "lesionWise"];

/**
 * The dataset a reference URI stands for, when it has a `dataset.json`: `truthUri` is an nnU-Net v2
 * raw dataset or an MSD task (its `labelsTr/<case>.nii.gz` are the references), or its
 * `labelsTr` folder (the `dataset.json` above it), or, with `datasetJson`, any folder of
 * `<case>.nii.gz` references (or a dataset whose `labelsTr` holds them) that this file describes.
 * Undefined for anything else: a BraTS dataset or a flat folder read by BraTS labels.
 * @throws {Error} a `dataset.json` that is not one (naming it), or a region named "case" or
 *   "lesionWise"
 */
export async function findReferenceDataset(
  truthUri: string,
  datasetJson?: string,
): Promise<ReferenceDataset | undefined> {
  let jsonUri: string | undefined;
  let labelsUri = truthUri;
  const inside = joinUri(truthUri, "dataset.json");
  const parent = /^(.*?)[/\\]labelsTr[/\\]?$/.exec(truthUri);
  if (datasetJson !== undefined) {
    jsonUri = datasetJson;
    const labelsTr = joinUri(truthUri, "labelsTr");
    if ((await listObjects(labelsTr)).length > 0) labelsUri = labelsTr;
  } else if (await exists(inside)) {
    jsonUri = inside;
    labelsUri = joinUri(truthUri, "labelsTr");
  } else if (parent && await exists(joinUri(parent[1] === "" ? "/" : parent[1], "dataset.json"))) {
    jsonUri = joinUri(parent[1] === "" ? "/" : parent[1], "dataset.json");
  } else {
    return undefined;
  }
  const text = new TextDecoder().decode(await getObject(jsonUri));
  const { description } = parseDatasetJson(text, jsonUri);
  const scheme = labelScheme(description, jsonUri);
  const reserved = scheme.regions.find((r) => RESERVED_REGION_NAMES.includes(r.name));
  if (reserved) {
    throw new Error(
      `${jsonUri}: a label named "${reserved.name}" cannot be evaluated (the metrics use that ` +
        `key); rename it`,
    );
  }
  return { description, scheme, datasetJson: jsonUri, labelsUri };
}

/**
 * The reference label files of a dataset: every `<case><file_ending>` directly in its labels
 * folder (`.nii.gz` or `.nii` for an MSD task), by case id.
 * @throws {Error} when a case has two reference files, naming both
 */
export async function findDatasetTruth(dataset: ReferenceDataset): Promise<TruthCase[]> {
  const ending = dataset.description.fileEnding;
  const found: TruthCase[] = [];
  for (const o of await listObjects(dataset.labelsUri)) {
    if (o.key.includes("/") || o.key.startsWith(".") || PROBABILITIES.test(o.key)) continue;
    if (ending !== undefined) {
      if (o.key.endsWith(ending)) found.push({ id: o.key.slice(0, -ending.length), uri: o.uri });
      continue;
    }
    const m = NIFTI_NAME.exec(o.key);
    if (m) found.push({ id: m[1], uri: o.uri });
  }
  return unique(found, "reference segmentations", dataset.labelsUri);
}

/** What {@linkcode evaluateDatasetPair} found: the metrics of each of the dataset's regions. */
export interface DatasetPairResult {
  metrics: Record<string, RegionMetrics>;
  dims: number[];
  spacing: number[];
}

/**
 * Evaluates one predicted segmentation file against its reference in a dataset's own labels and
 * regions ({@linkcode schemeMetrics}): reads both, checks that they share a grid (dims, and the
 * affine within tolerance) and that every label is one of the dataset's values.
 * @throws {SyntaxError|RangeError} a broken file, a label outside the dataset's, or two grids,
 *   naming the file(s)
 */
export async function evaluateDatasetPair(
  predUri: string,
  truthUri: string,
  scheme: LabelScheme,
  options: { affineTolerance?: number } = {},
): Promise<DatasetPairResult> {
  const [predImage, truthImage] = await Promise.all([readNifti(predUri), readNifti(truthUri)]);
  return evaluateDatasetImages(predImage, predUri, truthImage, truthUri, scheme, options);
}

/**
 * {@linkcode evaluateDatasetPair} of two decoded volumes: what `segment` uses on a prediction it
 * holds in memory, so that its metrics are those `evaluate` computes from the written file.
 * @param predUri the prediction's name or URI, for errors
 * @param truthUri the reference's name or URI, for errors
 * @throws {RangeError} a label outside the dataset's, or two grids, naming the file(s)
 */
export function evaluateDatasetImages(
  predImage: NiftiImage,
  predUri: string,
  truthImage: NiftiImage,
  truthUri: string,
  scheme: LabelScheme,
  options: { affineTolerance?: number } = {},
): DatasetPairResult {
  checkSameGrid(predImage.header, predUri, truthImage.header, truthUri, options.affineTolerance);
  const truth = labelVolume(truthImage, truthUri);
  const pred = labelVolume(predImage, predUri);
  const dims = truthImage.header.dims.slice(0, 3);
  const spacing = truthImage.header.pixdim.slice(0, 3);
  const metrics = schemeMetrics(pred, truth, dims, spacing, scheme, {
    pred: predUri,
    truth: truthUri,
  });
  return { metrics, dims, spacing };
}

/** Options of {@linkcode evaluateCases}. */
export interface EvaluateOptions extends Omit<PairOptions, "truthEnhancingLabel"> {
  /** Cases read at once. @default 4 */
  concurrency?: number;
  /** Called after each case, e.g. for progress. */
  onCase?: (result: CaseResult, done: number, total: number) => void;
  /** Only the cases whose id passes (e.g. one shard of a batch job); the others are not listed. */
  only?: (id: string) => boolean;
  /**
   * The `dataset.json` describing the references' labels, when it is not in (or above the
   * `labelsTr` of) the reference URI itself (see {@linkcode findReferenceDataset}).
   */
  datasetJson?: string;
}

/**
 * Evaluates every prediction under `predUri` against the reference of the same case under
 * `truthUri` (see {@linkcode findPredictions} and {@linkcode findTruth}). Cases are matched by id;
 * references without a prediction are listed in `missing` and predictions without a reference in
 * `extra`, never dropped silently (it is the caller's decision whether `missing` is an error).
 * With `only` (one shard), a shard without cases gives an empty evaluation, and a shard whose
 * predictions are all absent lists its cases as missing.
 * @throws {Error} when no reference is found at all, or no prediction at all without `only`, or
 *   any pair cannot be evaluated (a broken file, unknown labels, two grids): nothing is returned
 *   then
 */
export async function evaluateCases(
  predUri: string,
  truthUri: string,
  options: EvaluateOptions = {},
): Promise<Evaluation> {
  const only = options.only ?? (() => true);
  const dataset = await findReferenceDataset(truthUri, options.datasetJson);
  if (dataset) {
    const which = options.lesionWise ? "lesion-wise scores" : options.labels ? "--labels" : "";
    if (which) {
      throw new Error(
        `Cannot evaluate against ${dataset.datasetJson}: ${which} are for BraTS-named ` +
          `datasets only, and this one is an ${
            dataset.description.layout === "msd" ? "MSD" : "nnU-Net"
          } ` +
          `dataset (its regions: ${dataset.scheme.regions.map((r) => r.name).join(", ")})`,
      );
    }
  }
  const [allTruth, allPreds] = await Promise.all([
    dataset ? findDatasetTruth(dataset) : findTruth(truthUri),
    findPredictions(predUri, { plainNames: dataset !== undefined }),
  ]);
  if (allTruth.length === 0 && dataset) {
    throw new Error(
      `No reference segmentations under "${dataset.labelsUri}": ${await whyEmpty(
        dataset.labelsUri,
        `expected <case>${dataset.description.fileEnding ?? ".nii.gz"} label files directly in ` +
          `it (the references of ${dataset.datasetJson})`,
      )}`,
    );
  }
  if (allTruth.length === 0) {
    throw new Error(
      `No reference segmentations under "${truthUri}": ${await whyEmpty(
        truthUri,
        "expected BraTS seg files (<id>_seg.nii.gz or <id>-seg.nii.gz, in case folders or " +
          "flat) or <case>.nii.gz files",
      )}`,
    );
  }
  // Unfiltered, an empty folder is a wrong URI. Filtered (one shard of a batch job), a shard may
  // hold no case at all, and a shard whose predictions are all absent reports them as missing.
  if (allPreds.length === 0 && !options.only) {
    throw new Error(
      `No predictions under "${predUri}": ${await whyEmpty(
        predUri,
        "expected <case>.nii.gz or <case>_seg.nii.gz files directly in it",
      )}`,
    );
  }
  const truth = allTruth.filter((c) => only(c.id));
  const preds = allPreds.filter((c) => only(c.id));
  const predById = new Map(preds.map((p) => [p.id, p]));
  const truthIds = new Set(truth.map((t) => t.id));
  const pairs = truth.filter((t) => predById.has(t.id));
  const missing = truth.filter((t) => !predById.has(t.id)).map((t) => t.id);
  const extra = preds.filter((p) => !truthIds.has(p.id)).map((p) => p.id);
  let done = 0;
  if (dataset) {
    const cases = await mapConcurrent(pairs, Math.max(1, options.concurrency ?? 4), async (t) => {
      const { metrics } = await evaluateDatasetPair(
        predById.get(t.id)!.uri,
        t.uri,
        dataset.scheme,
        {
          affineTolerance: options.affineTolerance,
        },
      );
      const result = { case: t.id, ...metrics } as unknown as CaseResult;
      options.onCase?.(result, ++done, pairs.length);
      return result;
    });
    const regions = dataset.scheme.regions.map((r) => ({ name: r.name, labels: [...r.labels] }));
    return {
      cases,
      summary: summarize(cases, regions.map((r) => r.name)),
      missing,
      extra,
      dataset: {
        layout: dataset.description.layout as "nnunet" | "msd",
        ...(dataset.description.name !== undefined ? { name: dataset.description.name } : {}),
        datasetJson: dataset.datasetJson,
        regions,
      },
    };
  }
  const cases = await mapConcurrent(pairs, Math.max(1, options.concurrency ?? 4), async (t) => {
    const { metrics, lesionWise } = await evaluatePair(predById.get(t.id)!.uri, t.uri, {
      labels: options.labels,
      truthEnhancingLabel: t.enhancingLabel,
      affineTolerance: options.affineTolerance,
      lesionWise: options.lesionWise,
    });
    const result: CaseResult = { case: t.id, ...metrics, ...(lesionWise ? { lesionWise } : {}) };
    options.onCase?.(result, ++done, pairs.length);
    return result;
  });
  const evaluation: Evaluation = { cases, summary: summarize(cases), missing, extra };
  if (options.lesionWise) {
    evaluation.lesionWise = { ...options.lesionWise, summary: summarizeLesionWise(cases) };
  }
  return evaluation;
}

// ---------------------------------------------------------------------------------------------
// Summaries and files

/**
 * Mean, population standard deviation, median and quartiles (numpy.percentile's linear
 * interpolation) of some values; all null for none.
 */
export function describe(values: readonly number[]): Stats {
  if (values.length === 0) return { mean: null, std: null, median: null, q25: null, q75: null };
  const mean = values.reduce((s, v) => s + v, 0) / values.length;
  const variance = values.reduce((s, v) => s + (v - mean) ** 2, 0) / values.length;
  const at = (q: number) => percentile(values, q);
  return { mean, std: Math.sqrt(variance), median: at(50), q25: at(25), q75: at(75) };
}

/**
 * {@linkcode describe} of every metric of every region over the cases: ET, TC and WT, or the
 * regions named (a dataset's).
 */
export function summarize(
  cases: readonly CaseMetrics[],
  regions: readonly string[] = EVAL_REGIONS,
): Summary {
  const out = {} as Record<string, Record<MetricName, Stats>>;
  for (const region of regions) {
    out[region] = {} as Record<MetricName, Stats>;
    for (const metric of METRICS) {
      out[region][metric] = describe(
        cases.map((c) => (c as unknown as Record<string, RegionMetrics>)[region][metric]),
      );
    }
  }
  return out as Summary;
}

/** {@linkcode describe} of the lesion-wise values of every region over the cases that have them. */
export function summarizeLesionWise(cases: readonly CaseResult[]): LesionWiseSummary {
  const scored = cases.flatMap((c) => c.lesionWise ? [c.lesionWise] : []);
  const out = {} as LesionWiseSummary;
  for (const region of EVAL_REGIONS) {
    out[region] = {} as LesionWiseSummary[Region];
    for (const m of LESION_METRICS) out[region][m] = describe(scored.map((c) => c[region][m]));
  }
  return out;
}

/** The lesion-wise CSV columns, after CSV_COLUMNS when present: `ET_lesion_dice, ..., WT_lesion_fn`. */
export const LESION_CSV_COLUMNS: readonly string[] = EVAL_REGIONS.flatMap((r) =>
  LESION_METRICS.map((m) => `${r}_lesion_${m}`)
);

/** The CSV columns after `case`: `ET_dice, ET_hd95, ..., WT_specificity`. */
export const CSV_COLUMNS: readonly string[] = EVAL_REGIONS.flatMap((r) =>
  METRICS.map((m) => `${r}_${m}`)
);

/**
 * One row per case: `case` then {@linkcode CSV_COLUMNS} (then {@linkcode LESION_CSV_COLUMNS} when
 * the cases have lesion-wise scores), with a header row, full precision.
 */
export function evaluationCsv(
  cases: readonly CaseResult[],
  regions: readonly string[] = EVAL_REGIONS,
): string {
  const quote = (s: string) => /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  const lesions = cases.some((c) => c.lesionWise);
  const columns = regions === EVAL_REGIONS
    ? CSV_COLUMNS
    : regions.flatMap((r) => METRICS.map((m) => quote(`${r}_${m}`)));
  const rows = [["case", ...columns, ...(lesions ? LESION_CSV_COLUMNS : [])].join(",")];
  for (const c of cases) {
    const lw = lesions
      ? EVAL_REGIONS.flatMap((r) => LESION_METRICS.map((m) => String(c.lesionWise?.[r][m] ?? "")))
      : [];
    rows.push(
      [
        quote(c.case),
        ...regions.flatMap((r) => METRICS.map((m) => String(caseRegion(c, r)[m]))),
        ...lw,
      ]
        .join(","),
    );
  }
  return rows.join("\n") + "\n";
}

/**
 * The base name of the files {@linkcode writeEvaluation} writes: `metrics`, or for one shard of a
 * batch job `metrics-shard-<i>-of-<n>`, so shards that share an output folder never overwrite
 * each other's files (`metrics.json` is left to the merge: `evaluate` over the whole output).
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { metricsBaseName } from "./evaluation.ts";
 * assertEquals(metricsBaseName(), "metrics");
 * assertEquals(metricsBaseName({ index: 2, count: 8 }), "metrics-shard-2-of-8");
 * ```
 */
export function metricsBaseName(shard?: { index: number; count: number }): string {
  return shard ? `metrics-${shardName(shard)}` : "metrics";
}

/**
 * Writes `<name>.json` (the evaluation) and `<name>.csv` (per case) under `outUri`, each
 * atomically (a single PUT, or a temporary file renamed).
 * @param name the base name. @default "metrics" (see {@linkcode metricsBaseName})
 * @returns the URIs written, JSON first
 */
export async function writeEvaluation(
  outUri: string,
  evaluation: Evaluation,
  name = "metrics",
): Promise<[string, string]> {
  const json = joinUri(outUri, `${name}.json`);
  const csv = joinUri(outUri, `${name}.csv`);
  await putObject(csv, evaluationCsv(evaluation.cases, evaluationRegions(evaluation)));
  await putObject(json, JSON.stringify(evaluation, null, 2) + "\n");
  return [json, csv];
}
