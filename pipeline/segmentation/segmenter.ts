/**
 * The `Segmenter`: a trained network loaded once, segmenting cases into BraTS label volumes on
 * each input's grid.
 *
 * Per case: crop to the brain and z-score as in training, sliding windows over the brain blended
 * by a Gaussian importance map (optionally averaged over the 8 mirrorings), regions thresholded at
 * 0.5 and turned back into labels of the case's own convention (pipeline/labels.ts, which
 * validation during training uses too), optionally small enhancing regions turned into necrosis,
 * then put back on the full grid with the input's header. The default window is the one the model
 * was validated with (so `evaluate` reproduces the validation Dice that chose `best/`), else its
 * training crop. A case with a reference segmentation is scored against it in memory, as
 * `evaluate` scores it. Its files are written as pipeline/segmentation/outputs.ts describes.
 * @module
 */
import {
  autoWindow,
  type BackendName,
  type CropModel,
  cropMultiple,
  disposeUNet,
  inferenceFitEdges,
  inferenceModel,
  maxCropEdge,
  selectBackend,
  type UNet,
} from "../../model/mod.ts";
import { type Case, caseKey, type DatasetDescription } from "../cases/mod.ts";
import type { Overlap } from "../inference/mod.ts";
import { bratsEnhancingLabel, type Labels } from "../labels.ts";
import { exists } from "../storage/mod.ts";
import { type LoadedModel, loadModel, resolveModel } from "../training/mod.ts";
import { encodeCase } from "./encode_case.ts";
import { caseForModel, type ModelInputs, outputLabels } from "./channels.ts";
import { datasetRegions, scoreDatasetCase } from "./dataset_metrics.ts";
import { outputUri, planOutputs, type RecordOptions, upToDate, writeOutputs } from "./outputs.ts";

/** Options of one case's segmentation. */
export interface CaseOptions {
  /**
   * Window overlap in [0, {@linkcode MAX_OVERLAP}], or "auto": 0.5, or 0.25 on a brain box where
   * 0.5 would cover more than {@linkcode AUTO_OVERLAP_VOXELS} voxels ({@linkcode autoOverlap}).
   * @default "auto"
   */
  overlap?: Overlap;
  /** Average the 8 mirrorings (test-time augmentation). @default false */
  tta?: boolean;
  /** Windows per forward pass. @default 1 */
  batch?: number;
  /**
   * Window edge, or "auto": the model's validation window, else its training crop, else 128,
   * capped at the largest window whose inference fits `memoryBudget` ({@linkcode autoWindow}).
   * @default "auto"
   */
  window?: number | "auto";
  /** Bytes an inference window may take, for `window: "auto"`. @default half the free memory */
  memoryBudget?: number;
  /** Redo a case even when its output matches the model and inputs. @default false */
  force?: boolean;
  /** Also write `<case>_probabilities.nii.gz`: float32 WT, TC, ET as a 4th dimension. */
  saveProbabilities?: boolean;
  /** An enhancing region of fewer voxels than this becomes necrosis (nnU-Net's BraTS rule). @default 0 */
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
  /**
   * For a case of an nnU-Net or MSD dataset scored in its own regions: their names, the keys of
   * its metrics (absent for ET, TC and WT).
   */
  regions?: string[];
  /** `<out>/<case>_probabilities.nii.gz`, with `saveProbabilities`. */
  probabilities?: string;
  seconds: number;
  /** Voxels per label in the output. */
  labels?: Record<string, number>;
  /** The window overlap used, for a case segmented now (`"auto"` resolved). */
  overlap?: number;
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

  private constructor(model: LoadedModel, backend: string) {
    this.net = model.net;
    this.modelUri = model.uri;
    this.modelSha256 = model.sha256;
    this.trainedCrop = model.info.trainCrop;
    this.validatedWindow = model.info.valWindow;
    this.backend = backend;
    if (model.info.dataset) this.dataset = model.info.dataset;
  }

