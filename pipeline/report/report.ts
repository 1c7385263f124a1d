/**
 * HTML reports of segmentations: per case, PNG slices through the tumor (axial, coronal, sagittal)
 * of FLAIR with the reference and the predicted labels overlaid in the BraTS colours, a metrics
 * table with its mean ± std summary, and the training curves when there are any.
 *
 * Two layers, pure to I/O: {@linkcode renderCaseSlices} turns volumes into PNG bytes, and
 * {@linkcode writeReport} writes one self-contained `report/index.html` (images embedded as
 * `data:` URIs, no external resources) under a local folder or an `s3://` prefix.
 *
 * Orientation: slices are shown in the radiological convention, read from the affine (voxel to
 * RAS+ world, as NIfTI defines it; the identity when none is given): the patient's right on the
 * image's left; axial with anterior up; coronal and sagittal with superior up, sagittal with
 * anterior on the left. Pixels keep the voxels' aspect ratio (the spacing), and small volumes are
 * enlarged with nearest-neighbour sampling.
 *
 * @example
 * ```ts
 * import { assertEquals, assertStringIncludes } from "@std/assert";
 * import { renderCurves } from "./plot.ts";
 * import { renderCaseSlices, writeReport } from "./report.ts";
 * // A 16³ FLAIR with a cube of edema (2) around enhancing tumour (4), predicted exactly.
 * const dims: [number, number, number] = [16, 16, 16];
 * const flair = new Float32Array(16 ** 3).fill(100);
 * const truth = new Uint8Array(16 ** 3);
 * for (let z = 4; z < 12; z++) {
 *   for (let y = 4; y < 12; y++) {
 *     for (let x = 4; x < 12; x++) truth[x + 16 * (y + 16 * z)] = x > 6 && x < 9 ? 4 : 2;
 *   }
 * }
 * const slices = renderCaseSlices({ flair, dims, truth, prediction: truth, enhancingLabel: 4 });
 * assertEquals(slices.centre, "truth");
 * const out = await Deno.makeTempDir(); // or s3://bucket/prefix
 * const dice = { dice: 1, hd95: 0, sensitivity: 1, specificity: 1 };
 * const uri = await writeReport(out, {
 *   title: "Validation",
 *   cases: [{ id: "case-1", slices, metrics: { WT: dice, TC: dice, ET: dice } }],
 *   curvesSvg: renderCurves([{
 *     title: "loss",
 *     xLabel: "step",
 *     yLabel: "loss",
 *     series: [{ name: "train", color: "#1f77b4", points: [[0, 1], [1, 0.5]] }],
 *   }]),
 * });
 * assertEquals(uri, `${out}/report/index.html`);
 * assertStringIncludes(await Deno.readTextFile(uri), "case-1");
 * await Deno.remove(out, { recursive: true });
 * ```
 * @module
 */
import { encode as encodePng } from "fast-png";
import { REGIONS } from "../evaluation/mod.ts";
import { joinUri, mapConcurrent, putObject } from "../storage/mod.ts";
import { type Dims, maskBox } from "../volume/mod.ts";
import { INVALID_LABEL, REGION_BITS, regionTable } from "../labels.ts";

/** Voxels along x, y, z. */

/** One of the three nested BraTS regions. */
export type ReportRegion = "WT" | "TC" | "ET";

/** What {@linkcode renderCaseSlices} draws. */
export interface CaseSlicesInput {
  /** FLAIR intensities on the grid, x fastest, then y, then z. */
  flair: ArrayLike<number>;
  /** Voxels along x, y, z. */
  dims: Dims;
  /** Voxel size in mm along x, y, z. @default the affine's column lengths, else [1, 1, 1] */
  spacing?: Dims;
  /**
   * Voxel to world (RAS+) affine, 4×4 or 3×4, e.g. a NIfTI header's `affine`; only the axis
   * directions are used, to orient the views. @default the identity (voxel axes are R, A, S)
   */
  affine?: number[][];
  /** Reference BraTS labels on the same grid (0, 1 necrosis, 2 edema, 3 or 4 enhancing). */
  truth?: ArrayLike<number>;
  /** Predicted BraTS labels on the same grid. */
  prediction?: ArrayLike<number>;
  /**
   * Label of enhancing tumor; the other of 3 and 4 is then an error.
   * @default either 3 or 4
   */
  enhancingLabel?: 3 | 4;
  /**
   * Pixels along the volume's longest physical side at least (small volumes are enlarged).
   * @default 200
   */
  minSize?: number;
  /** Pixels along the volume's longest physical side at most. @default 640 */
  maxSize?: number;
}

