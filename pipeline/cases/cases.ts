/**
 * BraTS cases: finding each case's four modalities and optional segmentation under a dataset URI.
 *
 * Two naming schemes are recognised, `.nii` or `.nii.gz`, one folder per case or all files flat:
 * - `brats2021` (2018–2021): `<id>_{flair,t1,t1ce,t2,seg}`, enhancing tumor labelled 4;
 * - `brats2023` (2023 and later): `<id>-{t2f,t1n,t1c,t2w,seg}`, enhancing tumor labelled 3.
 *
 * A location with a `dataset.json` (an nnU-Net v2 raw dataset or an MSD task, or its `imagesTr`
 * or `imagesTs` folder) is read as that dataset says, and a folder of bare nnU-Net image files
 * (`<case>_0000.nii.gz`, …) as one such folder: see pipeline/cases/datasets.ts.
 * @module
 */
import { decodeNiftiHeader, isGzip, type NiftiHeader } from "../nifti/mod.ts";
import {
  bratsDataset,
  type DatasetDescription,
  datasetRoots,
  findBareCases,
  findDatasetCases,
  isBraTS,
  labelScheme,
  type Layout,
} from "./datasets.ts";
import {
  emptyFolderReason,
  getObject,
  getObjectRange,
  listObjects,
  mapConcurrent,
} from "../storage/mod.ts";

/** The four MRI sequences, in the order the network takes them as input channels. */
export const MODALITIES = ["flair", "t1", "t1ce", "t2"] as const;
/** One MRI sequence of a case. */
export type Modality = typeof MODALITIES[number];

/** The file naming scheme of a BraTS release. */
export type Naming = "brats2021" | "brats2023";

/** Suffix of each modality (and the segmentation) in each naming scheme. */
export const SUFFIXES: Record<Naming, Record<Modality | "seg", string>> = {
  brats2021: { flair: "flair", t1: "t1", t1ce: "t1ce", t2: "t2", seg: "seg" },
  brats2023: { flair: "t2f", t1: "t1n", t1ce: "t1c", t2: "t2w", seg: "seg" },
};

/** Label of enhancing tumor in each naming scheme's segmentations. */
export const ENHANCING_LABEL: Record<Naming, 3 | 4> = { brats2021: 4, brats2023: 3 };

/** One input channel of a case: its name, its file, and for a 4-D file (MSD) its volume. */
export interface ChannelFile {
  name: string;
  uri: string;
  /** Index along the file's 4th dimension, for a file holding every channel. */
  volume?: number;
}

/** One case: where its volumes are. */
export interface Case {
  /** The case id, the file name before the modality suffix, e.g. `BraTS20_Training_001`. */
  id: string;
  naming: Layout;
  /**
   * Label of enhancing tumor in a BraTS case's segmentation convention: 4 (2018–2021) or 3
   * (2023+). Absent for other layouts, whose labels `dataset` describes.
   */
  enhancingLabel?: 3 | 4;
  /** URI of each channel's volume by name: for BraTS namings, of each modality. */
  images: Record<string, string>;
  /** The input channels in network order, for layouts other than BraTS (see {@linkcode caseChannels}). */
  channels?: ChannelFile[];
  /** The dataset's description, for layouts other than BraTS (see {@linkcode caseDataset}). */
  dataset?: DatasetDescription;
  /** URI of the reference segmentation, when the case has one. */
  seg?: string;
  /** Voxels along x, y, z, when headers were checked. */
  shape?: number[];
  /** Voxel size in millimetres along x, y, z, when headers were checked. */
  spacing?: number[];
}

/** A case that could not be used, and why. */
export interface CaseProblem {
  id: string;
  error: string;
}

/** The outcome of {@linkcode findCases}: usable cases and the reasons others were left out. */
export interface CaseListing {
  cases: Case[];
  problems: CaseProblem[];
}

interface ParsedName {
  id: string;
  naming: Naming;
  part: Modality | "seg";
}

const PATTERNS: { naming: Naming; re: RegExp }[] = [
  { naming: "brats2021", re: /^(.+)_(flair|t1ce|t1|t2|seg)\.nii(?:\.gz)?$/ },
  { naming: "brats2023", re: /^(.+)-(t2f|t1n|t1c|t2w|seg)\.nii(?:\.gz)?$/ },
];

