/**
 * The cases of nnU-Net v2 and MSD datasets as S3 events announce them (events.ts does BraTS
 * names): which records are such cases' images, and whether a case is complete.
 *
 * The layout comes from where the object is and what it is called, without I/O: under a folder
 * named `imagesTr/` or `imagesTs/`, `<case>_<NNNN>.nii[.gz]` (an underscore and four digits) is
 * channel NNNN of an nnU-Net case, any other `<case>.nii[.gz]` an MSD case (one 4-D file holding
 * every channel). What makes a case complete comes from the model: the channels its dataset
 * description names (training keeps it in the model file; four, flair t1 t1ce t2, for a BraTS
 * model), so a case waits until every one of them is there, whatever else the folder holds.
 * A case of `imagesTr/` with `labelsTr/<case>` beside it is scored against that reference, and
 * a reference arriving in `labelsTr/` starts its case again (for its metrics), as a BraTS seg file
 * does.
 * @module
 */
import {
  type Case,
  type ChannelFile,
  type DatasetDescription,
  isBraTS,
  MODALITIES,
} from "../cases/mod.ts";
import { exists, joinUri, type ObjectInfo } from "../storage/mod.ts";

/** What an nnU-Net or MSD image file's name says: its case, layout, and channel. */
export interface DatasetFile {
  id: string;
  layout: "nnunet" | "msd";
  /**
   * The channel, `0000`…, for an nnU-Net file; `image` for an MSD file (every channel); `seg` for
   * a `labelsTr/` reference, whose layout its case's images tell.
   */
  part: string;
  /** `.nii.gz` or `.nii`. */
  ending: string;
}

const NNUNET_FILE = /^(.+)_(\d{4})(\.nii(?:\.gz)?)$/;
const NIFTI_FILE = /^(.+?)(\.nii(?:\.gz)?)$/;

/** Why a record under imagesTr/imagesTs is not an image of a case. */
export const DATASET_FILE_HINT = "not a dataset case image (under imagesTr/ or imagesTs/: " +
  "<case>_<NNNN>.nii[.gz] for nnU-Net, <case>.nii[.gz] for MSD)";

/**
 * Recognises an nnU-Net or MSD image by its key: a NIfTI name directly under `imagesTr/` or
 * `imagesTs/`, or a reference directly under `labelsTr/` (hidden names are not).
 * @param layout the model's layout, taken for a reference ("nnunet" unless "msd")
 * @returns the file's case and channel; `undefined` for a key outside those folders; a reason for
 *   a file in one that is not an image
 */
export function parseDatasetKey(key: string, layout?: string): DatasetFile | string | undefined {
  const parts = key.split("/");
  const name = parts.pop()!;
  const folder = parts.pop();
  if (folder === "labelsTr") {
    const m = name.startsWith(".") ? null : NIFTI_FILE.exec(name);
    if (!m) return DATASET_FILE_HINT;
    return { id: m[1], layout: layout === "msd" ? "msd" : "nnunet", part: "seg", ending: m[2] };
  }
  if (folder !== "imagesTr" && folder !== "imagesTs") return undefined;
  if (name.startsWith(".")) return DATASET_FILE_HINT;
  const n = NNUNET_FILE.exec(name);
  if (n) return { id: n[1], layout: "nnunet", part: n[2], ending: n[3] };
  const m = NIFTI_FILE.exec(name);
  if (m) return { id: m[1], layout: "msd", part: "image", ending: m[2] };
  return DATASET_FILE_HINT;
}

/** The channels a model takes, in order: its dataset's, or a BraTS model's four modalities. */
export function modelChannels(dataset?: DatasetDescription): string[] {
  return dataset && !isBraTS(dataset) ? [...dataset.channels] : [...MODALITIES];
}

/** How a dataset case resolved: as events.ts's `CaseResolution`. */
export type DatasetResolution =
  | { status: "ready"; case: Case }
  | { status: "waiting"; reason: string }
  | { status: "ignored"; reason: string; unusable?: true };

