/**
 * Datasets described by a `dataset.json`: an nnU-Net v2 raw dataset or a Medical Segmentation
 * Decathlon (MSD) task, and bare nnU-Net image folders (`<case>_0000.nii.gz`, …). What such a
 * dataset holds — its channels in order, its label map and regions — is a
 * {@linkcode DatasetDescription}, which the model file keeps so that `segment` reads and writes
 * the same things later; BraTS-named datasets have one too ({@linkcode bratsDataset}).
 *
 * - nnU-Net v2: `dataset.json` with `channel_names` ({"0": "FLAIR", …}), `labels` ({"background":
 *   0, "tumour": 1} or region-based {"whole": [1, 2, 3], …} with `regions_class_order`) and
 *   `file_ending`; images `imagesTr/<case>_<XXXX><ending>` (one file per channel XXXX), labels
 *   `labelsTr/<case><ending>`, unlabelled `imagesTs/<case>_<XXXX><ending>`.
 * - MSD (and nnU-Net v1): `dataset.json` with `modality` ({"0": "FLAIR", …}), `labels` ({"0":
 *   "background", "1": "edema", …}), `training` ([{image, label}]) and `test` ([image]); one 4-D
 *   NIfTI per case holding every channel along its 4th dimension.
 * @module
 */
import type { Case, CaseProblem, ChannelFile } from "./cases.ts";
import { bratsScheme, type LabelScheme, MAX_REGIONS } from "../labels.ts";
import { getObject, joinUri } from "../storage/mod.ts";
import type { ObjectInfo } from "../storage/mod.ts";

/** How a dataset's files are laid out. */
export type Layout = "brats2021" | "brats2023" | "nnunet" | "msd";

/** What a dataset holds, kept in the model file (metadata `dataset`) by training. */
export interface DatasetDescription {
  layout: Layout;
  /** The dataset's name, when its `dataset.json` gives one. */
  name?: string;
  /** The network's input channels, in order (nnU-Net's `channel_names`, MSD's `modality`). */
  channels: string[];
  /** Label values by name, background included; a region is a list of values (nnU-Net v2). */
  labels: Record<string, number | number[]>;
  /** nnU-Net's `regions_class_order`: the value written for each region, for region labels. */
  regionsClassOrder?: number[];
  /** The image file ending (nnU-Net's `file_ending`), e.g. `.nii.gz`. */
  fileEnding?: string;
}

/** The BraTS modalities, in the order the network takes them. */
const BRATS_CHANNELS = ["flair", "t1", "t1ce", "t2"];

/** The description of a BraTS-named dataset: four modalities, WT/TC/ET of labels 1, 2, 4 (or 3). */
export function bratsDataset(layout: "brats2021" | "brats2023"): DatasetDescription {
  const e = layout === "brats2021" ? 4 : 3;
  return {
    layout,
    channels: [...BRATS_CHANNELS],
    labels: { background: 0, necrosis: 1, edema: 2, enhancing: e },
  };
}

/** Whether a description is a BraTS naming's (labels 1, 2 and 4 or 3 as WT, TC, ET). */
export function isBraTS(d: DatasetDescription): d is DatasetDescription & {
  layout: "brats2021" | "brats2023";
} {
  return d.layout === "brats2021" || d.layout === "brats2023";
}

/**
 * The network outputs of a dataset's labels: BraTS WT/TC/ET; region-based nnU-Net labels as
 * given, in their `dataset.json` order, written as `regions_class_order`; otherwise one region per
 * non-background label, in ascending value, written as that value.
 * @param name what to call the dataset in errors
 * @throws {RangeError} no label besides background, more than {@linkcode MAX_REGIONS}, values
 *   outside 0..255, or region labels without a matching `regions_class_order`
 */
export function labelScheme(d: DatasetDescription, name = "dataset.json"): LabelScheme {
  if (isBraTS(d)) return bratsScheme(d.layout === "brats2021" ? 4 : 3);
  const bad = (why: string) =>
    new RangeError(`${name}: labels ${JSON.stringify(d.labels)}: ${why}`);
  const entries = Object.entries(d.labels);
  for (const [k, v] of entries) {
    const values = Array.isArray(v) ? v : [v];
    if (values.length === 0 || !values.every((x) => Number.isInteger(x) && x >= 0 && x <= 255)) {
      throw bad(`"${k}" must be an integer 0..255 or a list of them, found ${JSON.stringify(v)}`);
    }
  }
  const foreground = entries.filter(([, v]) => v !== 0);
  if (foreground.length === 0) throw bad("no label besides background (0)");
  if (foreground.length > MAX_REGIONS) {
    throw bad(`${foreground.length} foreground labels; at most ${MAX_REGIONS} are supported`);
  }
  const regionBased = foreground.some(([, v]) => Array.isArray(v));
  if (regionBased) {
    const order = d.regionsClassOrder;
    if (
      !Array.isArray(order) || order.length !== foreground.length ||
      !order.every((x) => Number.isInteger(x) && x > 0 && x <= 255)
    ) {
      throw bad(
        `region labels need "regions_class_order" with one label value (1..255) per region ` +
          `(${foreground.length}), found ${JSON.stringify(order)}`,
      );
    }
    return {
      regions: foreground.map(([k, v]) => ({ name: k, labels: Array.isArray(v) ? v : [v] })),
      order: [...order],
    };
  }
  const sorted = (foreground as [string, number][]).sort((a, b) => a[1] - b[1]);
  const seen = new Set<number>();
  for (const [k, v] of sorted) {
    if (seen.has(v)) throw bad(`"${k}" repeats value ${v}`);
    seen.add(v);
  }
  return {
    regions: sorted.map(([k, v]) => ({ name: k, labels: [v] })),
    order: sorted.map(([, v]) => v),
  };
}

