/**
 * Weights as safetensors bytes: an 8-byte little-endian header length, a JSON header naming each
 * tensor's dtype, shape and byte range, string metadata, then the raw little-endian data.
 *
 * Why this format: one self-describing file that PyTorch, JAX and numpy users can open with the
 * `safetensors` package, that cannot execute code when loaded, and whose metadata carries the
 * configuration the weights were built with.
 * @module
 */

/** A tensor's values and shape, independent of any tfjs backend. */
export interface TensorData {
  shape: number[];
  values: Float32Array;
}

const HEADER_LIMIT = 100 * 1024 * 1024;

/**
 * Encodes float32 tensors and string metadata as safetensors bytes. Tensors are written in the
 * map's order.
 */
export function encodeSafetensors(
  tensors: Map<string, TensorData>,
  metadata: Record<string, string> = {},
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, t] of tensors) {
    const size = t.shape.reduce((a, b) => a * b, 1);
    if (size !== t.values.length) {
      throw new RangeError(
        `Tensor "${name}": shape [${t.shape}] holds ${size} values, found ${t.values.length}`,
      );
    }
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + 4 * size] };
    offset += 4 * size;
  }
  let json = JSON.stringify(header);
  // The data section starts 8-byte aligned, as the reference implementation pads it.
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.length;
  for (const t of tensors.values()) {
    for (let i = 0; i < t.values.length; i++, pos += 4) view.setFloat32(pos, t.values[i], true);
  }
  return out;
}

/**
 * Decodes safetensors bytes holding float32 tensors.
 * @param name the file or object, named in errors
 * @throws {SyntaxError} when the bytes are not a well-formed safetensors file
 */
export function decodeSafetensors(
  bytes: Uint8Array,
  name: string,
): { tensors: Map<string, TensorData>; metadata: Record<string, string> } {
  const fail = (why: string) => new SyntaxError(`Cannot read safetensors "${name}": ${why}`);
  if (bytes.length < 8) {
    throw fail(`file is ${bytes.length} bytes, shorter than its 8-byte header length`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > HEADER_LIMIT || 8 + headerLen > bytes.length) {
    throw fail(`header length ${headerLen} exceeds the file (${bytes.length} bytes)`);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen)),
    );
  } catch (e) {
    throw fail(`header is not JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw fail("header is not an object");
  }
  const dataStart = 8 + headerLen;
  const dataLen = bytes.length - dataStart;
  const tensors = new Map<string, TensorData>();
  const entries = Object.entries(header).filter(([k]) => k !== "__metadata__")
    .sort(([, a], [, b]) =>
      ((a as { data_offsets: number[] }).data_offsets?.[0] ?? 0) -
      ((b as { data_offsets: number[] }).data_offsets?.[0] ?? 0)
    );
  for (const [key, info] of entries) {
    const { dtype, shape, data_offsets: off } = info as {
      dtype: string;
      shape: number[];
      data_offsets: number[];
    };
    if (dtype !== "F32") throw fail(`tensor "${key}" has dtype ${dtype}; only F32 is supported`);
    if (!Array.isArray(shape) || shape.some((s) => !Number.isInteger(s) || s < 0)) {
      throw fail(`tensor "${key}" has an invalid shape ${JSON.stringify(shape)}`);
    }
    const size = shape.reduce((a, b) => a * b, 1);
    if (
      !Array.isArray(off) || off.length !== 2 || off[1] - off[0] !== 4 * size || off[0] < 0 ||
      off[1] > dataLen
    ) {
      throw fail(
        `tensor "${key}" has data offsets ${
          JSON.stringify(off)
        } that do not fit shape [${shape}] and ${dataLen} data bytes`,
      );
    }
    const values = new Float32Array(size);
    for (let i = 0; i < size; i++) values[i] = view.getFloat32(dataStart + off[0] + 4 * i, true);
    tensors.set(key, { shape, values });
  }
  const meta = header.__metadata__;
  const metadata: Record<string, string> = {};
  if (meta !== undefined) {
    if (typeof meta !== "object" || meta === null) throw fail("__metadata__ is not an object");
    for (const [k, v] of Object.entries(meta)) {
      if (typeof v !== "string") throw fail(`metadata "${k}" is not a string`);
      metadata[k] = v;
    }
  }
  return { tensors, metadata };
}