  get #inputs(): ModelInputs {
    return {
      inChannels: this.net.config.inChannels,
      ...(this.dataset ? { dataset: this.dataset } : {}),
      uri: this.modelUri,
    };
  }

  /**
   * The case with the channels the model takes, in its order (see {@linkcode caseForModel}).
   * @throws {RangeError} naming the case and the channel it lacks (or the count it has too many)
   */
  forModel(c: Case): Case {
    return caseForModel(c, this.#inputs);
  }

  /** The labels a case's output is written in (see {@linkcode outputLabels}). */
  labelsFor(c: Case): Labels {
    return outputLabels(c, this.#inputs);
  }

  /**
   * Loads the model once: a training run's folder (its `best/`), a folder holding
   * `model.safetensors` (`best/`, a checkpoint) or the file (see {@linkcode resolveModel}).
   * @param options.log receives what is worth saying (the weights a run folder stands for, the
   *   backend chosen)
   */
  static async load(
    modelUri: string,
    options: { backend?: BackendName; log?: (message: string) => void } = {},
  ): Promise<Segmenter> {
    const log = options.log ?? (() => {});
    // Before the backend: a wrong --model is reported without waiting for one to load.
    const resolved = await resolveModel(modelUri);
    if (resolved.note) log(resolved.note);
    const choice = await selectBackend(options.backend ?? "cpu", log);
    // Damaged weights (their data digest disagrees) are refused by name, never run.
    return new Segmenter(
      await loadModel(resolved.uri, undefined, { trainable: false }),
      choice.name,
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
    return outputUri(out, id);
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
    // A reference is scored as `evaluate` scores it: BraTS regions of BraTS labels, an nnU-Net or
    // MSD dataset's own regions of its labels (when the model writes them).
    const regions = datasetRegions(c, labelsOut);
    const scored = regions !== undefined ||
      (c.seg !== undefined && bratsEnhancingLabel(labelsOut) !== undefined);
    const plan = planOutputs(out, c.id, {
      probabilities: options.saveProbabilities ?? false,
      metrics: scored,
    });
    const paths = {
      ...(plan.metrics ? { metrics: plan.metrics } : {}),
      ...(regions ? { regions: regions.regions.map((r) => r.name) } : {}),
      ...(plan.probabilities ? { probabilities: plan.probabilities } : {}),
    };
    const opts: RecordOptions = {
      overlap: options.overlap ?? "auto",
      tta: options.tta ?? false,
      window: await this.resolveWindow(options.window ?? "auto", options.memoryBudget),
      et_threshold: options.etThreshold ?? 0,
      // Only when asked, so records of runs without it keep their form (and their skip key).
      ...(options.largestComponent ? { largest_component: true as const } : {}),
    };
    const inputs = await caseKey(c);
    const hadRecord = await exists(plan.record);
    const key = { model_sha256: this.modelSha256, inputs, options: opts };
    if (!options.force && hadRecord && await upToDate(plan, key)) {
      const seconds = (performance.now() - t0) / 1000;
      return { id: c.id, status: "skipped", output: plan.output, ...paths, seconds };
    }
    const files = await encodeCase(this.net, this.modelSha256, c, {
      // encodeCase scores BraTS labels; a dataset's regions are scored below, before any write.
      plan: regions ? { ...plan, metrics: undefined } : plan,
      labelsOut,
      opts,
      options,
    });
    if (regions) files.metrics = await scoreDatasetCase(c, files.labels, plan.output, regions);
    const record = {
      model_sha256: this.modelSha256,
      inputs,
      images: c.images,
      options: opts,
      overlap_used: files.overlap,
      output: plan.output,
      outputs: plan.wanted,
    };
    await writeOutputs(plan, { ...files, record }, hadRecord);
    const seconds = (performance.now() - t0) / 1000;
    return {
      id: c.id,
      status: "done",
      output: plan.output,
      ...paths,
      seconds,
      labels: files.counts,
      overlap: files.overlap,
    };
  }

  /** Frees the network. */
  dispose(): void {
    disposeUNet(this.net);
  }
}
