/**
 * Saving and loading networks (and optimizer state) at any storage URI.
 *
 * A model location is either a `.safetensors` object or a folder/prefix holding `model.safetensors`
 * (and, for training checkpoints, `optimizer.safetensors`). The model file alone is enough to run
 * segmentation: it carries the configuration it was built with.
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
import { exists, getObject, joinUri, putObject } from "./storage.ts";

/** File name of the weights inside a model folder. */
export const MODEL_FILE = "model.safetensors";
/** File name of the optimizer state inside a checkpoint folder. */
export const OPTIMIZER_FILE = "optimizer.safetensors";

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
