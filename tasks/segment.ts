/**
 * `segment`: a trained network over new cases, writing BraTS label volumes on each input's grid.
 *
 * Per case: crop to the brain and z-score as in training, sliding windows over the brain blended
 * by a Gaussian importance map (optionally averaged over the 8 mirrorings), regions thresholded at
 * 0.5 and turned back into labels of the case's own convention (WT → 2, TC → 1, ET → 4 or 3, each
 * overwriting the last, as nnU-Net converts regions; pipeline/labels.ts, which validation during
 * training uses too), optionally small enhancing regions turned into necrosis, then put back on the
 * full grid with the input's header. The default window is the one the model was validated with
 * (so `evaluate` reproduces the validation Dice that chose `best/`), else its training crop. A case with a reference
 * segmentation is scored against it in memory (pipeline/evaluation.ts, as `evaluate` scores it).
 * Then, each in one PUT: `<out>/<case>.nii.gz`, the optional `<case>_probabilities.nii.gz`,
 * `<case>.metrics.json`, and last `<out>/<case>.json` recording the model, inputs, options and the
 * outputs it covers. A case whose record matches the current model, inputs and options and covers
 * every output now requested is skipped unless `--force`; the record is removed before a case is
 * rewritten, so a run killed mid-case never leaves a record over outputs it does not describe, and
 * an earlier run's probabilities or metrics that this run does not rewrite are removed with it.
 * @module
 */
import { type BackendName, selectBackend } from "../model/backend.ts";
import {
  autoWindow,
  type CropModel,
  cropMultiple,
  deserializeUNet,
  disposeUNet,
  inferenceFitEdges,
  inferenceModel,
  maxCropEdge,
  type UNet,
} from "../model/mod.ts";
import { caseKey } from "../pipeline/cases/mod.ts";
import {
  type Case,
  caseChannels,
  findCases,
  MODALITIES,
  readNiftiHeader,
} from "../pipeline/cases/mod.ts";
import {
  type DatasetDescription,
  isBraTS,
  labelScheme,
  parseDatasetDescription,
} from "../pipeline/cases/mod.ts";
import {
  MAX_OVERLAP,
  OVERLAP_RANGE,
  slidingWindowProbabilities,
} from "../pipeline/inference/mod.ts";
import { bratsEnhancingLabel, type Labels, probabilitiesToLabels } from "../pipeline/labels.ts";
import { keepLargestComponent } from "../pipeline/inference/mod.ts";
import { readModelBytes, resolveModel } from "../pipeline/training/mod.ts";
import { decodeNifti, encodeNifti } from "../pipeline/nifti/mod.ts";
import { readNifti } from "../pipeline/nifti/mod.ts";
import { preprocessCase } from "../pipeline/cases/mod.ts";
import {
  casesFromEvent,
  type IgnoredRecord,
  type WaitingCase,
} from "../pipeline/segmentation/mod.ts";
import { formatDuration, Progress } from "../pipeline/report/mod.ts";
import { inShard, type Shard, shardName } from "../pipeline/cases/mod.ts";
import { caseReport } from "../pipeline/report/mod.ts";
import {
  type CaseMetrics,
  type CaseResult,
  evaluateImages,
  evaluatePair,
} from "../pipeline/evaluation/mod.ts";
import { writeReport } from "../pipeline/report/mod.ts";
import {
  deleteObject,
  exists,
  getObject,
  joinUri,
  mapConcurrent,
  putObject,
  removeStaleWrites,
} from "../pipeline/storage/mod.ts";
import {
  backendFlag,
  type Command,
  intFlag,
  numberFlag,
  parseFlags,
  printJson,
  shardFlag,
  UsageError,
} from "./_cli.ts";
import { uncropBox } from "../pipeline/volume/mod.ts";
import { unetPredictor } from "../model/mod.ts";

