/**
 * What a model takes from a case and writes for it: its channels in the model's order, and the
 * labels of its output (the case's own BraTS convention, or the model's dataset's scheme).
 * @module
 */
import {
  type Case,
  type DatasetDescription,
  isBraTS,
  labelScheme,
  MODALITIES,
} from "../cases/mod.ts";
import type { Labels } from "../labels.ts";

/** What the model says about its inputs: its channel count and, from training, its dataset. */
export interface ModelInputs {
  /** The network's input channels. */
  inChannels: number;
  /** The dataset it was trained on; none for a BraTS model. */
  dataset?: DatasetDescription;
  /** The model file, named in errors. */
  uri: string;
}

/**
 * The case with the channels the model takes, in its order: by name from a BraTS case's
 * modalities (FLAIR as flair or t2f, T1 as t1 or t1n, …), by index from any other layout's.
 * @throws {RangeError} naming the case and the channel it lacks (or the count it has too many)
 */
export function caseForModel(c: Case, model: ModelInputs): Case {
  const n = model.inChannels;
  const wanted = model.dataset?.channels ?? (n === 4 ? [...MODALITIES] : []);
  const names = wanted.length === n ? wanted : Array.from({ length: n }, (_, k) => String(k));
  const trained = model.dataset ? (model.dataset.name ?? model.dataset.layout) : "BraTS";
  if (!c.channels) {
    // A BraTS case: its modalities by name. A BraTS model takes them as they are.
    if ((!model.dataset || isBraTS(model.dataset)) && n === 4) return c;
    return { ...c, channels: names.map((name, k) => bratsChannel(c, name, k, trained)) };
  }
  const have = c.channels;
  if (have.length < n) {
    const ending = model.dataset?.fileEnding ?? ".nii.gz";
    const missing = names.slice(have.length).map((name, j) => {
      const k = have.length + j;
      const file = have[0].volume === undefined
        ? `: ${c.id}_${String(k).padStart(4, "0")}${ending}`
        : ` in ${have[0].uri}`;
      return `${String(k).padStart(4, "0")} (${name})${file}`;
    });
    throw new RangeError(
      `case "${c.id}": missing channel ${missing.join(", ")}; the model (trained on ${trained}) ` +
        `takes ${n} (${names.join(", ")})`,
    );
  }
  if (have.length > n) {
    throw new RangeError(
      `case "${c.id}" has ${have.length} channels (${
        have.map((h) => h.name).join(", ")
      }); the model (trained on ${trained}) takes ${n} (${names.join(", ")})`,
    );
  }
  return c;
}

/** A BraTS case's modality as channel `k` named `name`. */
function bratsChannel(c: Case, name: string, k: number, trained: string) {
  const m = bratsModality(name);
  if (!m) {
    throw new RangeError(
      `case "${c.id}": the model (trained on ${trained}) takes channel ${k} "${name}", ` +
        `which is none of a BraTS case's modalities (${MODALITIES.join(", ")})`,
    );
  }
  return { name, uri: c.images[m] };
}

/** The BraTS modality a channel name stands for (FLAIR, T2-FLAIR, t2f → flair; T1c, T1Gd → t1ce; …). */
export function bratsModality(name: string): typeof MODALITIES[number] | undefined {
  const n = name.toLowerCase().replace(/[^a-z0-9]/g, "");
  if (["flair", "t2f", "t2flair"].includes(n)) return "flair";
  if (["t1", "t1n", "t1w", "t1native"].includes(n)) return "t1";
  if (["t1ce", "t1c", "t1gd", "t1contrast", "t1post"].includes(n)) return "t1ce";
  if (["t2", "t2w"].includes(n)) return "t2";
  return undefined;
}

/**
 * The labels a case's output is written in: a BraTS case's own convention for a BraTS model,
 * else the model's dataset's values (its regions written in `regions_class_order`).
 */
export function outputLabels(c: Case, model: ModelInputs): Labels {
  if (!model.dataset || isBraTS(model.dataset)) {
    return c.enhancingLabel ?? (model.dataset?.layout === "brats2023" ? 3 : 4);
  }
  return labelScheme(model.dataset, model.uri);
}