/** A panel of each view: FLAIR alone, or with the reference or the predicted labels. */
export type SlicePanel = "flair" | "truth" | "prediction";

/** PNG images of one case, from {@linkcode renderCaseSlices}. */
export interface CaseSlices {
  /** PNG bytes of each view; each image is its panels side by side. */
  axial: Uint8Array;
  coronal: Uint8Array;
  sagittal: Uint8Array;
  /** The voxel (x, y, z) the three slices pass through. */
  slice: Dims;
  /** The panels of every image, left to right. */
  panels: SlicePanel[];
  /** How the slices were chosen. */
  centre: "truth" | "prediction" | "brain";
}

/** The BraTS overlay colours (RGB), as in the challenge's figures. */
export const LABEL_COLOURS = {
  necrosis: [255, 0, 0],
  edema: [0, 255, 0],
  enhancing: [255, 255, 0],
} as const;

/** Opacity of the overlay's fill; region borders are drawn opaque. */
const OVERLAY_ALPHA = 0.45;
/** Pixels between panels. */
const PANEL_GAP = 4;
/** Colour of the gap between panels (grey, so it never reads as a label). */
const GAP_GREY = 48;

/** Overlay colour index of each label: 0 none, 1 necrosis, 2 edema, 3 enhancing. */
function labelClasses(
  labels: ArrayLike<number>,
  n: number,
  enhancing: 3 | 4 | undefined,
  what: string,
): Uint8Array {
  if (labels.length !== n) {
    throw new RangeError(
      `Cannot render slices: ${what} has ${labels.length} voxels, expected ${n}`,
    );
  }
  // Region bits (pipeline/labels.ts) → class; with no convention given, 3 and 4 both enhance.
  const table = regionTable(enhancing ?? 4);
  if (enhancing === undefined) table[3] = table[4];
  const classOf = new Uint8Array(8);
  classOf[REGION_BITS.WT | REGION_BITS.TC] = 1;
  classOf[REGION_BITS.WT] = 2;
  classOf[REGION_BITS.WT | REGION_BITS.TC | REGION_BITS.ET] = 3;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const l = labels[i];
    if (l === 0) continue;
    const r = table[l] ?? INVALID_LABEL;
    if (!(r & INVALID_LABEL)) out[i] = classOf[r];
    else {
      const expected = enhancing === undefined ? "3 or 4" : String(enhancing);
      throw new RangeError(
        `Cannot render slices: ${what} voxel ${i} has label ${l}; expected 0, 1, 2 or ${expected}`,
      );
    }
  }
  return out;
}

/**
 * For each world axis (R, A, S), the voxel axis that runs along it and whether the voxel index
 * grows towards R, A or S (+1) or away from it (-1). Greedy on the largest direction cosines, so
 * oblique affines map to the nearest axes and the result is always a permutation.
 */
function orientation(affine: number[][] | undefined): { axis: Dims; sign: Dims } {
  const axis: Dims = [0, 1, 2];
  const sign: Dims = [1, 1, 1];
  if (!affine) return { axis, sign };
  const cos = [0, 1, 2].map((w) =>
    [0, 1, 2].map((v) => {
      const norm = Math.hypot(affine[0][v], affine[1][v], affine[2][v]);
      return norm > 0 && Number.isFinite(norm) ? affine[w][v] / norm : 0;
    })
  );
  const freeW = new Set([0, 1, 2]);
  const freeV = new Set([0, 1, 2]);
  while (freeW.size) {
    let best: [number, number, number] = [-1, -1, -1];
    for (const w of freeW) {
      for (const v of freeV) {
        if (Math.abs(cos[w][v]) > best[2]) best = [w, v, Math.abs(cos[w][v])];
      }
    }
    const [w, v] = best;
    axis[w] = v;
    sign[w] = cos[w][v] < 0 ? -1 : 1;
    freeW.delete(w);
    freeV.delete(v);
  }
  return { axis, sign };
}

