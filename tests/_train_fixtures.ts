/**
 * Shared fixtures of the training tests: a network small enough that a run takes seconds, a
 * phantom dataset written once per test file, and settings for short runs on it.
 * @module
 */
import { disposeUNet, resolveConfig } from "../model/mod.ts";
import { loadModel } from "../pipeline/training/model_store.ts";
import { writePhantomDataset } from "../pipeline/synth/phantom.ts";
import { defaultSettings, type TrainSettings } from "../pipeline/training/mod.ts";
import { ROOT } from "./_cli.ts";

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

/** A saved model's weights by name, read back to plain arrays. */
export async function weightsOf(uri: string): Promise<Map<string, Float32Array>> {
  const { net } = await loadModel(uri);
  const out = new Map([...net.named].map(([k, t]) => [k, t.dataSync() as Float32Array]));
  disposeUNet(net);
  return out;
}

/** Whether nothing exists at `path`. */
export async function pathMissing(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return false;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return true;
    throw e;
  }
}

/** Starts `main.ts train` and watches its standard error as it comes. */
export function spawnTrain(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "train", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  const reading = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) stderr += chunk;
  })();
  return {
    child,
    /** What the run has printed on standard error so far. */
    stderr: () => stderr,
    async waitFor(pattern: RegExp, timeoutMs = 120_000): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (!pattern.test(stderr)) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern}:\n${stderr}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    async finish(): Promise<{ code: number; stderr: string }> {
      const { code } = await child.status;
      await reading;
      return { code, stderr };
    },
  };
}