/** Parses a description stored in a model file's metadata, checking what segment relies on. */
export function parseDatasetDescription(text: string, name: string): DatasetDescription {
  let d: DatasetDescription;
  try {
    d = JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`${name}: its dataset metadata is not JSON (${(e as Error).message})`);
  }
  if (
    !d || !["brats2021", "brats2023", "nnunet", "msd"].includes(d.layout) ||
    !Array.isArray(d.channels) || !d.channels.every((c) => typeof c === "string") ||
    typeof d.labels !== "object" || d.labels === null
  ) {
    throw new TypeError(`${name}: its dataset metadata is not a dataset description: ${text}`);
  }
  labelScheme(d, name);
  return d;
}

/** A channel list of a dataset.json (`{"0": "FLAIR", "1": "T1"}`), checked to number 0..n-1. */
function channelList(value: unknown, field: string, name: string): string[] {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TypeError(`${name}: "${field}" must be an object {"0": "<name>", ...}`);
  }
  const entries = Object.entries(value as Record<string, unknown>);
  const out: string[] = [];
  for (let i = 0; i < entries.length; i++) {
    const v = (value as Record<string, unknown>)[String(i)];
    if (typeof v !== "string") {
      throw new TypeError(
        `${name}: "${field}" must name channels "0".."${entries.length - 1}" in turn; ` +
          `channel "${i}" is ${JSON.stringify(v)} (keys ${
            JSON.stringify(entries.map(([k]) => k))
          })`,
      );
    }
    out.push(v);
  }
  if (out.length === 0) throw new TypeError(`${name}: "${field}" names no channel`);
  return out;
}

/**
 * Reads a `dataset.json`: nnU-Net v2 when it has `channel_names`, MSD when it has `modality`.
 * @param name the file's URI, for errors
 * @throws {SyntaxError} not JSON; {@link TypeError} neither layout's fields
 */
export function parseDatasetJson(text: string, name: string): {
  description: DatasetDescription;
  json: Record<string, unknown>;
} {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`${name}: not JSON (${(e as Error).message})`);
  }
  if (typeof json !== "object" || json === null) throw new TypeError(`${name}: not a JSON object`);
  const labels = json.labels;
  if (typeof labels !== "object" || labels === null || Array.isArray(labels)) {
    throw new TypeError(`${name}: "labels" must be an object`);
  }
  const named = typeof json.name === "string" ? { name: json.name } : {};
  if ("channel_names" in json) {
    const ending = json.file_ending ?? ".nii.gz";
    if (ending !== ".nii.gz" && ending !== ".nii") {
      throw new RangeError(
        `${name}: file_ending ${
          JSON.stringify(ending)
        } is not read here; NIfTI (.nii.gz or .nii) is`,
      );
    }
    const order = json.regions_class_order;
    const description: DatasetDescription = {
      layout: "nnunet",
      ...named,
      channels: channelList(json.channel_names, "channel_names", name),
      labels: labels as Record<string, number | number[]>,
      ...(Array.isArray(order) ? { regionsClassOrder: order as number[] } : {}),
      fileEnding: ending,
    };
    labelScheme(description, name);
    return { description, json };
  }
  if ("modality" in json) {
    // MSD maps values to names ({"0": "background"}); the description keeps nnU-Net v2's way.
    const byName: Record<string, number> = {};
    for (const [value, label] of Object.entries(labels as Record<string, unknown>)) {
      const v = Number(value);
      if (typeof label !== "string" || !Number.isInteger(v)) {
        throw new TypeError(
          `${name}: "labels" of an MSD task map values to names ({"0": "background"}), found ` +
            `${JSON.stringify(value)}: ${JSON.stringify(label)}`,
        );
      }
      byName[label] = v;
    }
    const description: DatasetDescription = {
      layout: "msd",
      ...named,
      channels: channelList(json.modality, "modality", name),
      labels: byName,
    };
    labelScheme(description, name);
    return { description, json };
  }
  throw new TypeError(
    `${name}: neither an nnU-Net v2 dataset.json ("channel_names", "labels", "file_ending") nor ` +
      `an MSD one ("modality", "labels", "training")`,
  );
}