/** The 0.5 and 99.5 percentiles of the finite nonzero values (at most ~1M of them, strided). */
function flairWindow(flair: ArrayLike<number>): [number, number] {
  let count = 0;
  for (let i = 0; i < flair.length; i++) if (flair[i] !== 0 && Number.isFinite(flair[i])) count++;
  if (count === 0) return [0, 1];
  const stride = Math.max(1, Math.floor(count / 1_000_000));
  const sample = new Float64Array(Math.ceil(count / stride));
  let k = 0;
  let seen = 0;
  for (let i = 0; i < flair.length; i++) {
    const v = flair[i];
    if (v === 0 || !Number.isFinite(v)) continue;
    if (seen++ % stride === 0 && k < sample.length) sample[k++] = v;
  }
  const sorted = sample.subarray(0, k).sort();
  const at = (q: number) => sorted[Math.min(k - 1, Math.max(0, Math.round(q * (k - 1))))];
  const lo = at(0.005);
  const hi = at(0.995);
  return hi > lo ? [lo, hi] : [lo - 0.5, lo + 0.5];
}

/**
 * The voxel the slices pass through: along each axis the plane with the most voxels of `mask`
 * (ties to the one nearest the mask's centroid), so every slice cuts the tumor where it is
 * largest; undefined when the mask is empty.
 */
function busiestPlanes(mask: Uint8Array, dims: Dims): Dims | undefined {
  const [nx, ny, nz] = dims;
  const counts = dims.map((d) => new Float64Array(d));
  const sums = [0, 0, 0];
  let total = 0;
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        if (!mask[i]) continue;
        counts[0][x]++;
        counts[1][y]++;
        counts[2][z]++;
        sums[0] += x;
        sums[1] += y;
        sums[2] += z;
        total++;
      }
    }
  }
  if (total === 0) return undefined;
  return counts.map((c, a) => {
    const centroid = sums[a] / total;
    let best = 0;
    for (let j = 1; j < c.length; j++) {
      if (
        c[j] > c[best] ||
        (c[j] === c[best] && Math.abs(j - centroid) < Math.abs(best - centroid))
      ) best = j;
    }
    return best;
  }) as Dims;
}

/** The centre of the bounding box of nonzero FLAIR voxels, else of the grid. */
function brainCentre(flair: ArrayLike<number>, dims: Dims): Dims {
  // NaN and ±Infinity are no brain: the box is that of the finite nonzero voxels.
  const brain = new Uint8Array(flair.length);
  for (let i = 0; i < brain.length; i++) {
    brain[i] = flair[i] !== 0 && Number.isFinite(flair[i]) ? 1 : 0;
  }
  const box = maskBox(brain, dims);
  if (!box) return dims.map((d) => Math.floor(d / 2)) as Dims;
  return [0, 1, 2].map((a) => Math.floor((2 * box.start[a] + box.size[a] - 1) / 2)) as Dims;
}

/** A view: the world axes (0 R, 1 A, 2 S) across and down the image, and the one it cuts. */
interface View {
  across: number;
  down: number;
  cut: number;
}
// Radiological convention: across runs from the patient's right (or anterior) to left (posterior),
// down from anterior (or superior) to posterior (inferior): both run against the world axis.
const VIEWS: Record<"axial" | "coronal" | "sagittal", View> = {
  axial: { across: 0, down: 1, cut: 2 },
  coronal: { across: 0, down: 2, cut: 1 },
  sagittal: { across: 1, down: 2, cut: 0 },
};