/**
 * Recognises a BraTS file name (the last path segment). Hidden names (starting with ".") are not.
 * @returns the case id, naming scheme and modality (or `"seg"`), or undefined for other files.
 * @example
 * ```ts
 * import { parseCaseFileName } from "./cases.ts";
 * parseCaseFileName("BraTS-GLI-00000-000-t1c.nii.gz"); // { id: "BraTS-GLI-00000-000", naming: "brats2023", part: "t1ce" }
 * ```
 */
export function parseCaseFileName(fileName: string): ParsedName | undefined {
  // Hidden files are never volumes: macOS archives carry "._<name>" resource forks of every file.
  if (fileName.startsWith(".")) return undefined;
  for (const { naming, re } of PATTERNS) {
    const m = re.exec(fileName);
    if (!m) continue;
    const suffix = m[2];
    const part = (Object.keys(SUFFIXES[naming]) as (Modality | "seg")[])
      .find((k) => SUFFIXES[naming][k] === suffix)!;
    return { id: m[1], naming, part };
  }
  return undefined;
}

/** A case's input channels in network order: its four modalities for BraTS namings. */
export function caseChannels(c: Case): ChannelFile[] {
  return c.channels ?? MODALITIES.map((m) => ({ name: m, uri: c.images[m] }));
}

/** What a case's dataset holds: its own description, or its BraTS naming's. */
export function caseDataset(c: Case): DatasetDescription {
  return c.dataset ??
    bratsDataset(c.naming === "brats2023" ? "brats2023" : "brats2021");
}

/**
 * The network a dataset asks for: its channels in, its regions out (WT, TC, ET for BraTS), from
 * its first case (headers unread).
 * @throws {Error} a location without cases, as {@linkcode findCases} with `required`
 */
export async function datasetShape(
  uri: string,
): Promise<{ inChannels: number; outChannels: number; channels: string[]; regions: string[] }> {
  const { cases, problems } = await findCases(uri, { checkHeaders: false, required: true });
  const first = cases[0];
  if (!first) {
    throw new Error(`No usable case under "${uri}": ${problems.map((p) => p.error).join("; ")}`);
  }
  const d = caseDataset(first);
  const regions = isBraTS(d) ? ["WT", "TC", "ET"] : labelScheme(d, uri).regions.map((r) => r.name);
  return {
    inChannels: d.channels.length,
    outChannels: regions.length,
    channels: d.channels,
    regions,
  };
}

/** Options of {@linkcode findCases}. */
export interface FindCasesOptions {
  /**
   * Read each volume's header and check that the modalities of a case share dims and affine.
   * @default true
   */
  checkHeaders?: boolean;
  /** Reads in flight at once. @default 8 */
  concurrency?: number;
  /** Largest difference allowed between two modalities' affine entries (mm). @default 1e-3 */
  affineTolerance?: number;
  /**
   * A location without any BraTS case file is an error saying why: the folder does not exist, is
   * empty, or holds only other files (some named, with the names expected).
   * @default false
   */
  required?: boolean;
}

/** How BraTS case files are named, for messages about a location without any. */
export const CASE_FILE_NAMES = "<id>_{flair,t1,t1ce,t2,seg}.nii[.gz] (2018-2021, e.g. " +
  "BraTS2021_00000_flair.nii.gz) or <id>-{t2f,t1n,t1c,t2w,seg}.nii[.gz] (2023+, e.g. " +
  "BraTS-GLI-00000-000-t2f.nii.gz), one folder per case or flat; or a dataset.json " +
  "(nnU-Net v2 or MSD) with its imagesTr/labelsTr/imagesTs; or <case>_0000.nii.gz files";

/**
 * Lists the BraTS cases under `datasetUri` (an `s3://` prefix or a local folder), recursively.
 * A case with a missing modality, duplicate files, or modalities whose shapes or affines disagree
 * is reported in `problems`; the other cases are still listed.
 */
