/**
 * Fixtures of the segmentation tests: a tiny network, a training run's layout, record readers.
 * @module
 */
import { assert, assertEquals } from "@std/assert";
import { createUNet, disposeUNet, resolveConfig } from "../../model/mod.ts";
import { saveModel } from "../../pipeline/training/model_store.ts";
import { EVAL_REGIONS, METRICS } from "../../pipeline/evaluation/evaluation.ts";
import { getObject, putObject } from "../../pipeline/storage/objects.ts";

export const TINY = { levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 };

export async function readJson(uri: string) {
  return JSON.parse(new TextDecoder().decode(await getObject(uri)));
}

/** Checks a `<case>.metrics.json`: the case, its files, and finite values of every metric. */
export function assertMetricsRecord(
  m: Record<string, unknown>,
  id: string,
  reference: string,
): void {
  assertEquals(m.case, id);
  assertEquals(m.reference, reference);
  for (const r of EVAL_REGIONS) {
    for (const k of METRICS) {
      const v = (m[r] as Record<string, number>)[k];
      assert(Number.isFinite(v), `${id} ${r} ${k} = ${v}`);
    }
  }
}

/** A tiny random network saved as `<dir>/model` with a 16³ training crop. */
export async function tinyModel(dir: string, seed = 2): Promise<string> {
  const net = createUNet(resolveConfig(TINY), { seed, zeroInitResidual: false });
  await saveModel(`${dir}/model`, net, undefined, { train_crop: "16" });
  disposeUNet(net);
  return `${dir}/model`;
}

/**
 * A training run's layout under `root`: `best/` and one checkpoint folder, each with a tiny
 * network, `latest.json`, and a `.safetensors` file elsewhere.
 */
export async function runLayout(root: string): Promise<void> {
  const net = createUNet(resolveConfig(TINY), { seed: 3, zeroInitResidual: false });
  await saveModel(joinPath(root, "run/best"), net, undefined, { train_crop: "16" });
  await saveModel(joinPath(root, "run/checkpoints/epoch-0001-step-0000002"), net);
  await saveModel(joinPath(root, "weights/final.safetensors"), net);
  disposeUNet(net);
  await putObject(joinPath(root, "run/latest.json"), "{}\n");
  await putObject(joinPath(root, "unfinished/latest.json"), "{}\n");
}

export function joinPath(root: string, rel: string): string {
  return root.endsWith("/") ? root + rel : `${root}/${rel}`;
}
