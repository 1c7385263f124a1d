/**
 * What a model file's metadata says about its weights, typed: the training crop, the validation
 * window and the dataset description, stored as strings (safetensors metadata is strings) and read
 * here only.
 * @module
 */
import { type DatasetDescription, parseDatasetDescription } from "../cases/mod.ts";
import { getObjectRange } from "../storage/mod.ts";

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
