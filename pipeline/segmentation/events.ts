/**
 * S3 event notifications: which BraTS cases a new object completes.
 *
 * Understood shapes:
 * - Amazon S3's `{ "Records": [{ "eventName": "ObjectCreated:Put", "s3": { "bucket": { "name" },
 *   "object": { "key", "eTag", "sequencer", "versionId" } } }] }`, with the key URL-encoded and
 *   spaces as '+', and its `s3:TestEvent` message;
 * - the same delivered through SNS (`{ "Type": "Notification", "Message": "<that JSON>" }`) and SNS's
 *   subscription confirmations;
 * - MinIO's webhook payload (`EventName: "s3:ObjectCreated:Put"`, `Key: "bucket/key"`, `Records`);
 * - EventBridge's `Object Created` events (`detail.bucket.name`, `detail.object.key`, not encoded).
 *
 * Delivery is at least once and the service's own outputs land in a bucket too, so every record is
 * identified by its object version ({@linkcode S3ObjectEvent.dedupeKey}) and triaged before anything
 * is listed: only object-created events for BraTS case files outside the output prefix go on.
 * @module
 */
import {
  type Case,
  type CaseListing,
  findCases,
  type Naming,
  parseCaseFileName,
} from "../cases/mod.ts";
import { mapConcurrent } from "../storage/mod.ts";
import { parseUri } from "../storage/mod.ts";

/** Thrown for a body that is not an S3 event notification in a shape this module knows. */
export class MalformedEventError extends SyntaxError {
  override name = "MalformedEventError";
}

/**
 * Records accepted in one notification. Amazon S3 sends one record per event and SNS and
 * EventBridge deliver one message each; a body with more is refused whole
 * ({@linkcode TooManyRecordsError}), before anything is listed.
 */
export const MAX_EVENT_RECORDS = 100;

/** Thrown for a notification with more than {@linkcode MAX_EVENT_RECORDS} records. */
export class TooManyRecordsError extends MalformedEventError {
  override name = "TooManyRecordsError";
  constructor(readonly count: number, readonly limit = MAX_EVENT_RECORDS) {
    super(
      `S3 event has ${count} records; at most ${limit} are accepted per event (S3 sends one ` +
        `record per event): split it`,
    );
  }
}

/** One record of an event notification: an object version that was created (or removed, …). */
export interface S3ObjectEvent {
  /** The event name without MinIO's "s3:" prefix, e.g. "ObjectCreated:Put". */
  eventName: string;
  bucket: string;
  /** The object key, decoded. */
  key: string;
  /** `s3://bucket/key`. */
  uri: string;
  eTag?: string;
  sequencer?: string;
  versionId?: string;
  size?: number;
  /** Bucket, key and whatever identifies the version (versionId, sequencer, ETag), as one string. */
  dedupeKey: string;
}

/** A parsed notification body. */
export type S3Event =
  | { kind: "records"; records: S3ObjectEvent[] }
  /** Amazon S3's `s3:TestEvent`, sent when a notification configuration is saved. */
  | { kind: "test"; bucket?: string }
  /** An SNS subscription (or unsubscribe) confirmation: visit `subscribeUrl` to confirm. */
  | { kind: "subscription"; type: string; topicArn?: string; subscribeUrl?: string };

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Decodes an S3 event's object key: URL-encoded, with '+' for a space.
 * @throws {MalformedEventError} for a broken %-escape
 * @example
 * ```ts
 * import { decodeS3Key } from "./events.ts";
 * decodeS3Key("BraTS+2021/case%2B1_t1.nii.gz"); // "BraTS 2021/case+1_t1.nii.gz"
 * ```
 */
export function decodeS3Key(raw: string): string {
  try {
    return decodeURIComponent(raw.replace(/\+/g, " "));
  } catch (e) {
    throw new MalformedEventError(`S3 event object key "${raw}" is not validly URL-encoded`, {
      cause: e,
    });
  }
}

/**
 * Parses a notification body (a JSON string, its bytes, or the parsed value) in any of the shapes
 * the module doc lists.
 * @throws {MalformedEventError} naming the field that is missing or has the wrong type
 */
