/**
 * Saving and loading networks (and optimizer state) at any storage URI: the one loader of model
 * files, {@linkcode loadModel}, which training (resume) and segmentation both use, returning the
 * network, its metadata typed (model_metadata.ts) and the file's SHA-256.
 *
 * A model location is either a `.safetensors` object or a folder/prefix holding `model.safetensors`
 * (and, for training checkpoints, `optimizer.safetensors`). The model file alone is enough to run
 * segmentation: it carries the configuration it was built with and, from training, the description
 * of its dataset (metadata `dataset`: channels, labels, regions; see pipeline/cases/datasets.ts).
 *
 * Every file written here carries the SHA-256 of its tensor data in its metadata
 * (`data_sha256`, model_file.ts), checked whenever it is loaded, so that damaged weights (flipped
 * bytes, NaNs written over them) are refused by name instead of run; files written before this
 * check (or by other tools) have none and load unchecked. {@linkcode saveModel} also returns each
 * file's whole-file SHA-256, which training checkpoints record (checkpoint.ts).
 * @module
 */
import {
  deserializeOptimizer,
  deserializeUNet,
  disposeUNet,
  type Optimizer,
  serializeOptimizerAsync,
  serializeUNetAsync,
  type UNet,
} from "../../model/mod.ts";
import { exists, joinUri, parseUri, putObject } from "../storage/mod.ts";
import {
  BEST_FOLDER,
  type FileDigest,
  fileDigest,
  MODEL_FILE,
  modelFileUri,
  OPTIMIZER_FILE,
  readModelBytes,
  sha256Hex,
  withDataDigest,
} from "./model_file.ts";
import { type ModelMetadata, modelMetadata } from "./model_metadata.ts";

export * from "./model_file.ts";
export * from "./model_metadata.ts";

/** A model location turned into the weights file it stands for: see {@linkcode resolveModel}. */
export interface ResolvedModel {
  /** The `.safetensors` object to load. */
  uri: string;
  /** What the location was. */
  kind: "file" | "folder" | "run";
  /** For a training run: why these weights were chosen, for the log. */
  note?: string;
}

/**
 * Finds the weights a model location names, as nnU-Net's predict takes a trained-model folder:
 * a training run's folder (its `best/` weights are used), a `best/` or checkpoint folder (or any
 * folder holding `model.safetensors`), or the weights file itself; local or `s3://`.
 * @throws {Error} naming the location and listing what would have been accepted when it is none
 *   of these
 */
export async function resolveModel(location: string): Promise<ResolvedModel> {
  const asFolder = location.endsWith(".safetensors") ? [] : [
    joinUri(location, MODEL_FILE),
    joinUri(location, BEST_FOLDER, MODEL_FILE),
  ];
  // A folder-shaped location ("…/", a bare bucket) is no file; HEAD on it is not even asked.
  const p = parseUri(location);
  const folderShaped = location.endsWith("/") || (p.kind !== "local" && p.key === "");
  if (!folderShaped && await exists(location)) return { uri: location, kind: "file" };
  if (asFolder.length > 0 && await exists(asFolder[0])) return { uri: asFolder[0], kind: "folder" };
  if (asFolder.length > 0 && await exists(asFolder[1])) {
    return {
      uri: asFolder[1],
      kind: "run",
      note: `${location} is a training run: using its ${BEST_FOLDER}/ weights (${asFolder[1]})`,
    };
  }
  const unfinished = asFolder.length > 0 && await exists(joinUri(location, "latest.json"));
  throw new Error(
    `No model at "${location}"${
      unfinished
        ? ` (a training run with no ${BEST_FOLDER}/ yet: give one of its checkpoint folders, under ${
          joinUri(location, "checkpoints")
        }/)`
        : ""
    }: expected a training run folder (holding ${BEST_FOLDER}/${MODEL_FILE}), a ${BEST_FOLDER}/ ` +
      `or checkpoint folder (holding ${MODEL_FILE}), or a .safetensors weights file; ` +
      `looked for ${[location, ...asFolder].join(", ")}`,
  );
}

/**
 * Writes the network (and optionally the optimizer) to `location`, each file atomically and with
 * the SHA-256 of its tensor data in its metadata.
 * @param extra string metadata stored in the model file
 * @returns each file written, by name ({@linkcode MODEL_FILE}, {@linkcode OPTIMIZER_FILE}), with
 *   its whole-file SHA-256 and size
 */
export async function saveModel(
  location: string,
  net: UNet,
  optimizer?: Optimizer,
  extra: Record<string, string> = {},
): Promise<Record<string, FileDigest>> {
  if (optimizer && location.endsWith(".safetensors")) {
    throw new RangeError(`Cannot save optimizer state beside "${location}": give a folder URI`);
  }
  const model = withDataDigest(await serializeUNetAsync(net, extra));
  await putObject(modelFileUri(location), model);
  const written: Record<string, FileDigest> = { [MODEL_FILE]: fileDigest(model) };
  if (optimizer) {
    const state = withDataDigest(await serializeOptimizerAsync(optimizer));
    await putObject(joinUri(location, OPTIMIZER_FILE), state);
    written[OPTIMIZER_FILE] = fileDigest(state);
  }
  return written;
}

/** A loaded model file: see {@linkcode loadModel}. */
export interface LoadedModel {
  net: UNet;
  /** The `.safetensors` object it was read from. */
  uri: string;
  /** The file's metadata as stored (strings). */
  metadata: Record<string, string>;
  /** The same, typed. */
  info: ModelMetadata;
  /** Hex SHA-256 of the whole file (what `segment`'s output records name). */
  sha256: string;
}

/**
 * Loads the network at `location` (a `.safetensors` object or a folder holding
 * {@linkcode MODEL_FILE}), with its metadata typed and the file's SHA-256; errors name the object.
 * @param expected the file's recorded digest (a checkpoint's), checked when given
 * @param options `trainable: false` for inference (constant weights) @default true
 * @throws {Error} naming the file: missing, damaged, not a model, or a dataset description whose
 *   channels disagree with the network's
 */
export async function loadModel(
  location: string,
  expected?: FileDigest,
  options: { trainable?: boolean } = {},
): Promise<LoadedModel> {
  const uri = modelFileUri(location);
  const bytes = await readModelBytes(uri, expected);
  const { net, metadata } = deserializeUNet(bytes, uri, options.trainable ?? true);
  let info: ModelMetadata;
  try {
    info = modelMetadata(metadata, uri);
    const channels = info.dataset?.channels.length;
    if (channels !== undefined && channels !== net.config.inChannels) {
      throw new RangeError(
        `${uri}: its dataset has ${channels} channels, its network takes ${net.config.inChannels}`,
      );
    }
  } catch (e) {
    disposeUNet(net);
    throw e;
  }
  return { net, uri, metadata, info, sha256: sha256Hex(bytes) };
}

/**
 * Loads the optimizer state saved beside a model, or undefined when there is none.
 * @param expected the file's recorded digest (a checkpoint's), checked when given
 */
export async function loadOptimizer(
  location: string,
  expected?: FileDigest,
): Promise<Optimizer | undefined> {
  const uri = joinUri(location, OPTIMIZER_FILE);
  if (!(await exists(uri))) return undefined;
  return deserializeOptimizer(await readModelBytes(uri, expected), uri);
}
