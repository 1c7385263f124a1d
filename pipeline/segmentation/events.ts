/**
 * Which cases the records of an S3 event notification (s3_event.ts) complete: BraTS-named cases,
 * and the cases of nnU-Net v2 and MSD datasets under `imagesTr/` or `imagesTs/`, complete when
 * every channel the model takes is there (event_datasets.ts).
 *
 * Delivery is at least once and the service's own outputs land in a bucket too, so every record is
 * identified by its object version ({@linkcode S3ObjectEvent.dedupeKey}) and triaged before anything
 * is listed: only object-created events for case files outside the output prefix go on.
 * @module
 */
import {
  type Case,
  type CaseListing,
  type DatasetDescription,
  findCases,
  type Naming,
  parseCaseFileName,
} from "../cases/mod.ts";
import { listObjects, mapConcurrent, type ObjectInfo } from "../storage/mod.ts";
import { parseUri } from "../storage/mod.ts";
import { parseDatasetKey, resolveDatasetCase } from "./event_datasets.ts";
import { parseS3Event, type S3Event, type S3ObjectEvent } from "./s3_event.ts";

// ---------------------------------------------------------------------------------------------
// Triage: which records can start a case

/** Options of {@linkcode triageRecord} and {@linkcode casesFromEvent}. */
export interface EventFilterOptions {
  /**
   * Where outputs go. Objects under it are never inputs, so the service cannot trigger itself
   * even when its outputs land in the bucket it listens to.
   */
  out?: string;
  /** Only objects under this `s3://` prefix are inputs. @default every object */
  input?: string;
  /**
   * The dataset description of the model (training keeps it in the model file): the channels an
   * nnU-Net or MSD case needs before it is complete. @default a BraTS model's four modalities
   */
  dataset?: DatasetDescription;
}

/** A record that may complete a case: the case's folder and its name there. */
export interface CaseTarget {
  record: S3ObjectEvent;
  /** The object's folder, `s3://bucket/prefix/` (ending in '/'), listed to find the case. */
  folder: string;
  id: string;
  /** BraTS naming, or "nnunet" / "msd" for a dataset case's image (event_datasets.ts). */
  naming: Naming | "nnunet" | "msd";
  /** Which of the case's files the object is: a modality, "seg", an nnU-Net channel `0000`…. */
  part: string;
  /** A dataset case's image file ending (`.nii.gz` or `.nii`). */
  ending?: string;
}

/** A record that starts nothing, and why. */
export interface IgnoredRecord {
  key: string;
  reason: string;
}

const CASE_FILE_HINT =
  "not a BraTS case file (<id>_{flair,t1,t1ce,t2,seg}.nii[.gz] or <id>-{t2f,t1n,t1c,t2w,seg}.nii[.gz]) " +
  "nor a dataset case image (<case>_<NNNN>.nii[.gz] or <case>.nii[.gz] under imagesTr/ or imagesTs/)";

/**
 * Decides whether a record can complete a case, without any I/O.
 * @returns the case it belongs to, or why it is ignored
 */
export function triageRecord(
  record: S3ObjectEvent,
  options: EventFilterOptions = {},
): CaseTarget | IgnoredRecord {
  const ignore = (reason: string): IgnoredRecord => ({ key: record.uri, reason });
  if (!record.eventName.startsWith("ObjectCreated:")) {
    return ignore(`not an object-created event (${record.eventName})`);
  }
  if (options.out !== undefined && isUnder(record, options.out)) {
    return ignore(`under the output prefix ${options.out}`);
  }
  if (options.input !== undefined && !isUnder(record, options.input)) {
    return ignore(`outside the input prefix ${options.input}`);
  }
  const slash = record.key.lastIndexOf("/");
  const folder = `s3://${record.bucket}/${record.key.slice(0, slash + 1)}`;
  const parsed = parseCaseFileName(record.key.slice(slash + 1));
  if (parsed) return { record, folder, id: parsed.id, naming: parsed.naming, part: parsed.part };
  const file = parseDatasetKey(record.key, options.dataset?.layout);
  if (file === undefined) return ignore(CASE_FILE_HINT);
  if (typeof file === "string") return ignore(file);
  const { id, layout: naming, part, ending } = file;
  // A reference starts the case of the images beside it: imagesTr/ is listed.
  const images = part === "seg" ? folder.replace(/labelsTr\/$/, "imagesTr/") : folder;
  return { record, folder: images, id, naming, part, ending };
}