export function parseS3Event(body: unknown): S3Event {
  return parseValue(toJson(body, "S3 event"), 0);
}

function toJson(body: unknown, what: string): unknown {
  if (body instanceof Uint8Array) body = new TextDecoder().decode(body);
  if (typeof body !== "string") return body;
  try {
    return JSON.parse(body);
  } catch (e) {
    throw new MalformedEventError(`${what} is not JSON: ${(e as Error).message}`, { cause: e });
  }
}

function parseValue(event: unknown, depth: number): S3Event {
  if (!isObject(event)) {
    throw new MalformedEventError(
      `S3 event must be a JSON object, found ${Array.isArray(event) ? "an array" : typeof event}`,
    );
  }
  // SNS wraps the S3 message as a string in "Message".
  if (typeof event.Type === "string" && depth === 0) {
    if (event.Type === "Notification") {
      if (typeof event.Message !== "string") {
        throw new MalformedEventError(`SNS notification has no "Message" string`);
      }
      return parseValue(toJson(event.Message, "SNS notification's Message"), depth + 1);
    }
    if (event.Type === "SubscriptionConfirmation" || event.Type === "UnsubscribeConfirmation") {
      return {
        kind: "subscription",
        type: event.Type,
        ...(typeof event.TopicArn === "string" ? { topicArn: event.TopicArn } : {}),
        ...(typeof event.SubscribeURL === "string" ? { subscribeUrl: event.SubscribeURL } : {}),
      };
    }
    throw new MalformedEventError(`SNS message Type "${event.Type}" is not understood`);
  }
  if (event.Event === "s3:TestEvent") {
    return { kind: "test", ...(typeof event.Bucket === "string" ? { bucket: event.Bucket } : {}) };
  }
  if (event.source === "aws.s3" && isObject(event.detail)) {
    return { kind: "records", records: [eventBridgeRecord(event)] };
  }
  if (event.Records === undefined && typeof event.EventName === "string") {
    // MinIO's payload without records: Key is "bucket/key", already decoded.
    if (typeof event.Key !== "string" || !event.Key.includes("/")) {
      throw new MalformedEventError(
        `MinIO event "Key" must be "bucket/key", found ${str(event.Key)}`,
      );
    }
    const slash = event.Key.indexOf("/");
    return {
      kind: "records",
      records: [
        record(
          event.EventName,
          event.Key.slice(0, slash),
          event.Key.slice(slash + 1),
          {},
          "MinIO event Key's",
        ),
      ],
    };
  }
  if (!Array.isArray(event.Records)) {
    throw new MalformedEventError(
      `S3 event has no "Records" array (nor is it an s3:TestEvent, SNS or MinIO message)`,
    );
  }
  if (event.Records.length === 0) throw new MalformedEventError(`S3 event has no records`);
  if (event.Records.length > MAX_EVENT_RECORDS) throw new TooManyRecordsError(event.Records.length);
  return { kind: "records", records: event.Records.map((r, i) => s3Record(r, i)) };
}

function str(v: unknown): string {
  return v === undefined ? "nothing" : JSON.stringify(v);
}

function s3Record(r: unknown, i: number): S3ObjectEvent {
  const where = `S3 event Records[${i}]`;
  if (!isObject(r)) throw new MalformedEventError(`${where} must be an object, found ${str(r)}`);
  if (typeof r.eventName !== "string") {
    throw new MalformedEventError(`${where}.eventName must be a string, found ${str(r.eventName)}`);
  }
  const s3 = r.s3;
  const bucket = isObject(s3) && isObject(s3.bucket) ? s3.bucket.name : undefined;
  const object = isObject(s3) && isObject(s3.object) ? s3.object : undefined;
  if (typeof bucket !== "string" || bucket === "") {
    throw new MalformedEventError(`${where}.s3.bucket.name must be a non-empty string`);
  }
  if (!object || typeof object.key !== "string" || object.key === "") {
    throw new MalformedEventError(`${where}.s3.object.key must be a non-empty string`);
  }
  return record(r.eventName, bucket, decodeS3Key(object.key), object, `${where}.s3.bucket.name:`);
}

