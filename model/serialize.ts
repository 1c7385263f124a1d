/**
 * A network and an optimizer as self-describing bytes (safetensors with the configuration in its
 * metadata), so a segmentation run needs nothing but the file.
 * @module
 */
import * as tf from "./tf.ts";
import { type NetworkConfig, resolveConfig } from "./config.ts";
import { Optimizer, type OptimizerConfig } from "./optimizer.ts";
import { decodeSafetensors, encodeSafetensors, type TensorData } from "./safetensors.ts";
import { type UNet, unetFromWeights } from "./unet.ts";

const FORMAT = "revunet-deno";
const VERSION = "1";

function toData(named: Map<string, tf.Tensor>): Map<string, TensorData> {
  return new Map(
    [...named].map(([k, t]) => [k, { shape: t.shape, values: t.dataSync() as Float32Array }]),
  );
}

/** As toData, reading asynchronously: WebGPU's synchronous read needs a canvas Deno lacks. */
async function toDataAsync(named: Map<string, tf.Tensor>): Promise<Map<string, TensorData>> {
  const out = new Map<string, TensorData>();
  for (const [k, t] of named) {
    out.set(k, { shape: t.shape, values: (await t.data()) as Float32Array });
  }
  return out;
}

/**
 * The network's weights and configuration as safetensors bytes.
 * @param extra more metadata (strings), e.g. the training run that produced it
 */
export function serializeUNet(net: UNet, extra: Record<string, string> = {}): Uint8Array {
  return encodeUNet(toData(net.named), net, extra);
}

/** {@linkcode serializeUNet} reading the weights asynchronously (works on every backend). */
export async function serializeUNetAsync(
  net: UNet,
  extra: Record<string, string> = {},
): Promise<Uint8Array> {
  return encodeUNet(await toDataAsync(net.named), net, extra);
}

function encodeUNet(
  data: Map<string, TensorData>,
  net: UNet,
  extra: Record<string, string>,
): Uint8Array {
  return encodeSafetensors(data, {
    ...extra,
    format: FORMAT,
    version: VERSION,
    kind: "model",
    config: JSON.stringify(net.config),
  });
}

function readMeta(bytes: Uint8Array, name: string, kind: string) {
  const { tensors, metadata } = decodeSafetensors(bytes, name);
  if (metadata.format !== FORMAT || metadata.kind !== kind) {
    throw new SyntaxError(
      `"${name}" is not a RevUNet-Deno ${kind} file (metadata format=${
        metadata.format ?? "none"
      }, kind=${metadata.kind ?? "none"})`,
    );
  }
  if (metadata.version !== VERSION) {
    throw new RangeError(
      `"${name}" has format version ${metadata.version}; this build reads ${VERSION}`,
    );
  }
  let config: unknown;
  try {
    config = JSON.parse(metadata.config);
  } catch {
    throw new SyntaxError(`"${name}": its configuration metadata is not JSON`);
  }
  return { tensors, metadata, config };
}

/**
 * Rebuilds a network from {@linkcode serializeUNet} bytes.
 * @param name the file or object, named in errors
 */
export function deserializeUNet(
  bytes: Uint8Array,
  name: string,
  variables = true,
): { net: UNet; metadata: Record<string, string> } {
  const { tensors, metadata, config } = readMeta(bytes, name, "model");
  let resolved: NetworkConfig;
  try {
    resolved = resolveConfig(config as Partial<NetworkConfig>);
  } catch (e) {
    throw new RangeError(`"${name}": ${(e as Error).message}`, { cause: e });
  }
  const values = new Map([...tensors].map(([k, t]) => [k, tf.tensor(t.values, t.shape)]));
  try {
    return { net: unetFromWeights(resolved, values, variables), metadata };
  } catch (e) {
    throw new RangeError(`"${name}": ${(e as Error).message}`, { cause: e });
  } finally {
    tf.dispose([...values.values()]);
  }
}

/** The optimizer's configuration, step count and state as safetensors bytes. */
export function serializeOptimizer(opt: Optimizer): Uint8Array {
  return encodeOptimizer(toData(opt.state()), opt);
}

/** {@linkcode serializeOptimizer} reading the state asynchronously (works on every backend). */
export async function serializeOptimizerAsync(opt: Optimizer): Promise<Uint8Array> {
  return encodeOptimizer(await toDataAsync(opt.state()), opt);
}

function encodeOptimizer(data: Map<string, TensorData>, opt: Optimizer): Uint8Array {
  return encodeSafetensors(data, {
    format: FORMAT,
    version: VERSION,
    kind: "optimizer",
    config: JSON.stringify(opt.config),
    step: String(opt.step),
  });
}

/** Restores an optimizer from {@linkcode serializeOptimizer} bytes. */
export function deserializeOptimizer(bytes: Uint8Array, name: string): Optimizer {
  const { tensors, metadata, config } = readMeta(bytes, name, "optimizer");
  const opt = new Optimizer(config as Partial<OptimizerConfig>);
  const values = new Map([...tensors].map(([k, t]) => [k, tf.tensor(t.values, t.shape)]));
  try {
    opt.load(Number(metadata.step), values);
  } finally {
    tf.dispose([...values.values()]);
  }
  return opt;
}
