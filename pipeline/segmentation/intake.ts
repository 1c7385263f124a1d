/**
 * What the service does with an event's records: each triaged without I/O, de-duplicated by object
 * version (the last {@linkcode DEDUPE_ENTRIES} remembered), its case's folder listed once per event,
 * and a complete case queued as a job (or joined to its queued one), within the queue's room.
 * @module
 */
import {
  caseKeyOf,
  type CaseResolution,
  type CaseTarget,
  type EventFilterOptions,
  type IgnoredRecord,
  resolveCases,
  triageRecord,
} from "./events.ts";
import type { S3ObjectEvent } from "./s3_event.ts";
import type { Job, JobStatus } from "./job.ts";
import type { JobBoard } from "./jobs.ts";
import { describeError } from "./runner.ts";

/** Records remembered for de-duplication (oldest forgotten first). */
export const DEDUPE_ENTRIES = 10_000;

/** What a record led to; a record whose jobs all failed is run again when it is redelivered. */
type SeenEntry = { status: "pending" } | { status: "done"; jobs: Job[]; result: string };

/** The records seen, by {@linkcode S3ObjectEvent.dedupeKey}, oldest first. */
export class SeenRecords {
  #seen = new Map<string, SeenEntry>();

  get(key: string): SeenEntry | undefined {
    return this.#seen.get(key);
  }