const NNUNET_IMAGE = /^(.+)_(\d{4})(\.nii(?:\.gz)?)$/;

/** Whether a file name is an nnU-Net image (`<case>_0000.nii.gz`). */
export function isNnunetImageName(fileName: string): boolean {
  return !fileName.startsWith(".") && NNUNET_IMAGE.test(fileName);
}

/** The cases of a dataset and the problems of those left out. */
export interface DatasetCases {
  description: DatasetDescription;
  cases: Case[];
  problems: CaseProblem[];
}

/**
 * The cases of nnU-Net image files (`<case>_<XXXX><ending>`), each with every channel of
 * `description`, labelled from `labels` (`<case><ending>` by file name) when given.
 */
function nnunetCases(
  images: ObjectInfo[],
  labels: Map<string, string>,
  description: DatasetDescription,
  where: string,
): { cases: Case[]; problems: CaseProblem[] } {
  const ending = description.fileEnding ?? ".nii.gz";
  const groups = new Map<string, Map<number, string[]>>();
  for (const o of images) {
    const m = NNUNET_IMAGE.exec(o.key.split("/").pop()!);
    if (!m || m[3] !== ending || o.key.split("/").pop()!.startsWith(".")) continue;
    const files = groups.get(m[1]) ?? new Map<number, string[]>();
    groups.set(m[1], files);
    const k = Number(m[2]);
    files.set(k, [...(files.get(k) ?? []), o.uri]);
  }
  const cases: Case[] = [];
  const problems: CaseProblem[] = [];
  const n = description.channels.length;
  const channelName = (k: number) => `${String(k).padStart(4, "0")} (${description.channels[k]})`;
  for (const [id, files] of groups) {
    const missing = description.channels.map((_, k) => k).filter((k) => !files.has(k));
    const extra = [...files.keys()].filter((k) => k >= n);
    const twice = [...files].filter(([, uris]) => uris.length > 1);
    if (missing.length > 0) {
      problems.push({
        id,
        error: `case "${id}" in ${where}: missing channel ${
          missing.map((k) => `${channelName(k)}: ${id}_${String(k).padStart(4, "0")}${ending}`)
            .join(", ")
        }`,
      });
    } else if (extra.length > 0) {
      problems.push({
        id,
        error: `case "${id}" in ${where}: channel ${
          extra.map((k) => String(k).padStart(4, "0")).join(", ")
        } beyond the ${n} channel${n === 1 ? "" : "s"} (${description.channels.join(", ")})`,
      });
    } else if (twice.length > 0) {
      problems.push({
        id,
        error: `case "${id}": more than one file for channel ${
          twice.map(([k, uris]) => `${k} (${uris.join(", ")})`).join("; ")
        }`,
      });
    } else {
      const channels: ChannelFile[] = description.channels.map((name, k) => ({
        name,
        uri: files.get(k)![0],
      }));
      const seg = labels.get(id);
      cases.push(datasetCase(id, channels, description, seg));
    }
  }
  return { cases, problems };
}

function datasetCase(
  id: string,
  channels: ChannelFile[],
  description: DatasetDescription,
  seg: string | undefined,
): Case {
  return {
    id,
    naming: description.layout,
    images: Object.fromEntries(channels.map((c) => [c.name, c.uri])),
    channels,
    dataset: description,
    ...(seg ? { seg } : {}),
  };
}