/** Options of one case's segmentation. */
export interface CaseOptions {
  /** Window overlap in [0, {@linkcode MAX_OVERLAP}]. Default 0.5. */
  overlap?: number;
  /** Average the 8 mirrorings (test-time augmentation). */
  tta?: boolean;
  /** Windows per forward pass. Default 1. */
  batch?: number;
  /**
   * Window edge, or "auto" (the default): the model's validation window, else its training crop,
   * else 128, capped at the largest window whose inference fits `memoryBudget`
   * ({@linkcode autoWindow}).
   */
  window?: number | "auto";
  /** Bytes an inference window may take, for `window: "auto"`. Default half the free memory. */
  memoryBudget?: number;
  /** Redo a case even when its output matches the model and inputs. */
  force?: boolean;
  /** Also write `<case>_probabilities.nii.gz`: float32 WT, TC, ET as a 4th dimension. */
  saveProbabilities?: boolean;
  /** An enhancing region of fewer voxels than this becomes necrosis (nnU-Net's BraTS rule). */
  etThreshold?: number;
  /**
   * Keep only the largest 26-connected tumour component, removing every other one (nnU-Net's
   * post-processing; pays off where a model scatters small false positives far from one tumour).
   */
  largestComponent?: boolean;
  /** Called with windows done and in all. */
  onWindow?: (done: number, total: number) => void;
}

/** What happened to one case. */
export interface CaseOutcome {
  id: string;
  status: "done" | "skipped";
  output: string;
  /** `<out>/<case>.metrics.json`, for a case with a reference segmentation. */
  metrics?: string;
  /** `<out>/<case>_probabilities.nii.gz`, with `saveProbabilities`. */
  probabilities?: string;
  seconds: number;
  /** Voxels per label in the output. */
  labels?: Record<string, number>;
}

/** The record written beside each output, deciding whether a later run may skip the case. */
interface OutputRecord {
  model_sha256: string;
  inputs: string;
  /** The input files, so that `serve` can tell a case id arriving from another folder. */
  images?: Case["images"];
  options: {
    overlap: number;
    tta: boolean;
    window: number;
    et_threshold: number;
    largest_component?: true;
  };
  output: string;
  /** Every file written with this record (labels, probabilities, metrics). */
  outputs: string[];
  written: string;
}

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