/**
 * Whether the case of `file` in `folder` (listed as `objects`, keys relative to it) has every
 * channel the model takes: waiting while one is missing, unusable with a channel beyond them or
 * two MSD files for one case, else the case with the model's channels (and its `labelsTr`
 * reference, for a case of `imagesTr/`).
 */
export async function resolveDatasetCase(
  file: DatasetFile,
  folder: string,
  objects: readonly ObjectInfo[],
  dataset: DatasetDescription | undefined,
): Promise<DatasetResolution> {
  const names = modelChannels(dataset);
  const trained = dataset && !isBraTS(dataset) ? (dataset.name ?? dataset.layout) : "BraTS";
  const here = new Map(objects.filter((o) => !o.key.includes("/")).map((o) => [o.key, o.uri]));
  const { id, ending } = file;
  const files = new Map<number, string>();
  for (const [name, uri] of here) {
    const m = NNUNET_FILE.exec(name);
    if (m && m[1] === id && m[3] === ending) files.set(Number(m[2]), uri);
  }
  const msdFiles = [".nii", ".nii.gz"].map((e) => here.get(id + e)).filter((u) => u !== undefined);
  // A reference's case is laid out as its images say.
  const layout = file.part !== "seg" ? file.layout : files.size > 0 ? "nnunet" : "msd";
  if (file.part === "seg" && files.size === 0 && msdFiles.length === 0) {
    return {
      status: "ignored",
      reason: `reference of case "${id}": no image of it under ${folder} yet (its images' ` +
        `events start it)`,
    };
  }
  let channels: ChannelFile[];
  if (layout === "nnunet") {
    if (files.size === 0) return gone(id, folder);
    const index = (k: number) => String(k).padStart(4, "0");
    const missing = names.map((_, k) => k).filter((k) => !files.has(k));
    if (missing.length > 0) {
      return {
        status: "waiting",
        reason: `case "${id}" in ${folder}: missing channel ${
          missing.map((k) => `${index(k)} (${names[k]}): ${id}_${index(k)}${ending}`).join(", ")
        }; the model (trained on ${trained}) takes ${names.length} (${names.join(", ")})`,
      };
    }
    const extra = [...files.keys()].filter((k) => k >= names.length).sort((a, b) => a - b);
    if (extra.length > 0) {
      return {
        status: "ignored",
        unusable: true,
        reason: `case "${id}" in ${folder}: channel ${
          extra.map(index).join(", ")
        } beyond the ${names.length} the model (trained on ${trained}) takes (${names.join(", ")})`,
      };
    }
    channels = names.map((name, k) => ({ name, uri: files.get(k)! }));
  } else {
    const both = msdFiles;
    if (both.length === 0) return gone(id, folder);
    if (both.length > 1) {
      return {
        status: "ignored",
        unusable: true,
        reason: `case "${id}": more than one file for its image (${both.join(", ")})`,
      };
    }
    channels = names.map((name, volume) => ({ name, uri: both[0], volume }));
  }
  const description: DatasetDescription = dataset && !isBraTS(dataset) ? dataset : {
    layout,
    channels: names,
    // A BraTS model writes BraTS labels: the case's own labels are not known.
    labels: { background: 0 },
    fileEnding: ending,
  };
  const labelsTr = /^(.*)\/imagesTr\/$/.exec(folder);
  const reference = labelsTr ? joinUri(`${labelsTr[1]}/labelsTr`, id + ending) : undefined;
  const seg = reference && await exists(reference) ? reference : undefined;
  return {
    status: "ready",
    case: {
      id,
      naming: layout,
      images: Object.fromEntries(channels.map((c) => [c.name, c.uri])),
      channels,
      dataset: description,
      ...(seg ? { seg } : {}),
    },
  };
}

function gone(id: string, folder: string): DatasetResolution {
  return {
    status: "ignored",
    reason: `case "${id}" has no files under ${folder} (deleted since the event?)`,
  };
}