/**
 * Whether the record's object lies under an `s3://` prefix (a folder; local prefixes hold none),
 * judged on its URI as storage resolves it: the object that would be read, not the fields.
 */
function isUnder(record: S3ObjectEvent, prefixUri: string): boolean {
  const p = parseUri(prefixUri);
  const o = parseUri(record.uri);
  if (p.kind !== "s3" || o.kind !== "s3" || p.bucket !== o.bucket) return false;
  const prefix = p.key === "" || p.key.endsWith("/") ? p.key : p.key + "/";
  return o.key.startsWith(prefix);
}

// ---------------------------------------------------------------------------------------------
// Resolution: is the case complete?

/**
 * What listing a case's folder found. `unusable` marks an ignored case that discovery refused (two
 * files for one modality, modalities on different grids, ...), as opposed to one whose files are
 * gone (answered "ignored"): the service and `segment --event` fail the first as `segment` does,
 * with an error record.
 */
export type CaseResolution =
  | { status: "ready"; case: Case }
  | { status: "waiting"; reason: string }
  | { status: "ignored"; reason: string; unusable?: true };

/**
 * Lists the target's folder (with {@linkcode findCases}, headers unchecked: segmentation reads
 * and checks them) and reports whether its case has all four modalities; for an nnU-Net or MSD
 * case, every channel `options.dataset` (the model's) names (event_datasets.ts).
 * A folder that is part of a flat layout lists every case in it; only the target's case is kept.
 * @throws when the folder cannot be listed (storage errors pass through)
 */
export async function resolveCase(
  target: CaseTarget,
  options: EventFilterOptions = {},
): Promise<CaseResolution> {
  return (await resolveCases([target], options))[0];
}

/**
 * Resolves many targets, listing each folder once however many of its cases they name (a flat
 * layout's folder holds every case: one record per case would otherwise list it once per case).
 * @returns each target's resolution, in order
 * @throws when a folder cannot be listed (storage errors pass through)
 */
export async function resolveCases(
  targets: readonly CaseTarget[],
  options: EventFilterOptions = {},
): Promise<CaseResolution[]> {
  const isDataset = (t: CaseTarget) => t.naming === "nnunet" || t.naming === "msd";
  const folders = [...new Set(targets.filter((t) => !isDataset(t)).map((t) => t.folder))];
  const listings = new Map(
    await mapConcurrent(
      folders,
      8,
      async (f) => [f, await findCases(f, { checkHeaders: false })] as const,
    ),
  );
  // A dataset case's folder is listed as it is: the model, not the folder, says what it needs.
  const datasetFolders = [...new Set(targets.filter(isDataset).map((t) => t.folder))];
  const objects = new Map<string, ObjectInfo[]>(
    await mapConcurrent(datasetFolders, 8, async (f) => [f, await listObjects(f)] as const),
  );
  return await mapConcurrent(targets, 8, (t) =>
    isDataset(t)
      ? resolveDatasetCase(
        { id: t.id, layout: t.naming as "nnunet" | "msd", part: t.part, ending: t.ending! },
        t.folder,
        objects.get(t.folder)!,
        options.dataset,
      )
      : Promise.resolve(resolveFromListing(t, listings.get(t.folder)!)));
}

function resolveFromListing(target: CaseTarget, listing: CaseListing): CaseResolution {
  const { cases, problems } = listing;
  const found = cases.find((c) => c.id === target.id && c.naming === target.naming);
  if (found) return { status: "ready", case: found };
  const problem = problems.find((p) => p.id === target.id);
  if (problem?.error.includes("missing modality")) {
    return { status: "waiting", reason: problem.error };
  }
  if (problem) return { status: "ignored", reason: problem.error, unusable: true };
  return {
    status: "ignored",
    reason: `case "${target.id}" has no files under ${target.folder} (deleted since the event?)`,
  };
}