/** One view's panels side by side as RGB bytes. */
function renderView(
  view: View,
  grey: (voxel: number) => number,
  overlays: (Uint8Array | undefined)[],
  dims: Dims,
  spacing: Dims,
  orient: { axis: Dims; sign: Dims },
  slice: Dims,
  pxPerMm: number,
): { width: number; height: number; rgb: Uint8Array } {
  const ac = orient.axis[view.across];
  const ad = orient.axis[view.down];
  const af = orient.axis[view.cut];
  const nAcross = dims[ac];
  const nDown = dims[ad];
  const w = Math.max(1, Math.round(nAcross * spacing[ac] * pxPerMm));
  const h = Math.max(1, Math.round(nDown * spacing[ad] * pxPerMm));
  const strides = [1, dims[0], dims[0] * dims[1]];
  // Voxel index of each column and row: against the world axis, so flip where the voxel axis
  // already runs along it.
  const pick = (t: number, size: number, n: number, s: number) => {
    const v = Math.min(n - 1, Math.floor(((t + 0.5) / size) * n));
    return s > 0 ? n - 1 - v : v;
  };
  const colOffset = Array.from(
    { length: w },
    (_, c) => pick(c, w, nAcross, orient.sign[view.across]) * strides[ac],
  );
  const rowOffset = Array.from(
    { length: h },
    (_, r) => pick(r, h, nDown, orient.sign[view.down]) * strides[ad],
  );
  const base = slice[af] * strides[af];
  const panels = overlays.length;
  const width = panels * w + (panels - 1) * PANEL_GAP;
  const rgb = new Uint8Array(width * h * 3).fill(GAP_GREY);
  const cls = new Uint8Array(w * h);
  overlays.forEach((overlay, p) => {
    for (let r = 0; r < h; r++) {
      for (let c = 0; c < w; c++) {
        cls[r * w + c] = overlay ? overlay[base + rowOffset[r] + colOffset[c]] : 0;
      }
    }
    for (let r = 0; r < h; r++) {
      for (let c = 0; c < w; c++) {
        const g = grey(base + rowOffset[r] + colOffset[c]);
        const o = ((r * width) + p * (w + PANEL_GAP) + c) * 3;
        const k = cls[r * w + c];
        if (k === 0) {
          rgb[o] = rgb[o + 1] = rgb[o + 2] = g;
          continue;
        }
        const colour = k === 1
          ? LABEL_COLOURS.necrosis
          : k === 2
          ? LABEL_COLOURS.edema
          : LABEL_COLOURS.enhancing;
        // Opaque on the border of a labelled area, so small regions stay visible.
        const border = (r > 0 && cls[(r - 1) * w + c] !== k) ||
          (r < h - 1 && cls[(r + 1) * w + c] !== k) ||
          (c > 0 && cls[r * w + c - 1] !== k) || (c < w - 1 && cls[r * w + c + 1] !== k);
        const a = border ? 1 : OVERLAY_ALPHA;
        for (let ch = 0; ch < 3; ch++) rgb[o + ch] = Math.round((1 - a) * g + a * colour[ch]);
      }
    }
  });
  return { width, height: h, rgb };
}

/**
 * Renders a case as three PNG images (axial, coronal, sagittal) through the tumor: FLAIR windowed
 * to the 0.5–99.5 percentiles of its nonzero voxels, in grey, with one panel per label volume
 * given (reference, then prediction) overlaid semi-transparently in the BraTS colours
 * ({@linkcode LABEL_COLOURS}); FLAIR alone when neither is given. The slices cross at the plane with
 * the most tumor along each axis, of the reference, else of the prediction, else at the brain's
 * centre. Oriented as the module doc says.
 *
 * @throws {RangeError} when the volumes do not match `dims` or a label is not a BraTS label
 */
