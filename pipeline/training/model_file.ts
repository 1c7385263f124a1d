/**
 * A model or optimizer file's bytes: the names inside a model folder, whole-file digests (as
 * checkpoints record them) and the SHA-256 of the tensor data each file carries in its metadata
 * (`data_sha256`), checked whenever it is read, so that damaged weights are refused by name.
 * @module
 */
import { createHash } from "node:crypto";
import { getObject, joinUri } from "../storage/mod.ts";

/** File name of the weights inside a model folder. */
export const MODEL_FILE = "model.safetensors";
/** File name of the optimizer state inside a checkpoint folder. */
export const OPTIMIZER_FILE = "optimizer.safetensors";

/** Folder of a training run holding the weights that validated best (see pipeline/checkpoint.ts). */
export const BEST_FOLDER = "best";

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
export function withDataDigest(bytes: Uint8Array): Uint8Array {
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