/** The relative path of an MSD list entry ("./imagesTr/x.nii.gz"), checked. */
function msdPath(entry: unknown, name: string, field: string): string {
  if (typeof entry !== "string" || entry === "") {
    throw new TypeError(
      `${name}: "${field}" entries must be paths, found ${JSON.stringify(entry)}`,
    );
  }
  return entry.replace(/^\.\//, "");
}

/** The case id of an MSD file: its name without `.nii[.gz]`. */
function msdId(path: string): string {
  return path.split("/").pop()!.replace(/\.nii(\.gz)?$/, "");
}

/**
 * Lists a dataset with a `dataset.json` at `root` (already listed as `objects`), or, for
 * `only` (`imagesTr`, `imagesTs`), that folder of it.
 */
export async function findDatasetCases(
  root: string,
  objects: ObjectInfo[],
  options: { only?: string } = {},
): Promise<DatasetCases> {
  const jsonUri = joinUri(root, "dataset.json");
  const { description, json } = parseDatasetJson(
    new TextDecoder().decode(await getObject(jsonUri)),
    jsonUri,
  );
  const keyed = new Map(objects.map((o) => [o.key, o]));
  if (description.layout === "nnunet") {
    const ending = description.fileEnding!;
    const labels = new Map<string, string>();
    for (const o of objects) {
      const m = /^labelsTr\/([^/]+)$/.exec(o.key);
      if (m && m[1].endsWith(ending) && !m[1].startsWith(".")) {
        labels.set(m[1].slice(0, -ending.length), o.uri);
      }
    }
    const cases: Case[] = [];
    const problems: CaseProblem[] = [];
    for (const folder of ["imagesTr", "imagesTs"]) {
      if (options.only && options.only !== folder) continue;
      const images = objects.filter((o) => o.key.startsWith(`${folder}/`));
      const found = nnunetCases(
        images,
        folder === "imagesTr" ? labels : new Map(),
        description,
        joinUri(root, folder),
      );
      cases.push(...found.cases);
      problems.push(...found.problems);
    }
    return { description, ...unique(cases, problems) };
  }
  // MSD: the lists say which files are cases.
  const cases: Case[] = [];
  const problems: CaseProblem[] = [];
  const add = (image: string, label: string | undefined) => {
    const id = msdId(image);
    const absent = [image, ...(label ? [label] : [])].filter((p) => !keyed.has(p));
    if (absent.length > 0) {
      problems.push({
        id,
        error: `case "${id}" listed in ${jsonUri}: ${
          absent.map((p) => joinUri(root, p)).join(", ")
        } not found`,
      });
      return;
    }
    const uri = keyed.get(image)!.uri;
    const channels = description.channels.map((name, volume) => ({ name, uri, volume }));
    cases.push(datasetCase(id, channels, description, label ? keyed.get(label)!.uri : undefined));
  };
  const training = json.training ?? [];
  const test = json.test ?? [];
  if (!Array.isArray(training) || !Array.isArray(test)) {
    throw new TypeError(`${jsonUri}: "training" and "test" must be lists`);
  }
  if (!options.only || options.only === "imagesTr") {
    for (const t of training) {
      const entry = t as { image?: unknown; label?: unknown };
      add(msdPath(entry?.image, jsonUri, "training"), msdPath(entry?.label, jsonUri, "training"));
    }
  }
  if (!options.only || options.only === "imagesTs") {
    for (const t of test) add(msdPath(t, jsonUri, "test"), undefined);
  }
  return { description, ...unique(cases, problems) };
}

/** Cases whose id appears twice (imagesTr and imagesTs) become problems. */
function unique(
  cases: Case[],
  problems: CaseProblem[],
): { cases: Case[]; problems: CaseProblem[] } {
  const count = new Map<string, number>();
  for (const c of cases) count.set(c.id, (count.get(c.id) ?? 0) + 1);
  const twice = cases.filter((c) => count.get(c.id)! > 1);
  for (const id of new Set(twice.map((c) => c.id))) {
    problems.push({
      id,
      error: `case "${id}": more than one case of that id (${
        twice.filter((c) => c.id === id).map((c) => c.channels![0].uri).join(", ")
      })`,
    });
  }
  return { cases: cases.filter((c) => count.get(c.id) === 1), problems };
}

/**
 * The cases of a bare folder of nnU-Net image files (an `imagesTs` without its `dataset.json`):
 * as many channels as the highest channel index found says, named by index ("0", "1", …); which
 * channels a model takes, and their names, `segment` checks against the model's description.
 */
export function findBareCases(where: string, objects: ObjectInfo[]): DatasetCases | undefined {
  const images = objects.filter((o) => isNnunetImageName(o.key.split("/").pop()!));
  if (images.length === 0) return undefined;
  const gz = images.filter((o) => o.key.endsWith(".gz")).length >= images.length / 2;
  const count = 1 +
    Math.max(...images.map((o) => Number(NNUNET_IMAGE.exec(o.key.split("/").pop()!)![2])));
  const d: DatasetDescription = {
    layout: "nnunet",
    channels: Array.from({ length: count }, (_, k) => String(k)),
    // No labels: a bare folder holds images only; a model's description says what it writes.
    labels: { background: 0 },
    fileEnding: gz ? ".nii.gz" : ".nii",
  };
  const found = nnunetCases(images, new Map(), d, where);
  return { description: d, ...unique(found.cases, found.problems) };
}

/** Where a `dataset.json` may be for a URI: the URI itself, or for `…/imagesTs` its parent. */
export function datasetRoots(uri: string): { root: string; only?: string } | undefined {
  const m = /^(.*?)[/\\](imagesTr|imagesTs)[/\\]?$/.exec(uri);
  return m ? { root: m[1] === "" ? "/" : m[1], only: m[2] } : undefined;
}