export function renderCaseSlices(input: CaseSlicesInput): CaseSlices {
  const { flair, dims, truth, prediction, enhancingLabel } = input;
  if (dims.length !== 3 || !dims.every((d) => Number.isInteger(d) && d > 0)) {
    throw new RangeError(`Cannot render slices: dims must be 3 positive integers, found [${dims}]`);
  }
  const n = dims[0] * dims[1] * dims[2];
  if (flair.length !== n) {
    throw new RangeError(
      `Cannot render slices: FLAIR has ${flair.length} voxels, dims [${dims}] need ${n}`,
    );
  }
  const spacing = input.spacing ??
    (input.affine
      ? [0, 1, 2].map((v) =>
        Math.hypot(input.affine![0][v], input.affine![1][v], input.affine![2][v]) || 1
      ) as Dims
      : [1, 1, 1]);
  if (!spacing.every((s) => s > 0 && Number.isFinite(s))) {
    throw new RangeError(`Cannot render slices: spacing must be positive, found [${spacing}]`);
  }
  const truthCls = truth ? labelClasses(truth, n, enhancingLabel, "the reference") : undefined;
  const predCls = prediction
    ? labelClasses(prediction, n, enhancingLabel, "the prediction")
    : undefined;

  const [lo, hi] = flairWindow(flair);
  const grey = (i: number) => {
    const v = flair[i];
    return Number.isFinite(v)
      ? Math.round(255 * Math.min(1, Math.max(0, (v - lo) / (hi - lo))))
      : 0;
  };

  let centre: CaseSlices["centre"] = "brain";
  let slice = truthCls ? busiestPlanes(truthCls, dims) : undefined;
  if (slice) centre = "truth";
  else if (predCls && (slice = busiestPlanes(predCls, dims))) centre = "prediction";
  slice ??= brainCentre(flair, dims);

  const extent = [0, 1, 2].map((a) => dims[a] * spacing[a]);
  const longest = Math.max(...extent);
  const minSize = input.minSize ?? 200;
  const maxSize = input.maxSize ?? 640;
  // At least a pixel per voxel along the finest axis and minSize pixels along the longest side,
  // never more than maxSize.
  const pxPerMm = Math.min(
    maxSize / longest,
    Math.max(minSize / longest, 1 / Math.min(...spacing)),
  );

  const panels: SlicePanel[] = [];
  const overlays: (Uint8Array | undefined)[] = [];
  if (truthCls) panels.push("truth"), overlays.push(truthCls);
  if (predCls) panels.push("prediction"), overlays.push(predCls);
  if (overlays.length === 0) panels.push("flair"), overlays.push(undefined);

  const orient = orientation(input.affine);
  const png = (view: View) => {
    const { width, height, rgb } = renderView(
      view,
      grey,
      overlays,
      dims,
      spacing,
      orient,
      slice!,
      pxPerMm,
    );
    return encodePng({ width, height, data: rgb, channels: 3, depth: 8 }, { zlib: { level: 9 } });
  };
  return {
    axial: png(VIEWS.axial),
    coronal: png(VIEWS.coronal),
    sagittal: png(VIEWS.sagittal),
    slice,
    panels,
    centre,
  };
}

// -----------------------------------------------------------------------------------------------
// The HTML report

/** Metric values of one case per region, e.g. `{ WT: { dice: 0.9, hd95: 3.2 }, ... }`. */
export type CaseMetrics = Partial<Record<ReportRegion, Record<string, number>>>;

/** Mean, standard deviation and count of one metric over cases. */
export interface MetricSummary {
  mean: number;
  std: number;
  n: number;
}

/** One summary per region and metric. */
export type MetricsSummary = Partial<Record<ReportRegion, Record<string, MetricSummary>>>;

/** One case of a report. */
export interface ReportCase {
  /** The case id, shown as given (escaped). */
  id: string;
  slices?: CaseSlices;
  metrics?: CaseMetrics;
}

/** What {@linkcode writeReport} writes. */
export interface Report {
  title: string;
  cases: ReportCase[];
  /** The summary table. @default {@linkcode summarizeMetrics} of the cases */
  summary?: MetricsSummary;
  /** An SVG document (e.g. from plot.ts renderCurves), inlined as it is: trusted markup. */
  curvesSvg?: string;
  /** Lines of text shown under the title (model, checkpoint, data...). */
  notes?: string[];
}

/** Options of {@linkcode writeReport}. */
export interface WriteReportOptions {
  /**
   * Embed the PNGs in index.html as `data:` URIs (one self-contained file), or write them beside it
   * as `<case>_{axial,coronal,sagittal}.png`.
   * @default "embed"
   */
  images?: "embed" | "files";
}

/**
 * Mean and standard deviation (population, as numpy.std) of each metric of each region over the
 * cases that have a finite value of it.
 */
export function summarizeMetrics(cases: readonly ReportCase[]): MetricsSummary {
  const out: MetricsSummary = {};
  for (const region of REGIONS) {
    for (const name of metricNames(cases)) {
      const values = cases.map((c) => c.metrics?.[region]?.[name])
        .filter((v): v is number => typeof v === "number" && Number.isFinite(v));
      if (values.length === 0) continue;
      const mean = values.reduce((s, v) => s + v, 0) / values.length;
      const variance = values.reduce((s, v) => s + (v - mean) ** 2, 0) / values.length;
      (out[region] ??= {})[name] = { mean, std: Math.sqrt(variance), n: values.length };
    }
  }
  return out;
}

