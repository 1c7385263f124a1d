/**
 * Saving and loading networks (and optimizer state) at any storage URI.
 *
 * A model location is either a `.safetensors` object or a folder/prefix holding `model.safetensors`
 * (and, for training checkpoints, `optimizer.safetensors`). The model file alone is enough to run
 * segmentation: it carries the configuration it was built with and, from training, the description
 * of its dataset (metadata `dataset`: channels, labels, regions; see pipeline/datasets.ts).
 * @module
 */
import {
  deserializeOptimizer,
  deserializeUNet,
  type Optimizer,
  serializeOptimizerAsync,
  serializeUNetAsync,
  type UNet,
} from "../model/mod.ts";
import { type DatasetDescription, parseDatasetDescription } from "./datasets.ts";
import { exists, getObject, getObjectRange, joinUri, parseUri, putObject } from "./storage.ts";

/** File name of the weights inside a model folder. */
export const MODEL_FILE = "model.safetensors";
/** File name of the optimizer state inside a checkpoint folder. */
export const OPTIMIZER_FILE = "optimizer.safetensors";

/** Folder of a training run holding the weights that validated best (see pipeline/checkpoint.ts). */
export const BEST_FOLDER = "best";

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

/** The URI of the weights for a model location (a `.safetensors` object or a folder). */
export function modelFileUri(location: string): string {
  return location.endsWith(".safetensors") ? location : joinUri(location, MODEL_FILE);
}

/**
 * Writes the network (and optionally the optimizer) to `location`. Each file is written atomically.
 * @param extra string metadata stored in the model file
 */
export async function saveModel(
  location: string,
  net: UNet,
  optimizer?: Optimizer,
  extra: Record<string, string> = {},
): Promise<void> {
  await putObject(modelFileUri(location), await serializeUNetAsync(net, extra));
  if (optimizer) {
    if (location.endsWith(".safetensors")) {
      throw new RangeError(`Cannot save optimizer state beside "${location}": give a folder URI`);
    }
    await putObject(joinUri(location, OPTIMIZER_FILE), await serializeOptimizerAsync(optimizer));
  }
}

/** Loads the network at `location`; errors name the object. */
export async function loadModel(
  location: string,
): Promise<{ net: UNet; metadata: Record<string, string> }> {
  const uri = modelFileUri(location);
  return deserializeUNet(await getObject(uri), uri);
}

/** Loads the optimizer state saved beside a model, or undefined when there is none. */
export async function loadOptimizer(location: string): Promise<Optimizer | undefined> {
  const uri = joinUri(location, OPTIMIZER_FILE);
  if (!(await exists(uri))) return undefined;
  return deserializeOptimizer(await getObject(uri), uri);
}

/**
 * The dataset description a model file keeps (metadata `dataset`), reading only the file's header;
 * undefined for a model trained before descriptions were kept (a BraTS model).
 * @param uri the `.safetensors` object
 * @throws {SyntaxError} a header that is not a safetensors header, naming the file
 */
export async function readModelDataset(uri: string): Promise<DatasetDescription | undefined> {
  const head = await getObjectRange(uri, 0, 8);
  const bad = (why: string) => new SyntaxError(`"${uri}" is not a safetensors file: ${why}`);
  if (head.length < 8) throw bad(`${head.length} bytes`);
  const n = Number(new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true));
  if (!Number.isSafeInteger(n) || n <= 0 || n > 100 * 2 ** 20) throw bad(`header length ${n}`);
  let header: { __metadata__?: Record<string, string> };
  try {
    header = JSON.parse(new TextDecoder().decode(await getObjectRange(uri, 8, 8 + n)));
  } catch (e) {
    throw bad(`header is not JSON (${(e as Error).message})`);
  }
  const text = header?.__metadata__?.dataset;
  return text === undefined ? undefined : parseDatasetDescription(text, uri);
}
