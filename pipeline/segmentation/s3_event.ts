/**
 * S3 event notifications parsed: the records of object versions created (or removed), whatever
 * service delivered them.
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
 * Every record is identified by its object version ({@linkcode S3ObjectEvent.dedupeKey}), since
 * delivery is at least once; events.ts triages the records.
 * @module
 */
import { bucketNameProblem } from "./bucket_name.ts";

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
 * import { assertEquals } from "@std/assert";
 * import { decodeS3Key } from "./s3_event.ts";
 * assertEquals(decodeS3Key("BraTS+2021/case%2B1_t1.nii.gz"), "BraTS 2021/case+1_t1.nii.gz");
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