  remember(key: string, entry: SeenEntry): void {
    this.#seen.delete(key);
    this.#seen.set(key, entry);
    while (this.#seen.size > DEDUPE_ENTRIES) this.#seen.delete(this.#seen.keys().next().value!);
  }

  forget(key: string): void {
    this.#seen.delete(key);
  }
}

/** An answer to the event's sender: HTTP status, JSON body, extra headers. */
export interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

/** What admitting records needs. */
export interface IntakeContext {
  board: JobBoard;
  seen: SeenRecords;
  filter: EventFilterOptions;
  /** Jobs waiting beyond those running before events get 503. */
  queue: number;
  concurrency: number;
  /** Whether the service is shutting down (checked again after listing). */
  draining: () => boolean;
  log: (entry: Record<string, unknown>) => void;
}

/** A 503 with a retry hint. */
export function busy(why: string): Reply {
  return { status: 503, body: { error: why }, headers: { "retry-after": "5" } };
}

/** The records that go on, grouped by case; the ignored and duplicate ones; the keys claimed. */
function triage(records: readonly S3ObjectEvent[], ctx: IntakeContext) {
  const ignored: IgnoredRecord[] = [];
  const duplicates: { key: string; jobs: string[] }[] = [];
  const groups = new Map<string, CaseTarget[]>();
  const claimed: string[] = [];
  for (const record of records) {
    const t = triageRecord(record, ctx.filter);
    if (!("id" in t)) {
      ignored.push(t);
      continue;
    }
    const prior = ctx.seen.get(record.dedupeKey);
    // At-least-once delivery: a redelivered record whose jobs all failed is run again.
    const failedBefore = prior?.status === "done" && prior.jobs.length > 0 &&
      prior.jobs.every((j) => j.status === "failed");
    if (prior && !failedBefore) {
      duplicates.push({
        key: record.uri,
        jobs: prior.status === "done" ? prior.jobs.map((j) => j.id) : [],
      });
      continue;
    }
    // Claimed before listing, so a redelivery arriving meanwhile is a duplicate too.
    ctx.seen.remember(record.dedupeKey, { status: "pending" });
    claimed.push(record.dedupeKey);
    const k = caseKeyOf(t);
    groups.set(k, [...(groups.get(k) ?? []), t]);
  }
  return { ignored, duplicates, groups, claimed };
}

/**
 * Admits an event's records: the reply to send (202 queued or waiting, 200 ignored or duplicate,
 * 502 when a folder cannot be listed, 503 when the queue is full or the service is draining).
 */
export async function admitRecords(
  records: readonly S3ObjectEvent[],
  ctx: IntakeContext,
): Promise<Reply> {
  const { board, log } = ctx;
  const { ignored, duplicates, groups, claimed } = triage(records, ctx);
  const unclaim = () => claimed.forEach((k) => ctx.seen.forget(k));
  let resolved: [string, CaseTarget[], CaseResolution][];
  try {
    // Each folder listed once, however many of its cases the event names.
    const entries = [...groups];
    const rs = await resolveCases(entries.map(([, ts]) => ts[0]), ctx.filter);
    resolved = entries.map(([k, ts], i) => [k, ts, rs[i]]);
  } catch (e) {
    unclaim();
    const error = describeError(e);
    log({ event: "rejected", status: 502, error });
    return { status: 502, body: { error: `cannot list the case's folder: ${error}` } };
  }
  if (ctx.draining()) {
    unclaim();
    return busy("shutting down: not accepting events");
  }
  const newJobs = resolved.filter(([k, , r]) => r.status === "ready" && !board.queuedByCase.has(k));
  const free = ctx.concurrency - board.running + ctx.queue - board.queue.length -
    board.retrying.size;
  if (newJobs.length > free) {
    unclaim();
    log({ event: "rejected", status: 503, error: "queue full" });
    return busy(`queue full (${board.queue.length} queued, ${board.running} running)`);
  }
  const { accepted, waiting, unusable } = enqueueResolved(resolved, ignored, ctx);
  // A case discovery refuses fails as `segment --event` fails it: a failed job, an error record.
  const failed = await Promise.all(unusable.map(async ({ targets, reason }) => {
    const job = await ctx.board.fail(targets[0].id, targets[0].folder, targets, reason);
    // Failed: a redelivery of these records tries the case again (it may have been fixed).
    for (const t of targets) {
      ctx.seen.remember(t.record.dedupeKey, { status: "done", jobs: [job], result: "failed" });
    }
    return job;
  }));
  board.pump();
  const status = accepted.length > 0
    ? "queued"
    : waiting.length > 0
    ? "waiting"
    : failed.length > 0
    ? "failed"
    : duplicates.length > 0
    ? "duplicate"
    : "ignored";
  log({
    event: "event",
    status,
    jobs: [...accepted, ...failed].map((j) => j.id),
    cases: [...new Set([...accepted, ...waiting, ...failed].map((j) => j.case))],
    records: records.length,
    ...(ignored.length ? { ignored } : {}),
    ...(duplicates.length ? { duplicates: duplicates.length } : {}),
  });
  return {
    status: status === "queued" || status === "waiting" ? 202 : 200,
    body: {
      status,
      ...(accepted.length ? { id: accepted[0].id } : {}),
      jobs: accepted,
      waiting,
      ...(failed.length
        ? { failed: failed.map(({ id, case: c, error }) => ({ id, case: c, error })) }
        : {}),
      ignored,
      duplicates,
    },
  };
}

/**
 * Queues each ready case (or joins its queued job), sets aside the unusable ones for their failed
 * job, and remembers what each record led to.
 */
function enqueueResolved(
  resolved: [string, CaseTarget[], CaseResolution][],
  ignored: IgnoredRecord[],
  ctx: IntakeContext,
) {
  const accepted: { id: string; case: string; status: JobStatus }[] = [];
  const waiting: { key: string; case: string; reason: string }[] = [];
  const unusable: { targets: CaseTarget[]; reason: string }[] = [];
  for (const [k, targets, r] of resolved) {
    const uris = targets.map((t) => t.record.uri);
    const { id: caseId, folder } = targets[0];
    let jobRefs: Job[] = [];
    if (r.status === "ready") {
      const job = ctx.board.enqueue(k, caseId, folder, r.case);
      job.trigger.push(...uris);
      accepted.push({ id: job.id, case: caseId, status: job.status });
      jobRefs = [job];
    } else if (r.status === "waiting") {
      for (const key of uris) waiting.push({ key, case: caseId, reason: r.reason });
    } else if (r.unusable) {
      // The caller records its failure and remembers its records with the failed job.
      unusable.push({ targets, reason: r.reason });
      continue;
    } else {
      for (const key of uris) ignored.push({ key, reason: r.reason });
    }
    for (const t of targets) {
      ctx.seen.remember(t.record.dedupeKey, { status: "done", jobs: jobRefs, result: r.status });
    }
  }
  return { accepted, waiting, unusable };
}