/** Metric names in order of first appearance. */
function metricNames(cases: readonly { metrics?: CaseMetrics }[]): string[] {
  const names = new Set<string>();
  for (const c of cases) {
    for (const region of REGIONS) {
      for (const k of Object.keys(c.metrics?.[region] ?? {})) names.add(k);
    }
  }
  return [...names];
}

/** Escapes text for HTML content and quoted attributes. */
export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

function formatNumber(v: number | undefined): string {
  if (v === undefined || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
  return Math.abs(v) >= 10 ? v.toFixed(2) : v.toFixed(3);
}

/** A file-name-safe stem of a case id, unique among `used`. */
function fileStem(id: string, used: Set<string>): string {
  const base = id.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+|[._]+$/g, "").slice(0, 100) ||
    "case";
  let stem = base;
  for (let k = 2; used.has(stem); k++) stem = `${base}_${k}`;
  used.add(stem);
  return stem;
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** Width and height from a PNG's IHDR chunk. */
function pngSize(png: Uint8Array): [number, number] {
  const v = new DataView(png.buffer, png.byteOffset, png.byteLength);
  return [v.getUint32(16), v.getUint32(20)];
}

const STYLE = `
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.id, th.id { text-align: left; font-family: monospace; }
.legend span { display: inline-block; width: 1em; height: 1em; vertical-align: middle;
  margin: 0 0.3em 0 1em; border: 1px solid #666; }
figure { display: inline-block; margin: 0 1em 1em 0; }
figcaption { font-size: 0.9em; color: #555; }
img { image-rendering: pixelated; background: #000; }
.note { color: #555; margin: 0.2em 0; }
`;

function legend(): string {
  const swatch = (rgb: readonly number[], text: string) =>
    `<span style="background: rgb(${rgb.join(",")})"></span>${text}`;
  return `<p class="legend">Labels:${swatch(LABEL_COLOURS.edema, "edema (label 2)")}${
    swatch(LABEL_COLOURS.necrosis, "necrotic core (label 1)")
  }${swatch(LABEL_COLOURS.enhancing, "enhancing tumor (label 4, or 3 from BraTS 2023)")}</p>
<p class="note">Regions: WT = labels 1, 2 and enhancing; TC = 1 and enhancing; ET = enhancing.
Images: FLAIR windowed to its 0.5–99.5 percentiles; labels filled at ${
    Math.round(OVERLAY_ALPHA * 100)
  }% opacity with opaque borders.
Radiological convention: the patient's right on the image's left; axial with anterior up, coronal and
sagittal with superior up, sagittal with anterior on the left.</p>`;
}

function summaryTable(summary: MetricsSummary): string {
  const names: string[] = [];
  for (const region of REGIONS) {
    for (const k of Object.keys(summary[region] ?? {})) if (!names.includes(k)) names.push(k);
  }
  if (names.length === 0) return "";
  const rows = names.map((name) => {
    const cells = REGIONS.map((region) => {
      const s = summary[region]?.[name];
      return `<td>${s ? `${formatNumber(s.mean)} ± ${formatNumber(s.std)}` : "–"}</td>`;
    });
    const n = Math.max(...REGIONS.map((r) => summary[r]?.[name]?.n ?? 0));
    return `<tr><th class="id">${escapeHtml(name)}</th>${cells.join("")}<td>${n}</td></tr>`;
  });
  return `<h2>Summary (mean ± std over cases)</h2>
<table><tr><th class="id">metric</th>${
    REGIONS.map((r) => `<th>${r}</th>`).join("")
  }<th>cases</th></tr>
${rows.join("\n")}</table>`;
}

function casesTable(cases: readonly ReportCase[]): string {
  const names = metricNames(cases);
  if (names.length === 0) return "";
  const head1 = names.map((k) => `<th colspan="${REGIONS.length}">${escapeHtml(k)}</th>`).join("");
  const head2 = names.map(() => REGIONS.map((r) => `<th>${r}</th>`).join("")).join("");
  const rows = cases.map((c, i) => {
    const cells = names.flatMap((k) =>
      REGIONS.map((r) => `<td>${formatNumber(c.metrics?.[r]?.[k])}</td>`)
    );
    const id = c.slices ? `<a href="#case-${i}">${escapeHtml(c.id)}</a>` : escapeHtml(c.id);
    return `<tr><td class="id">${id}</td>${cells.join("")}</tr>`;
  });
  return `<h2>Metrics per case</h2>
<table><tr><th class="id" rowspan="2">case</th>${head1}</tr><tr>${head2}</tr>
${rows.join("\n")}</table>`;
}

const PANEL_NAMES: Record<SlicePanel, string> = {
  flair: "FLAIR",
  truth: "reference",
  prediction: "prediction",
};

function caseSection(c: ReportCase, i: number, src: (view: string, png: Uint8Array) => string) {
  const s = c.slices!;
  const figures = (["axial", "coronal", "sagittal"] as const).map((view) => {
    const [w, h] = pngSize(s[view]);
    return `<figure><img src="${
      src(view, s[view])
    }" width="${w}" height="${h}" alt="${view} slice of ${escapeHtml(c.id)}"><figcaption>${view}: ${
      s.panels.map((p) => PANEL_NAMES[p]).join(" | ")
    }</figcaption></figure>`;
  });
  const why = s.centre === "brain"
    ? "the brain's centre (no tumor labelled)"
    : `the planes with the most ${s.centre === "truth" ? "reference" : "predicted"} tumor`;
  return `<section id="case-${i}"><h3>${escapeHtml(c.id)}</h3>
<p class="note">Slices through voxel (x, y, z) = (${s.slice.join(", ")}): ${why}.</p>
${figures.join("\n")}</section>`;
}

/**
 * Writes an HTML report to `<outUri>/report/index.html` (a local folder or an `s3://` prefix):
 * title and notes, the label legend, the summary table (mean ± std per region and metric), the
 * training curves, the metrics of every case, and each case's slices. Every string from the data
 * is escaped; nothing is loaded from elsewhere. Image files (with `images: "files"`) are written
 * first and index.html last, each atomically.
 *
 * @returns the URI of index.html
 * @throws {TypeError} when `curvesSvg` is not an SVG document or holds a script
 */
export async function writeReport(
  outUri: string,
  report: Report,
  options: WriteReportOptions = {},
): Promise<string> {
  const { images = "embed" } = options;
  const svg = report.curvesSvg?.replace(/^\s*<\?xml[^>]*\?>\s*/, "");
  if (svg !== undefined && (!/^\s*<svg[\s>]/.test(svg) || /<script/i.test(svg))) {
    throw new TypeError(
      `Cannot write report "${outUri}": curvesSvg must be an <svg> document without scripts`,
    );
  }
  const dir = joinUri(outUri, "report");
  const files: [string, Uint8Array][] = [];
  const used = new Set<string>(["index"]);
  const sections = report.cases.map((c, i) => {
    if (!c.slices) return "";
    const stem = images === "files" ? fileStem(c.id, used) : "";
    return caseSection(c, i, (view, png) => {
      if (images === "embed") return `data:image/png;base64,${base64(png)}`;
      const name = `${stem}_${view}.png`;
      files.push([name, png]);
      return encodeURIComponent(name);
    });
  }).filter((s) => s !== "");

  const html = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(report.title)}</title>
<style>${STYLE}</style>
</head>
<body>
<h1>${escapeHtml(report.title)}</h1>
${(report.notes ?? []).map((s) => `<p class="note">${escapeHtml(s)}</p>`).join("\n")}
<p class="note">${report.cases.length} case${report.cases.length === 1 ? "" : "s"}.</p>
${legend()}
${summaryTable(report.summary ?? summarizeMetrics(report.cases))}
${svg ? `<h2>Training curves</h2>\n<div class="curves">${svg}</div>` : ""}
${casesTable(report.cases)}
${sections.length ? `<h2>Slices</h2>\n${sections.join("\n")}` : ""}
</body>
</html>
`;
  await mapConcurrent(files, 8, ([name, png]) => putObject(joinUri(dir, name), png));
  const index = joinUri(dir, "index.html");
  await putObject(index, html);
  return index;
}