function eventBridgeRecord(event: Json): S3ObjectEvent {
  const detail = event.detail as Json;
  const bucket = isObject(detail.bucket) ? detail.bucket.name : undefined;
  const object = isObject(detail.object) ? detail.object : undefined;
  if (typeof bucket !== "string" || bucket === "") {
    throw new MalformedEventError(`EventBridge S3 event detail.bucket.name must be a string`);
  }
  if (!object || typeof object.key !== "string" || object.key === "") {
    throw new MalformedEventError(`EventBridge S3 event detail.object.key must be a string`);
  }
  // "Object Created" → "ObjectCreated:" so it triages like a notification; keys are not encoded.
  const type = String(event["detail-type"] ?? "");
  const name = type === "Object Created" ? `ObjectCreated:${String(detail.reason ?? "")}` : type;
  return record(
    name,
    bucket,
    object.key,
    { ...object, eTag: object.etag },
    "EventBridge S3 event detail.bucket.name:",
  );
}

/**
 * Why `name` cannot be an S3 bucket name (S3's rules for general purpose buckets, which MinIO
 * follows too), or undefined when it can be one.
 * @example
 * ```ts
 * import { bucketNameProblem } from "./events.ts";
 * bucketNameProblem("brats"); // undefined
 * bucketNameProblem("brats/seg"); // "may contain only a-z, 0-9, '.' and '-'"
 * ```
 */
export function bucketNameProblem(name: string): string | undefined {
  if (name.length < 3 || name.length > 63) {
    return `must be 3 to 63 characters, found ${name.length}`;
  }
  if (!/^[a-z0-9.-]+$/.test(name)) return "may contain only a-z, 0-9, '.' and '-'";
  if (!/^[a-z0-9].*[a-z0-9]$/.test(name)) return "must begin and end with a letter or digit";
  if (name.includes("..")) return "may not contain two adjacent periods";
  if (/^\d+\.\d+\.\d+\.\d+$/.test(name)) return "may not be formatted as an IP address";
  const prefix = ["xn--", "sthree-", "amzn-s3-demo-"].find((p) => name.startsWith(p));
  if (prefix) return `may not begin with "${prefix}"`;
  const suffix = ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"].find((s) =>
    name.endsWith(s)
  );
  if (suffix) return `may not end with "${suffix}"`;
  return undefined;
}

function record(
  eventName: string,
  bucket: string,
  key: string,
  object: Json,
  where: string,
): S3ObjectEvent {
  // A bucket name with a '/' would resolve to another bucket and key than the record names (and
  // slip past the output-prefix rule): S3 never sends one, so the event is malformed.
  const problem = bucketNameProblem(bucket);
  if (problem) {
    throw new MalformedEventError(
      `${where} bucket name ${JSON.stringify(bucket)} is not a valid S3 bucket name: ${problem}`,
    );
  }
  const opt = (v: unknown) => typeof v === "string" && v !== "" ? v : undefined;
  const eTag = opt(object.eTag)?.replace(/^"|"$/g, "");
  const sequencer = opt(object.sequencer);
  const versionId = opt(object.versionId);
  const size = typeof object.size === "number" ? object.size : undefined;
  return {
    eventName: eventName.replace(/^s3:/, ""),
    bucket,
    key,
    uri: `s3://${bucket}/${key}`,
    ...(eTag ? { eTag } : {}),
    ...(sequencer ? { sequencer } : {}),
    ...(versionId ? { versionId } : {}),
    ...(size !== undefined ? { size } : {}),
    dedupeKey: JSON.stringify([bucket, key, versionId ?? "", sequencer ?? "", eTag ?? ""]),
  };
}

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
}

/** A record that may complete a case: the case's folder and its name there. */
export interface CaseTarget {
  record: S3ObjectEvent;
  /** The object's folder, `s3://bucket/prefix/` (ending in '/'), listed to find the case. */
  folder: string;
  id: string;
  naming: Naming;
  /** Which of the case's files the object is. */
  part: string;
}

/** A record that starts nothing, and why. */
export interface IgnoredRecord {
  key: string;
  reason: string;
}

