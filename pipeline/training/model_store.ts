/**
 * Saving and loading networks (and optimizer state) at any storage URI.
 *
 * A model location is either a `.safetensors` object or a folder/prefix holding `model.safetensors`
 * (and, for training checkpoints, `optimizer.safetensors`). The model file alone is enough to run
 * segmentation: it carries the configuration it was built with and, from training, the description
 * of its dataset (metadata `dataset`: channels, labels, regions; see pipeline/datasets.ts).
 *
 * Every file written here carries the SHA-256 of its tensor data in its metadata
 * (`data_sha256`), checked whenever it is loaded, so that damaged weights (flipped bytes, NaNs
 * written over them) are refused by name instead of run; files written before this check (or by
 * other tools) have none and load unchecked. {@linkcode saveModel} also returns each file's
 * whole-file SHA-256, which training checkpoints record (pipeline/checkpoint.ts).
 * @module
 */
import { createHash } from "node:crypto";
import {
  deserializeOptimizer,
  deserializeUNet,
  disposeUNet,
  type Optimizer,
  serializeOptimizerAsync,
  serializeUNetAsync,
  type UNet,
} from "../../model/mod.ts";
import { type DatasetDescription, parseDatasetDescription } from "../cases/mod.ts";
import { exists, getObject, getObjectRange, joinUri, parseUri, putObject } from "../storage/mod.ts";

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

/** Hex SHA-256 of `bytes`. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** A file as written: its whole-file SHA-256 and size, as checkpoints record them. */
export interface FileDigest {
  sha256: string;
  bytes: number;
}

/** The digest of a file's bytes. */
export function fileDigest(bytes: Uint8Array): FileDigest {
  return { sha256: sha256Hex(bytes), bytes: bytes.length };
}

/**
 * Refuses `bytes` read from `uri` unless they are what `expected` records.
 * @throws {Error} naming `uri`, the recorded and the found digest
 */
export function checkDigest(bytes: Uint8Array, uri: string, expected: FileDigest): void {
  const found = fileDigest(bytes);
  if (found.sha256 !== expected.sha256 || found.bytes !== expected.bytes) {
    throw new Error(
      `${uri}: damaged file: its SHA-256 is ${found.sha256} (${found.bytes} bytes), the ` +
        `checkpoint records ${expected.sha256} (${expected.bytes} bytes)`,
    );
  }
}

const DATA_DIGEST = "data_sha256";

/** The header length, header and data section of safetensors bytes (undefined if malformed). */
function splitSafetensors(bytes: Uint8Array) {
  if (bytes.length < 8) return undefined;
  const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true);
  if (n > BigInt(bytes.length - 8)) return undefined;
  const end = 8 + Number(n);
  try {
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, end)));
    if (typeof header !== "object" || header === null || Array.isArray(header)) return undefined;
    return { header: header as Record<string, unknown>, data: bytes.subarray(end) };
  } catch {
    return undefined;
  }
}

/** Safetensors bytes with the SHA-256 of their data section added to their metadata. */
function withDataDigest(bytes: Uint8Array): Uint8Array {
  const parts = splitSafetensors(bytes)!;
  const meta = (parts.header.__metadata__ ?? {}) as Record<string, string>;
  parts.header.__metadata__ = { ...meta, [DATA_DIGEST]: sha256Hex(parts.data) };
  let json = JSON.stringify(parts.header);
  // The data section stays 8-byte aligned, as the encoder pads it.
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8);
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + parts.data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  out.set(parts.data, 8 + head.length);
  return out;
}

/**
 * Checks the data digest a model or optimizer file carries (none: nothing to check; a malformed
 * file is left to the decoder, whose errors say what is wrong).
 * @throws {Error} naming `uri` when its tensor data is not what was written
 */
export function checkDataDigest(bytes: Uint8Array, uri: string): void {
  const parts = splitSafetensors(bytes);
  const meta = parts?.header.__metadata__ as Record<string, unknown> | undefined;
  const recorded = meta?.[DATA_DIGEST];
  if (!parts || recorded === undefined) return;
  const found = sha256Hex(parts.data);
  if (found !== recorded) {
    throw new Error(
      `${uri}: damaged weights: the SHA-256 of its tensor data is ${found}, the file records ${
        JSON.stringify(recorded)
      }`,
    );
  }
}

/**
 * Reads a model or optimizer file and checks it: against `expected` (a checkpoint's record) when
 * given, and against the data digest it carries.
 * @throws {ObjectNotFoundError} when it does not exist; {@linkcode Error} naming it when damaged
 */
export async function readModelBytes(uri: string, expected?: FileDigest): Promise<Uint8Array> {
  const bytes = await getObject(uri);
  if (expected) checkDigest(bytes, uri, expected);
  checkDataDigest(bytes, uri);
  return bytes;
}

/** The URI of the weights for a model location (a `.safetensors` object or a folder). */
export function modelFileUri(location: string): string {
  return location.endsWith(".safetensors") ? location : joinUri(location, MODEL_FILE);
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

/** Metadata keys of what training records about the weights ({@linkcode ModelMetadata}). */
export const METADATA_KEYS = {
  trainCrop: "train_crop",
  valWindow: "val_window",
  dataset: "dataset",
} as const;

/**
 * What a model file's metadata says about its weights, typed (safetensors metadata is strings:
 * this is the one place that reads them).
 */
export interface ModelMetadata {
  /** The crop edge the network was trained on (`train_crop`), when recorded. */
  trainCrop?: number;
  /** The window validation scored these weights with (`val_window`), when recorded. */
  valWindow?: number;
  /**
   * The dataset it was trained on (`dataset`: channels, labels, regions); none for a model
   * trained on a BraTS naming before descriptions were kept.
   */
  dataset?: DatasetDescription;
}

/**
 * The string metadata recording `m` (the inverse of {@linkcode modelMetadata} for the sizes), for
 * {@linkcode saveModel}'s `extra`.
 */
export function modelMetadataRecord(
  m: { trainCrop?: number; valWindow?: number },
): Record<string, string> {
  return {
    ...(m.trainCrop !== undefined ? { [METADATA_KEYS.trainCrop]: String(m.trainCrop) } : {}),
    ...(m.valWindow ? { [METADATA_KEYS.valWindow]: String(m.valWindow) } : {}),
  };
}

/**
 * The typed view of a model file's string metadata: sizes that are not positive integers are
 * taken as unrecorded.
 * @param uri the file, named in errors
 * @throws {SyntaxError|TypeError|RangeError} a `dataset` description that is not one, naming `uri`
 */
export function modelMetadata(metadata: Record<string, string>, uri: string): ModelMetadata {
  const size = (key: string) => {
    const v = Number(metadata[key]);
    return Number.isInteger(v) && v > 0 ? v : undefined;
  };
  const text = metadata[METADATA_KEYS.dataset];
  const trainCrop = size(METADATA_KEYS.trainCrop);
  const valWindow = size(METADATA_KEYS.valWindow);
  return {
    ...(trainCrop !== undefined ? { trainCrop } : {}),
    ...(valWindow !== undefined ? { valWindow } : {}),
    ...(text !== undefined ? { dataset: parseDatasetDescription(text, uri) } : {}),
  };
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
  const text = header?.__metadata__?.[METADATA_KEYS.dataset];
  return text === undefined ? undefined : parseDatasetDescription(text, uri);
}
