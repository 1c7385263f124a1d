/**
 * Shared fixtures of the training tests: a network small enough that a run takes seconds, a
 * phantom dataset written once per test file, and settings for short runs on it.
 * @module
 */
import { resolveConfig } from "../model/mod.ts";
import { writePhantomDataset } from "../pipeline/phantom.ts";
import { defaultSettings, type TrainSettings } from "../tasks/train.ts";

/** The tiny network's fields as `--config` JSON. */
export const TINY_JSON = JSON.stringify({
  levels: 2,
  baseChannels: 4,
  blocksPerLevel: 1,
  expansion: 2,
});

/** A small network so that training tests take seconds. */
export const TINY = resolveConfig(JSON.parse(TINY_JSON));

const datasets = new Map<string, Promise<string>>();

/** Three phantom cases 24×28×20 under a temporary folder named by `prefix`, written once. */
export function phantomDataset(prefix: string): Promise<string> {
  let dir = datasets.get(prefix);
  if (!dir) {
    dir = (async () => {
      const root = await Deno.makeTempDir({ prefix });
      await writePhantomDataset(`${root}/data`, { cases: 3, dims: [24, 28, 20], seed: 3 });
      return `${root}/data`;
    })();
    datasets.set(prefix, dir);
  }
  return dir;
}

/** Settings of a short run of the tiny network: 2 epochs of 2 steps on 8³ crops. */
export function tinySettings(data: string, over: Partial<TrainSettings> = {}): TrainSettings {
  return {
    ...defaultSettings(data),
    epochs: 2,
    stepsPerEpoch: 2,
    crop: 8,
    valWindow: 16,
    config: TINY,
    ...over,
  };
}