const CASE_FILE_HINT =
  "not a BraTS case file (<id>_{flair,t1,t1ce,t2,seg}.nii[.gz] or <id>-{t2f,t1n,t1c,t2w,seg}.nii[.gz])";

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
  const parsed = parseCaseFileName(record.key.slice(slash + 1));
  if (!parsed) return ignore(CASE_FILE_HINT);
  return {
    record,
    folder: `s3://${record.bucket}/${record.key.slice(0, slash + 1)}`,
    id: parsed.id,
    naming: parsed.naming,
    part: parsed.part,
  };
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

/** What listing a case's folder found. */
export type CaseResolution =
  | { status: "ready"; case: Case }
  | { status: "waiting"; reason: string }
  | { status: "ignored"; reason: string };

/**
 * Lists the target's folder (with {@linkcode findCases}, headers unchecked: segmentation reads
 * and checks them) and reports whether its case has all four modalities.
 * A folder that is part of a flat layout lists every case in it; only the target's case is kept.
 * @throws when the folder cannot be listed (storage errors pass through)
 */
export async function resolveCase(target: CaseTarget): Promise<CaseResolution> {
  return resolveFromListing(target, await findCases(target.folder, { checkHeaders: false }));
}

/**
 * Resolves many targets, listing each folder once however many of its cases they name (a flat
 * layout's folder holds every case: one record per case would otherwise list it once per case).
 * @returns each target's resolution, in order
 * @throws when a folder cannot be listed (storage errors pass through)
 */
export async function resolveCases(targets: readonly CaseTarget[]): Promise<CaseResolution[]> {
  const folders = [...new Set(targets.map((t) => t.folder))];
  const listings = new Map(
    await mapConcurrent(
      folders,
      8,
      async (f) => [f, await findCases(f, { checkHeaders: false })] as const,
    ),
  );
  return targets.map((t) => resolveFromListing(t, listings.get(t.folder)!));
}

function resolveFromListing(target: CaseTarget, listing: CaseListing): CaseResolution {
  const { cases, problems } = listing;
  const found = cases.find((c) => c.id === target.id && c.naming === target.naming);
  if (found) return { status: "ready", case: found };
  const problem = problems.find((p) => p.id === target.id);
  if (problem?.error.includes("missing modality")) {
    return { status: "waiting", reason: problem.error };
  }
  if (problem) return { status: "ignored", reason: problem.error };
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

/** What {@linkcode casesFromEvent} found in one notification. */
export interface EventCases {
  /** "records" for object events; "test" and "subscription" messages start nothing. */
  kind: S3Event["kind"];
  cases: EventCase[];
  waiting: WaitingCase[];
  ignored: IgnoredRecord[];
}

/**
 * The cases an event notification completes: parses it, ignores records that cannot start a case
 * (see {@linkcode triageRecord}), lists each remaining folder once, and sorts cases into
 * ready and waiting.
 * @param event the notification body (JSON text, bytes or the parsed value)
 * @throws {MalformedEventError} for a body in no known shape; storage errors from listing
 * @example
 * ```ts ignore
 * import { casesFromEvent } from "./pipeline/events.ts";
 * const event = JSON.parse(await Deno.readTextFile("event.json"));
 * const { cases, ignored } = await casesFromEvent(event, { out: "s3://brats/seg/" });
 * ```
 */
export async function casesFromEvent(
  event: unknown,
  options: EventFilterOptions = {},
): Promise<EventCases> {
  const parsed = parseS3Event(event);
  const result: EventCases = { kind: parsed.kind, cases: [], waiting: [], ignored: [] };
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
  const resolutions = await resolveCases(groupList.map((ts) => ts[0]));
  for (const [i, targets] of groupList.entries()) {
    const r = resolutions[i];
    const { id, folder } = targets[0];
    const records = targets.map((t) => t.record);
    if (r.status === "ready") result.cases.push({ id, caseUri: folder, case: r.case, records });
    else if (r.status === "waiting") {
      for (const rec of records) {
        result.waiting.push({ id, caseUri: folder, key: rec.uri, reason: r.reason });
      }
    } else for (const rec of records) result.ignored.push({ key: rec.uri, reason: r.reason });
  }
  return result;
}

/** One string per case: its folder, naming and id. */
export function caseKeyOf(t: CaseTarget): string {
  return JSON.stringify([t.folder, t.naming, t.id]);
}