/** A case whose last input has arrived. */
export interface EventCase {
  /** The case id. */
  id: string;
  /** The folder listed to find it (`s3://bucket/prefix/`). */
  caseUri: string;
  /** The case, ready for segmentation. */
  case: Case;
  /** The records that led to it. */
  records: S3ObjectEvent[];
}

/** A case that still misses a modality; the event for the last one will start it. */
export interface WaitingCase {
  id: string;
  caseUri: string;
  key: string;
  reason: string;
}

/** A case an event names whose files discovery refuses (the batch path's problems). */
export interface UnusableCase {
  id: string;
  caseUri: string;
  /** The record's object, `s3://bucket/key`. */
  key: string;
  reason: string;
}

/** What {@linkcode casesFromEvent} found in one notification. */
export interface EventCases {
  /** "records" for object events; "test" and "subscription" messages start nothing. */
  kind: S3Event["kind"];
  cases: EventCase[];
  waiting: WaitingCase[];
  /** Cases whose folder holds them in a form that cannot be segmented, one entry per record. */
  unusable: UnusableCase[];
  ignored: IgnoredRecord[];
}

/**
 * The cases an event notification completes: parses it, ignores records that cannot start a case
 * (see {@linkcode triageRecord}), lists each remaining folder once, and sorts cases into
 * ready, waiting and unusable (a case discovery refuses, e.g. two files for one modality).
 * @param event the notification body (JSON text, bytes or the parsed value)
 * @throws {SyntaxError} a `MalformedEventError` for a body in no known shape; storage errors from listing
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { casesFromEvent } from "./events.ts";
 * // The service's own output arriving: ignored before any folder is listed.
 * const key = "seg/BraTS2021_00001.nii.gz";
 * const event = {
 *   Records: [{ eventName: "ObjectCreated:Put", s3: { bucket: { name: "brats" }, object: { key } } }],
 * };
 * const { cases, ignored } = await casesFromEvent(event, { out: "s3://brats/seg/" });
 * assertEquals(cases, []);
 * assertEquals(ignored.map((i) => i.key), ["s3://brats/seg/BraTS2021_00001.nii.gz"]);
 * ```
 */
export async function casesFromEvent(
  event: unknown,
  options: EventFilterOptions = {},
): Promise<EventCases> {
  const parsed = parseS3Event(event);
  const result: EventCases = {
    kind: parsed.kind,
    cases: [],
    waiting: [],
    unusable: [],
    ignored: [],
  };
  if (parsed.kind !== "records") return result;
  const groups = new Map<string, CaseTarget[]>();
  for (const record of parsed.records) {
    const t = triageRecord(record, options);
    if (!("id" in t)) {
      result.ignored.push(t);
      continue;
    }
    const k = caseKeyOf(t);
    groups.set(k, [...(groups.get(k) ?? []), t]);
  }
  const groupList = [...groups.values()];
  const resolutions = await resolveCases(groupList.map((ts) => ts[0]), options);
  for (const [i, targets] of groupList.entries()) {
    const r = resolutions[i];
    const { id, folder } = targets[0];
    const records = targets.map((t) => t.record);
    if (r.status === "ready") result.cases.push({ id, caseUri: folder, case: r.case, records });
    else if (r.status === "waiting") {
      for (const rec of records) {
        result.waiting.push({ id, caseUri: folder, key: rec.uri, reason: r.reason });
      }
    } else if (r.status === "ignored" && r.unusable) {
      for (const rec of records) {
        result.unusable.push({ id, caseUri: folder, key: rec.uri, reason: r.reason });
      }
    } else for (const rec of records) result.ignored.push({ key: rec.uri, reason: r.reason });
  }
  return result;
}

/** One string per case: its folder, naming and id. */
export function caseKeyOf(t: CaseTarget): string {
  return JSON.stringify([t.folder, t.naming, t.id]);
}