export async function findCases(
  datasetUri: string,
  options: FindCasesOptions = {},
): Promise<CaseListing> {
  const { checkHeaders = true, concurrency = 8, affineTolerance = 1e-3, required = false } =
    options;
  let objects = await listObjects(datasetUri);
  // A dataset.json at the location, or above its imagesTr/imagesTs, describes the dataset.
  let described:
    | { description: DatasetDescription; cases: Case[]; problems: CaseProblem[] }
    | undefined;
  if (objects.some((o) => o.key === "dataset.json")) {
    described = await findDatasetCases(datasetUri, objects);
  } else {
    const up = datasetRoots(datasetUri);
    if (up && objects.length > 0) {
      const above = await listObjects(up.root).catch(() => []);
      if (above.some((o) => o.key === "dataset.json")) {
        objects = above;
        described = await findDatasetCases(up.root, above, { only: up.only });
      }
    }
  }
  if (described) {
    return await checkedListing(
      described.cases,
      [...described.problems],
      checkHeaders,
      concurrency,
      affineTolerance,
    );
  }
  if (required && objects.length === 0) {
    throw new Error(
      `No BraTS cases under "${datasetUri}": ${await emptyFolderReason(
        datasetUri,
      )}; expected ${CASE_FILE_NAMES}`,
    );
  }
  const groups = new Map<string, { naming: Naming; files: Map<Modality | "seg", string[]> }>();
  for (const obj of objects) {
    const parsed = parseCaseFileName(obj.key.split("/").pop()!);
    if (!parsed) continue;
    const key = `${parsed.naming}:${parsed.id}`;
    let group = groups.get(key);
    if (!group) groups.set(key, group = { naming: parsed.naming, files: new Map() });
    const list = group.files.get(parsed.part) ?? [];
    list.push(obj.uri);
    group.files.set(parsed.part, list);
  }

  if (groups.size === 0) {
    // Bare nnU-Net image files: as many channels as their indices say, named by index.
    const bare = findBareCases(datasetUri, objects);
    if (bare) {
      return await checkedListing(
        bare.cases,
        bare.problems,
        checkHeaders,
        concurrency,
        affineTolerance,
      );
    }
  }
  if (required && groups.size === 0) {
    const names = objects.slice(0, 3).map((o) => `"${o.key}"`).join(", ");
    throw new Error(
      `No BraTS cases under "${datasetUri}": it holds ${objects.length} file${
        objects.length === 1 ? "" : "s"
      }, none named as a case file (${names}${
        objects.length > 3 ? ", ..." : ""
      }); expected ${CASE_FILE_NAMES}`,
    );
  }

  const problems: CaseProblem[] = [];
  const candidates: Case[] = [];
  for (const [key, group] of groups) {
    const id = key.slice(key.indexOf(":") + 1);
    const suffixes = SUFFIXES[group.naming];
    const duplicated = [...group.files].filter(([, uris]) => uris.length > 1);
    if (duplicated.length > 0) {
      problems.push({
        id,
        error: `case "${id}": more than one file for ${
          duplicated.map(([part, uris]) => `${part} (${uris.join(", ")})`).join("; ")
        }`,
      });
      continue;
    }
    const missing = MODALITIES.filter((m) => !group.files.has(m));
    if (missing.length > 0) {
      // Name the missing files with the extension the case's other files use.
      const ext = [...group.files.values()][0][0].endsWith(".gz") ? ".nii.gz" : ".nii";
      problems.push({
        id,
        error: `case "${id}" in ${datasetUri}: missing modality ${
          missing.map((m) =>
            `${m} (${id}${group.naming === "brats2021" ? "_" : "-"}${suffixes[m]}${ext})`
          )
            .join(", ")
        }`,
      });
      continue;
    }
    const images = Object.fromEntries(MODALITIES.map((m) => [m, group.files.get(m)![0]])) as Record<
      Modality,
      string
    >;
    const seg = group.files.get("seg")?.[0];
    candidates.push({
      id,
      naming: group.naming,
      enhancingLabel: ENHANCING_LABEL[group.naming],
      images,
      ...(seg ? { seg } : {}),
    });
  }

  return await checkedListing(candidates, problems, checkHeaders, concurrency, affineTolerance);
}