async function sha256(bytes: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A loaded network that segments cases. */
export class Segmenter {
  readonly net: UNet;
  readonly modelUri: string;
  readonly modelSha256: string;
  /** The crop the model was trained on, when its metadata says. */
  readonly trainedCrop?: number;
  /** The window training validated the model with, when its metadata says. */
  readonly validatedWindow?: number;
  readonly backend: string;
  /**
   * The dataset the model was trained on (channels, labels, regions), from its metadata; a model
   * without one was trained on a BraTS naming (four modalities, WT/TC/ET).
   */
  readonly dataset?: DatasetDescription;

  private constructor(
    net: UNet,
    uri: string,
    sha: string,
    sizes: { crop?: number; valWindow?: number },
    backend: string,
    dataset?: DatasetDescription,
  ) {
    this.net = net;
    this.modelUri = uri;
    this.modelSha256 = sha;
    this.trainedCrop = sizes.crop;
    this.validatedWindow = sizes.valWindow;
    this.backend = backend;
    if (dataset) this.dataset = dataset;
  }

  /**
   * The case with the channels the model takes, in its order: by name from a BraTS case's
   * modalities (FLAIR as flair or t2f, T1 as t1 or t1n, …), by index from any other layout's.
   * @throws {RangeError} naming the case and the channel it lacks (or the count it has too many)
   */
  forModel(c: Case): Case {
    const wanted = this.dataset?.channels ??
      (this.net.config.inChannels === 4 ? [...MODALITIES] : []);
    const n = this.net.config.inChannels;
    const names = wanted.length === n ? wanted : Array.from({ length: n }, (_, k) => String(k));
    const trained = this.dataset ? (this.dataset.name ?? this.dataset.layout) : "BraTS";
    if (!c.channels) {
      // A BraTS case: its modalities by name. A BraTS model takes them as they are.
      if (!this.dataset || isBraTS(this.dataset)) {
        if (n === 4) return c;
      }
      const channels = names.map((name, k) => {
        const m = bratsModality(name);
        if (!m) {
          throw new RangeError(
            `case "${c.id}": the model (trained on ${trained}) takes channel ${k} "${name}", ` +
              `which is none of a BraTS case's modalities (${MODALITIES.join(", ")})`,
          );
        }
        return { name, uri: c.images[m] };
      });
      return { ...c, channels };
    }
    const have = c.channels;
    if (have.length < n) {
      const ending = this.dataset?.fileEnding ?? ".nii.gz";
      throw new RangeError(
        `case "${c.id}": missing channel ${
          names.slice(have.length).map((name, j) => {
            const k = have.length + j;
            const file = have[0].volume === undefined
              ? `: ${c.id}_${String(k).padStart(4, "0")}${ending}`
              : ` in ${have[0].uri}`;
            return `${String(k).padStart(4, "0")} (${name})${file}`;
          }).join(", ")
        }; the model (trained on ${trained}) takes ${n} (${names.join(", ")})`,
      );
    }
    if (have.length > n) {
      throw new RangeError(
        `case "${c.id}" has ${have.length} channels (${
          have.map((h) => h.name).join(", ")
        }); the model (trained on ${trained}) takes ${n} (${names.join(", ")})`,
      );
    }
    return c;
  }

  /**
   * The labels a case's output is written in: a BraTS case's own convention for a BraTS model,
   * else the model's dataset's values (its regions written in `regions_class_order`).
   */
  labelsFor(c: Case): Labels {
    if (!this.dataset || isBraTS(this.dataset)) {
      return c.enhancingLabel ?? (this.dataset?.layout === "brats2023" ? 3 : 4);
    }
    return labelScheme(this.dataset, this.modelUri);
  }

  /**
   * Loads the model once: a training run's folder (its `best/`), a folder holding
   * `model.safetensors` (`best/`, a checkpoint) or the file (see {@linkcode resolveModel}).
   */
  static async load(
    modelUri: string,
    options: { backend?: BackendName; quiet?: boolean } = {},
  ): Promise<Segmenter> {
    const log = options.quiet ? () => {} : (m: string) => console.error(`segment: ${m}`);
    // Before the backend: a wrong --model is reported without waiting for one to load.
    const resolved = await resolveModel(modelUri);
    if (resolved.note) log(resolved.note);
    const choice = await selectBackend(options.backend ?? "cpu", log);
    const uri = resolved.uri;
    // Damaged weights (their data digest disagrees) are refused by name, never run.
    const bytes = await readModelBytes(uri);
    const { net, metadata } = deserializeUNet(bytes, uri, false);
    let dataset: DatasetDescription | undefined;
    try {
      dataset = metadata.dataset === undefined
        ? undefined
        : parseDatasetDescription(metadata.dataset, uri);
    } catch (e) {
      disposeUNet(net);
      throw e;
    }
    if (dataset && (dataset.channels.length !== net.config.inChannels)) {
      disposeUNet(net);
      throw new RangeError(
        `${uri}: its dataset has ${dataset.channels.length} channels, its network takes ${net.config.inChannels}`,
      );
    }
    const size = (key: string) => {
      const v = Number(metadata[key]);
      return Number.isInteger(v) && v > 0 ? v : undefined;
    };
    return new Segmenter(
      net,
      uri,
      await sha256(bytes),
      { crop: size("train_crop"), valWindow: size("val_window") },
      choice.name,
      dataset,
    );
  }

  private inference?: CropModel;

  /**
   * The window edge of `--window`: a number as given; "auto" by {@linkcode autoWindow}, from the
   * inference memory measured once (two small windows) against the budget (default: half the
   * memory the system has available).
   */
  async resolveWindow(window: number | "auto", budget?: number): Promise<number> {
    if (window !== "auto") return window;
    const preferred = this.validatedWindow ?? this.trainedCrop ?? 128;
    const m = cropMultiple(this.net.config);
    this.inference ??= await inferenceModel(this.net.config, inferenceFitEdges(this.net.config));
    const bytes = budget ?? Deno.systemMemoryInfo().available / 2;
    return autoWindow({ preferred, maxEdge: maxCropEdge(this.inference, bytes, m), multiple: m });
  }

  /** The output URI of a case. */
  static outputUri(out: string, id: string): string {
    return joinUri(out, `${id}.nii.gz`);
  }

  /**
   * Segments one case into `<out>/<id>.nii.gz` (atomically), with its probabilities when asked and
   * its metrics when it has a reference segmentation, or skips it when the record beside it names
   * the same model, inputs and options and covers every output asked for.
   * @throws {Error} naming the file and the problem when the case cannot be read, scored or
   *   written; nothing is written for a case that cannot be read or scored
   */
  async segmentCase(input: Case, out: string, options: CaseOptions = {}): Promise<CaseOutcome> {
    const t0 = performance.now();
    // The model's channels, checked before anything is read or written.
    const c = this.forModel(input);
    const labelsOut = this.labelsFor(c);
    // A reference is scored as `evaluate` scores it: BraTS regions of BraTS labels.
    const scored = c.seg !== undefined && bratsEnhancingLabel(labelsOut) !== undefined;
    const output = Segmenter.outputUri(out, c.id);
    const recordUri = joinUri(out, `${c.id}.json`);
    const probabilitiesUri = options.saveProbabilities
      ? joinUri(out, `${c.id}_probabilities.nii.gz`)
      : undefined;
    const metricsUri = scored ? joinUri(out, `${c.id}.metrics.json`) : undefined;
    const wanted = [
      output,
      ...(probabilitiesUri ? [probabilitiesUri] : []),
      ...(metricsUri ? [metricsUri] : []),
    ];
    const paths = {
      ...(metricsUri ? { metrics: metricsUri } : {}),
      ...(probabilitiesUri ? { probabilities: probabilitiesUri } : {}),
    };
    const opts = {
      overlap: options.overlap ?? 0.5,
      tta: options.tta ?? false,
      window: await this.resolveWindow(options.window ?? "auto", options.memoryBudget),
      et_threshold: options.etThreshold ?? 0,
      // Only when asked, so records of runs without it keep their form (and their skip key).
      ...(options.largestComponent ? { largest_component: true as const } : {}),
    };
    const inputs = await caseKey(c);
    const hadRecord = await exists(recordUri);
    if (!options.force && hadRecord) {
      let r: OutputRecord | undefined;
      try {
        r = JSON.parse(new TextDecoder().decode(await getObject(recordUri))) as OutputRecord;
      } catch {
        // an unreadable record: redo the case
      }
      const covered = Array.isArray(r?.outputs) && wanted.every((u) => r!.outputs.includes(u));
      if (
        r && covered && r.model_sha256 === this.modelSha256 && r.inputs === inputs &&
        JSON.stringify(r.options) === JSON.stringify(opts) &&
        (await Promise.all(wanted.map(exists))).every(Boolean)
      ) {
        return {
          id: c.id,
          status: "skipped",
          output,
          ...paths,
          seconds: (performance.now() - t0) / 1000,
        };
      }
    }
    const header = await readNiftiHeader(caseChannels(c)[0].uri);
    // The reference is read once, below, for the metrics: inference needs only the images.
    const { seg: _reference, ...images } = c;
    const p = await preprocessCase(images);
    const probs = await slidingWindowProbabilities(unetPredictor(this.net), p.image, p.box.size, {
      window: Math.min(opts.window, 1024),
      overlap: opts.overlap,
      batch: options.batch ?? 1,
      mirror: opts.tta,
      onWindow: options.onWindow,
    });
    const boxLabels = probabilitiesToLabels(probs, labelsOut, opts.et_threshold);
    if (opts.largest_component) keepLargestComponent(boxLabels, p.box.size);
    const labels = uncropBox(boxLabels, p.box, p.dims, 1);
    const counts: Record<string, number> = {};
    for (const l of labels) if (l) counts[l] = (counts[l] ?? 0) + 1;
    const grid = header.dims.slice(0, 3);
    const description = `revunet ${this.modelSha256.slice(0, 12)}`;
    const labelBytes = encodeNifti(labels, "uint8", header, {
      dims: grid,
      description,
      name: output,
    });
    // Scored before anything is written, from the bytes about to be written, as `evaluate` would
    // score the file: a reference that cannot be read fails the case with nothing written.
    let metrics: CaseMetricsRecord | undefined;
    if (c.seg && metricsUri) {
      const truth = await readNifti(c.seg);
      const scored = evaluateImages(decodeNifti(labelBytes, output), output, truth, c.seg, {
        truthEnhancingLabel: c.enhancingLabel,
      });
      metrics = { case: c.id, ...scored.metrics, prediction: output, reference: c.seg };
    }
    const k = this.net.config.outChannels;
    const probabilityBytes = probabilitiesUri
      ? encodeNifti(channelMajor(uncropBox(probs, p.box, p.dims, k), k), "float32", header, {
        dims: [...grid, k],
        description,
        name: probabilitiesUri,
      })
      : undefined;

    // Labels first, then what depends on them, the record last: whatever a kill interrupts, a
    // record is only ever beside the outputs it lists, and no file is there without the labels.
    // Files of an earlier run that this one does not rewrite would describe other labels: gone.
    const every = [
      output,
      joinUri(out, `${c.id}_probabilities.nii.gz`),
      joinUri(out, `${c.id}.metrics.json`),
      recordUri,
    ];
    if (hadRecord) await deleteObject(recordUri);
    await removeStaleWrites(every);
    for (const uri of every.slice(1, 3)) if (!wanted.includes(uri)) await deleteObject(uri);
    await putObject(output, labelBytes);
    if (probabilitiesUri) await putObject(probabilitiesUri, probabilityBytes!);
    if (metricsUri) await putObject(metricsUri, JSON.stringify(metrics, null, 2) + "\n");
    const record: OutputRecord = {
      model_sha256: this.modelSha256,
      inputs,
      images: c.images,
      options: opts,
      output,
      outputs: wanted,
      written: new Date().toISOString(),
    };
    await putObject(recordUri, new TextEncoder().encode(JSON.stringify(record, null, 2) + "\n"));
    return {
      id: c.id,
      status: "done",
      output,
      ...paths,
      seconds: (performance.now() - t0) / 1000,
      labels: counts,
    };
  }

  /** Frees the network. */
  dispose(): void {
    disposeUNet(this.net);
  }
}

/**
 * Writes `<out>/report/index.html` for segmented cases: FLAIR slices with the prediction (and the
 * reference, for labelled cases) overlaid, and the metrics of labelled cases.
 * @returns the report's URI and the metrics of the labelled cases
 */
export async function segmentationReport(
  cases: Case[],
  outcomes: CaseOutcome[],
  out: string,
  extra: { title?: string; notes?: string[]; curvesSvg?: string } = {},
): Promise<{ uri: string; metrics: CaseResult[] }> {
  const byId = new Map(cases.map((c) => [c.id, c]));
  const metrics: CaseResult[] = [];
  const entries = await mapConcurrent(outcomes, 2, async (o) => {
    const c = byId.get(o.id)!;
    let m: CaseMetrics | undefined;
    // Scored where segment scored it (BraTS labels): o.metrics is its metrics file.
    if (c.seg && o.metrics) {
      m = (await evaluatePair(o.output, c.seg, { truthEnhancingLabel: c.enhancingLabel })).metrics;
      metrics.push({ case: c.id, ...m });
    }
    return await caseReport(c, o.output, m);
  });
  const uri = await writeReport(out, {
    title: extra.title ?? "Segmentation",
    cases: entries,
    ...(extra.notes ? { notes: extra.notes } : {}),
    ...(extra.curvesSvg ? { curvesSvg: extra.curvesSvg } : {}),
  });
  metrics.sort((a, b) => (a.case < b.case ? -1 : 1));
  return { uri, metrics };
}

/** The BraTS modality a channel name stands for (FLAIR, T2-FLAIR, t2f → flair; T1c, T1Gd → t1ce; …). */
function bratsModality(name: string): typeof MODALITIES[number] | undefined {
  const n = name.toLowerCase().replace(/[^a-z0-9]/g, "");
  if (["flair", "t2f", "t2flair"].includes(n)) return "flair";
  if (["t1", "t1n", "t1w", "t1native"].includes(n)) return "t1";
  if (["t1ce", "t1c", "t1gd", "t1contrast", "t1post"].includes(n)) return "t1ce";
  if (["t2", "t2w"].includes(n)) return "t2";
  return undefined;
}

/** Reads an event notification from a file, or from standard input for "-". */
async function readEvent(source: string): Promise<string> {
  if (source === "-") return await new Response(Deno.stdin.readable).text();
  try {
    return await Deno.readTextFile(source);
  } catch (e) {
    throw new Error(`--event ${source}: cannot read it (${(e as Error).message})`);
  }
}

/**
 * Segments the cases one S3 event notification completes (see pipeline/events.ts): the
 * function-style counterpart of `serve`. Waiting and ignored records are logged.
 */
export async function segmentEvent(
  event: unknown,
  options: SegmentOptions,
): Promise<SegmentResult & { waiting: WaitingCase[]; ignored: IgnoredRecord[] }> {
  const found = await casesFromEvent(event, {
    out: options.out,
    ...(options.input ? { input: options.input } : {}),
  });
  const log = (m: string) => options.quiet || console.error(`segment: ${m}`);
  for (const w of found.waiting) log(`waiting: ${w.id}: ${w.reason}`);
  for (const i of found.ignored) log(`ignored: ${i.key}: ${i.reason}`);
  const cases = found.cases.map((c) => c.case);
  const result = cases.length > 0 ? await segmentCases(cases, [], options) : {
    backend: "",
    model: (await resolveModel(options.model)).uri,
    cases: [],
    failed: [],
    problems: [],
    seconds: 0,
  };
  return { ...result, waiting: found.waiting, ignored: found.ignored };
}

/** Options of {@linkcode segment}. */
export interface SegmentOptions extends CaseOptions {
  model: string;
  input: string;
  out: string;
  backend?: BackendName;
  quiet?: boolean;
  /** Only these cases (after discovery); cases that discovery rejected are still recorded. */
  only?: (c: Case) => boolean;
  /**
   * Only the cases of this shard of a batch job, including those discovery rejected: each is
   * recorded by the one shard it belongs to.
   */
  shard?: Shard;
  /** Also write an HTML report under `out` (see {@linkcode segmentationReport}). */
  report?: boolean;
}

/** Outcome of a run: per case, and the failures with their reasons. */
export interface SegmentResult {
  backend: string;
  model: string;
  cases: CaseOutcome[];
  /** Every case without an output: rejected by discovery or failed while segmented. */
  failed: { id: string; error: string }[];
  /** The cases discovery rejected (a missing modality, two files, grids that disagree). */
  problems: { id: string; error: string }[];
  seconds: number;
  /** The report's URI, with `report`. */
  report?: string;
}

/**
 * Segments every case under `input` (one case's folder or a dataset). A case that fails, or that
 * discovery rejects (a missing modality, duplicate files, modalities on different grids), is
 * recorded as `<out>/<id>.error.json` and listed in `failed`; the others go on.
 */
export async function segment(options: SegmentOptions): Promise<SegmentResult> {
  // A missing folder, or one without case files, is an error saying which and what is expected.
  const listing = await findCases(options.input, { required: true });
  const mine = (id: string) => inShard(id, options.shard);
  let cases = listing.cases.filter((c) => mine(c.id));
  if (options.only) cases = cases.filter(options.only);
  return await segmentCases(cases, listing.problems.filter((p) => mine(p.id)), options);
}

/** Writes `<out>/<id>.error.json`; a failure to write it is added to the error it returns. */
async function recordError(out: string, id: string, error: string): Promise<string> {
  const uri = joinUri(out, `${id}.error.json`);
  try {
    await putObject(
      uri,
      JSON.stringify({ case: id, error, time: new Date().toISOString() }, null, 2) + "\n",
    );
    return error;
  } catch (e) {
    return `${error}; the error record ${uri} could not be written: ${(e as Error).message}`;
  }
}

/**
 * Segments the given cases (see {@linkcode segment}); `problems` are cases discovery rejected,
 * recorded as failed without loading anything.
 */
export async function segmentCases(
  cases: Case[],
  problems: { id: string; error: string }[],
  options: SegmentOptions,
): Promise<SegmentResult> {
  const t0 = performance.now();
  const progress = new Progress({ quiet: options.quiet });
  const failed: { id: string; error: string }[] = [];
  for (const p of problems) {
    progress.log(`segment: ${p.id} cannot be segmented: ${p.error}`);
    failed.push({ id: p.id, error: await recordError(options.out, p.id, p.error) });
  }
  const segmenter = await Segmenter.load(options.model, options);
  const outcomes: CaseOutcome[] = [];
  try {
    for (const [i, c] of cases.entries()) {
      const label = `case ${i + 1}/${cases.length} ${c.id}`;
      const c0 = performance.now();
      try {
        const r = await segmenter.segmentCase(c, options.out, {
          ...options,
          onWindow: (done, total) => {
            const per = (performance.now() - c0) / 1000 / done;
            progress.update(label, done, total, `window ${done}/${total}`, per * (total - done));
          },
        });
        outcomes.push(r);
        // A success supersedes the record of an earlier run's failure.
        const stale = joinUri(options.out, `${c.id}.error.json`);
        await deleteObject(stale).catch((e) =>
          progress.log(`segment: ${c.id}: cannot remove ${stale}: ${(e as Error).message}`)
        );
        progress.log(
          `segment: ${c.id} ${
            r.status === "skipped" ? "already done, skipped" : "→ " + r.output
          } (${formatDuration(r.seconds)})`,
        );
      } catch (e) {
        const error = (e as Error).message;
        progress.log(`segment: ${c.id} failed: ${error}`);
        failed.push({ id: c.id, error: await recordError(options.out, c.id, error) });
      }
    }
  } finally {
    segmenter.dispose();
  }
  let report: string | undefined;
  if (options.report && outcomes.length > 0) {
    // Shards sharing one output folder each get their own report.
    const where = options.shard ? joinUri(options.out, shardName(options.shard)) : options.out;
    report = (await segmentationReport(cases, outcomes, where, {
      notes: [`model: ${segmenter.modelUri}`, `input: ${options.input}`],
    })).uri;
    progress.log(`segment: report ${report}`);
  }
  return {
    ...(report ? { report } : {}),
    backend: segmenter.backend,
    model: segmenter.modelUri,
    cases: outcomes,
    failed,
    problems,
    seconds: (performance.now() - t0) / 1000,
  };
}

export const segmentCommand: Command = {
  name: "segment",
  summary: "Segment cases with a trained model: BraTS label NIfTIs on the inputs' grids",
  help: `Usage: deno task segment --model <uri> --input <uri> --out <uri> [options]

Segments every BraTS case under --input (one case's folder or a dataset; local or s3://) with the
model at --model: a training run's folder (its best/ weights are used, as the log says), its best/
or a checkpoint folder, or the model.safetensors file itself. Writes <out>/<case>.nii.gz (uint8
labels in the case's own convention, on its exact grid and affine). A case with a reference
segmentation (its seg file) is also scored against it, as \`evaluate\` scores it:
<out>/<case>.metrics.json holds Dice, HD95 (mm), sensitivity and specificity of ET, TC and WT.
Last comes <out>/<case>.json, recording the model, inputs, options and outputs; each file is
written whole or not at all. Cases already segmented with the same model, inputs and options, with
every output now asked for, are skipped unless --force. A case that fails, or that cannot be used
(a missing modality, two files for one, modalities on different grids), is recorded in
<out>/<case>.error.json, the others go on, and the exit status is 1; a later success removes the
error record.

With --event <file> (or - for standard input), the cases come from one S3 event notification (AWS
S3, SNS-wrapped or MinIO webhook JSON, as \`serve\` accepts): each case whose four modalities are
present is segmented; objects under --out and files that are not case inputs are ignored; cases
still missing a modality are listed as waiting. A malformed event is an error (exit 1), nothing
written.

Batch jobs: --shard <i>/<n> segments only the cases of shard i of n (0-based; a case's shard is a
hash of its id, so it never moves when cases are added). Without the flag, AWS Batch array jobs
(AWS_BATCH_JOB_ARRAY_INDEX, AWS_BATCH_JOB_ARRAY_SIZE) and Kubernetes Indexed Jobs
(JOB_COMPLETION_INDEX with REVUNET_SHARD_COUNT) set it; --shard auto/<n> takes the index from them.
Finished cases are skipped, so a retried shard completes the work; evaluate over the whole --out
merges the shards (evaluate --shard writes metrics-shard-<i>-of-<n>.json instead of metrics.json).

Options:
  --model <uri>             trained model: run folder, best/, checkpoint folder or file (required)
  --input <uri>             a case folder or a dataset (required unless --event)
  --event <file>|-          segment the cases an S3 event notification completes
  --shard <i>/<n>|auto/<n>  only the cases of one shard (see above)
  --out <uri>               output folder or s3:// prefix (required)
  --overlap <x>             window overlap in ${OVERLAP_RANGE} (default 0.5)
  --window <n>|auto         window edge (default auto: the window training validated the model
                            with, else its training crop, else 128, capped at the largest window
                            whose inference fits half the free memory)
  --tta                     average the 8 mirrorings (slower, slightly better)
  --batch <n>               windows per forward pass (default 1)
  --save-probabilities      also write <case>_probabilities.nii.gz (float32, WT/TC/ET as dim 4)
  --et-threshold <n>        an enhancing region under N voxels becomes necrosis (default 0: off)
  --largest-component       keep only the largest connected tumour component (nnU-Net's
                            post-processing; removes scattered false positives, off by default)
  --force                   redo cases that are already done
  --report                  write <out>/report/index.html: FLAIR slices with the prediction (and the
                            reference and metrics for labelled cases); with a shard,
                            <out>/shard-<i>-of-<n>/report/index.html
  --backend <backend>       auto|tensorflow|webgpu|wasm|cpu (default cpu)
  --quiet                   no progress output
  --json                    print a JSON summary

Example:
  deno task segment --model out/run1/best --input out/synth --out out/seg`,
  async run(args) {
    const { values } = parseFlags("segment", args, {
      model: { type: "string" },
      input: { type: "string" },
      event: { type: "string" },
      shard: { type: "string" },
      out: { type: "string" },
      overlap: { type: "string" },
      window: { type: "string" },
      tta: { type: "boolean" },
      batch: { type: "string" },
      "save-probabilities": { type: "boolean" },
      "et-threshold": { type: "string" },
      "largest-component": { type: "boolean" },
      force: { type: "boolean" },
      report: { type: "boolean" },
      backend: { type: "string" },
      quiet: { type: "boolean" },
      json: { type: "boolean" },
    });
    for (const f of ["model", "out"] as const) {
      if (!values[f]) throw new UsageError(`--${f} is required`);
    }
    if (!values.input && values.event === undefined) {
      throw new UsageError("--input is required (or --event)");
    }
    const shard = shardFlag(values.shard);
    const overlap = numberFlag("overlap", values.overlap, 0.5, 0, MAX_OVERLAP);
    const window = values.window === undefined || values.window === "auto"
      ? undefined
      : intFlag("window", values.window, 128, 8, 1024);
    const common = {
      model: values.model!,
      input: values.input ?? "",
      out: values.out!,
      overlap,
      ...(window ? { window } : {}),
      tta: values.tta ?? false,
      batch: intFlag("batch", values.batch, 1, 1, 64),
      saveProbabilities: values["save-probabilities"] ?? false,
      etThreshold: intFlag("et-threshold", values["et-threshold"], 0, 0),
      largestComponent: values["largest-component"] === true,
      force: values.force ?? false,
      report: values.report ?? false,
      backend: backendFlag(values.backend),
      quiet: values.quiet ?? false,
    };
    const result = values.event !== undefined
      ? await segmentEvent(await readEvent(values.event), common)
      : await segment({ ...common, ...(shard ? { shard } : {}) });
    if (shard && !values.quiet) {
      console.error(`segment: shard ${shard.index}/${shard.count}: ${result.cases.length} cases`);
    }
    if (values.json) printJson(result);
    const done = result.cases.filter((c) => c.status === "done").length;
    if (!values.quiet) {
      console.error(
        `segment: ${done} segmented, ${
          result.cases.length - done
        } skipped, ${result.failed.length} failed in ${
          formatDuration(result.seconds)
        } → ${values.out}`,
      );
    }
    if (result.failed.length > 0) {
      throw new Error(
        `${result.failed.length} case(s) failed: ${
          result.failed.map((f) => `${f.id} (${f.error})`).join("; ")
        }`,
      );
    }
  },
};