/** The cases whose grids check (when asked), sorted, and the problems of the others. */
async function checkedListing(
  candidates: Case[],
  problems: CaseProblem[],
  checkHeaders: boolean,
  concurrency: number,
  affineTolerance: number,
): Promise<CaseListing> {
  let cases = candidates;
  if (checkHeaders) {
    const checked = await mapConcurrent(candidates, Math.max(1, concurrency), async (c) => {
      try {
        return await checkCaseGrid(c, affineTolerance);
      } catch (e) {
        const message = (e as Error).message;
        // Errors from reading a volume name its file; say which case it belongs to as well.
        const prefix = `case "${c.id}": `;
        problems.push({ id: c.id, error: message.startsWith(prefix) ? message : prefix + message });
        return undefined;
      }
    });
    cases = checked.filter((c): c is Case => c !== undefined);
  }
  cases.sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  problems.sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  return { cases, problems };
}

/**
 * Reads the header of a NIfTI object, downloading only its beginning when that suffices.
 * @param uri the object's URI, named in errors
 */
export async function readNiftiHeader(uri: string): Promise<NiftiHeader> {
  // A gzip stream's first few KiB inflate to far more than the 540 bytes of a NIfTI-2 header.
  const prefix = await getObjectRange(uri, 0, 16384);
  try {
    return decodeNiftiHeader(prefix, uri);
  } catch (e) {
    // Only a gzip stream (e.g. one with long name or extra fields) can need more than the prefix;
    // an uncompressed file that fails here is broken, and downloading all of it would not help.
    if (prefix.length < 16384 || !isGzip(prefix)) throw e;
    return decodeNiftiHeader(await getObject(uri), uri);
  }
}

async function checkCaseGrid(c: Case, tolerance: number): Promise<Case> {
  // A 4-D file holding every channel (MSD) is read once and checked to hold them all.
  const channels = caseChannels(c).filter((ch, k, all) =>
    all.findIndex((o) => o.uri === ch.uri) === k
  );
  const parts: [string, string][] = [
    ...channels.map((ch) => [ch.name, ch.uri] as [string, string]),
    ...(c.seg ? [["seg", c.seg] as [string, string]] : []),
  ];
  const headers = await Promise.all(parts.map(([, uri]) => readNiftiHeader(uri)));
  const [refName] = parts[0];
  const ref = headers[0];
  const shape = ref.dims.slice(0, 3);
  const volumes = c.channels?.[0]?.volume !== undefined ? caseChannels(c).length : 1;
  if (volumes > 1) {
    if (ref.dims.length !== 4 || ref.dims[3] !== volumes) {
      throw new RangeError(
        `case "${c.id}": ${parts[0][1]} must be 4D with its ${volumes} channels (${
          caseChannels(c).map((ch) => ch.name).join(", ")
        }) along the 4th dimension, found dims [${ref.dims}]`,
      );
    }
  } else if (ref.dims.length !== 3 && !(ref.dims.length === 4 && ref.dims[3] === 1)) {
    throw new RangeError(
      `case "${c.id}": ${refName} volume ${parts[0][1]} must be 3D, found dims [${ref.dims}]`,
    );
  }
  for (let i = 1; i < parts.length; i++) {
    const [name, uri] = parts[i];
    const h = headers[i];
    const extra = volumes > 1 && name !== "seg" ? h.dims.slice(4) : h.dims.slice(3);
    if (h.dims.slice(0, 3).join() !== shape.join() || extra.some((d) => d !== 1)) {
      throw new RangeError(
        `case "${c.id}": ${name} (${uri}) has dims [${h.dims}] but ${refName} has [${ref.dims}]`,
      );
    }
    const diff = maxAbsDiff(h.affine, ref.affine);
    if (diff > tolerance) {
      throw new RangeError(
        `case "${c.id}": the affine of ${name} (${uri}) differs from ${refName}'s by ${
          diff.toPrecision(3)
        } mm (tolerance ${tolerance}); the modalities must be co-registered on one grid`,
      );
    }
  }
  return { ...c, shape, spacing: ref.pixdim.slice(0, 3) };
}

function maxAbsDiff(a: number[][], b: number[][]): number {
  let m = 0;
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 4; j++) m = Math.max(m, Math.abs(a[i][j] - b[i][j]));
  }
  return m;
}
