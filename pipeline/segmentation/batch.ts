/**
 * Segmenting many cases: every case under a folder or dataset (optionally one shard of a batch
 * job), or those one S3 event notification completes, each case's failure recorded in
 * `<out>/<case>.error.json` while the others go on; and the HTML report of a run.
 * @module
 */
import { type BackendName } from "../../model/mod.ts";
import { type Case, findCases, inShard, labelScheme, type Shard, shardName } from "../cases/mod.ts";
import {
  type CaseMetrics,
  type CaseResult,
  evaluateDatasetPair,
  evaluatePair,
} from "../evaluation/mod.ts";
import { caseReport, formatDuration, writeReport } from "../report/mod.ts";
import { deleteObject, joinUri, mapConcurrent } from "../storage/mod.ts";
import { readModelDataset, resolveModel } from "../training/mod.ts";
import { casesFromEvent, type IgnoredRecord, type WaitingCase } from "./events.ts";
import { recordError } from "./outputs.ts";
import { type CaseOptions, type CaseOutcome, Segmenter } from "./segmenter.ts";

/** Where a run's messages and per-window progress go (e.g. pipeline/report's `Progress`). */
export interface SegmentProgress {
  /** One message, e.g. `segment: <case> → <output> (12s)`. */
  log(message: string): void;
  /** A case's windows: `done` of `total`, `eta` seconds left. */
  update(label: string, done: number, total: number, text: string, eta: number): void;
}

/** Options of {@linkcode segment}. */
export interface SegmentOptions extends CaseOptions {
  model: string;
  input: string;
  out: string;
  /** @default "cpu" */
  backend?: BackendName;
  /** Receives messages and progress. @default nothing is reported */
  progress?: SegmentProgress;
  /** Only these cases (after discovery); cases that discovery rejected are still recorded. */
  only?: (c: Case) => boolean;
  /**
   * Only the cases of this shard of a batch job, including those discovery rejected: each is
   * recorded by the one shard it belongs to.
   */
  shard?: Shard;
  /** Also write an HTML report under `out` (see {@linkcode segmentationReport}). */
  report?: boolean;
}

/** Outcome of a run: per case, and the failures with their reasons. */
export interface SegmentResult {
  backend: string;
  model: string;
  cases: CaseOutcome[];
  /** Every case without an output: rejected by discovery or failed while segmented. */
  failed: { id: string; error: string }[];
  /** The cases discovery rejected (a missing modality, two files, grids that disagree). */
  problems: { id: string; error: string }[];
  seconds: number;
  /** The report's URI, with `report`. */
  report?: string;
}

const SILENT: SegmentProgress = { log: () => {}, update: () => {} };

/**
 * Segments every case under `input` (one case's folder or a dataset). A case that fails, or that
 * discovery rejects (a missing modality, duplicate files, modalities on different grids), is
 * recorded as `<out>/<id>.error.json` and listed in `failed`; the others go on. A second run with
 * the same model, inputs and options skips what is done.
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { createUNet, disposeUNet, resolveConfig, selectBackend } from "../../model/mod.ts";
 * import { writePhantomDataset } from "../synth/mod.ts";
 * import { saveModel } from "../training/mod.ts";
 * import { segment } from "./mod.ts";
 * await selectBackend("cpu", () => {});
 * const dir = await Deno.makeTempDir();
 * const [id] = await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [16, 16, 16], seed: 1 });
 * const tiny = resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 });
 * const net = createUNet(tiny, { seed: 1 });
 * await saveModel(`${dir}/model`, net, undefined, { train_crop: "16" });
 * disposeUNet(net);
 * const options = { model: `${dir}/model`, input: `${dir}/data`, out: `${dir}/seg` };
 * const first = await segment(options);
 * assertEquals(first.cases.map((c) => [c.output, c.status]), [[`${dir}/seg/${id}.nii.gz`, "done"]]);
 * assertEquals((await segment(options)).cases[0].status, "skipped");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function segment(options: SegmentOptions): Promise<SegmentResult> {
  // A missing folder, or one without case files, is an error saying which and what is expected.
  const listing = await findCases(options.input, { required: true });
  const mine = (id: string) => inShard(id, options.shard);
  let cases = listing.cases.filter((c) => mine(c.id));
  if (options.only) cases = cases.filter(options.only);
  return await segmentCases(cases, listing.problems.filter((p) => mine(p.id)), options);
}

/**
 * Segments the cases one S3 event notification completes (see events.ts): the function-style
 * counterpart of `serve`. Waiting and ignored records are reported to `progress`; a case the event
 * names that discovery refuses (two files for one modality, modalities on different grids) fails
 * with an error record naming the event's records, as `segment` fails it.
 */
export async function segmentEvent(
  event: unknown,
  options: SegmentOptions,
): Promise<SegmentResult & { waiting: WaitingCase[]; ignored: IgnoredRecord[] }> {
  // The model's description says which channels complete an nnU-Net or MSD case.
  const dataset = await readModelDataset((await resolveModel(options.model)).uri);
  const found = await casesFromEvent(event, {
    out: options.out,
    ...(options.input ? { input: options.input } : {}),
    ...(dataset ? { dataset } : {}),
  });
  const progress = options.progress ?? SILENT;
  for (const w of found.waiting) progress.log(`segment: waiting: ${w.id}: ${w.reason}`);
  for (const i of found.ignored) progress.log(`segment: ignored: ${i.key}: ${i.reason}`);
  const cases = found.cases.map((c) => c.case);
  // A case the event names that discovery refuses fails as in `segment --input`: error record,
  // exit status 1, naming the records that led to it.
  const problems = [...Map.groupBy(found.unusable, (u) => u.id)].map(([id, us]) => ({
    id,
    error: `${us[0].reason} (event record${us.length > 1 ? "s" : ""} ${
      us.map((u) => u.key).join(", ")
    })`,
  }));
  const result = cases.length + problems.length > 0
    ? await segmentCases(cases, problems, options)
    : {
      backend: "",
      model: (await resolveModel(options.model)).uri,
      cases: [],
      failed: [],
      problems: [],
      seconds: 0,
    };
  return { ...result, waiting: found.waiting, ignored: found.ignored };
}

/**
 * Segments the given cases (see {@linkcode segment}); `problems` are cases discovery rejected,
 * recorded as failed without loading anything.
 */
export async function segmentCases(
  cases: Case[],
  problems: { id: string; error: string }[],
  options: SegmentOptions,
): Promise<SegmentResult> {
  const t0 = performance.now();
  const progress = options.progress ?? SILENT;
  const failed: { id: string; error: string }[] = [];
  for (const p of problems) {
    progress.log(`segment: ${p.id} cannot be segmented: ${p.error}`);
    failed.push({ id: p.id, error: await recordError(options.out, p.id, p.error) });
  }
  const segmenter = await Segmenter.load(options.model, {
    ...(options.backend ? { backend: options.backend } : {}),
    log: (m) => progress.log(`segment: ${m}`),
  });
  const outcomes: CaseOutcome[] = [];
  try {
    for (const [i, c] of cases.entries()) {
      const r = await segmentOne(segmenter, c, `case ${i + 1}/${cases.length} ${c.id}`, options);
      if ("error" in r) failed.push(r);
      else outcomes.push(r);
    }
  } finally {
    segmenter.dispose();
  }
  let report: string | undefined;
  if (options.report && outcomes.length > 0) {
    // Shards sharing one output folder each get their own report.
    const where = options.shard ? joinUri(options.out, shardName(options.shard)) : options.out;
    report = (await segmentationReport(cases, outcomes, where, {
      notes: [`model: ${segmenter.modelUri}`, `input: ${options.input}`],
    })).uri;
    progress.log(`segment: report ${report}`);
  }
  return {
    ...(report ? { report } : {}),
    backend: segmenter.backend,
    model: segmenter.modelUri,
    cases: outcomes,
    failed,
    problems,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** One case of a run: its outcome, or its failure with the error recorded. */
async function segmentOne(
  segmenter: Segmenter,
  c: Case,
  label: string,
  options: SegmentOptions,
): Promise<CaseOutcome | { id: string; error: string }> {
  const progress = options.progress ?? SILENT;
  const c0 = performance.now();
  try {
    const r = await segmenter.segmentCase(c, options.out, {
      ...options,
      onWindow: (done, total) => {
        const per = (performance.now() - c0) / 1000 / done;
        progress.update(label, done, total, `window ${done}/${total}`, per * (total - done));
      },
    });
    // A success supersedes the record of an earlier run's failure.
    const stale = joinUri(options.out, `${c.id}.error.json`);
    await deleteObject(stale).catch((e) =>
      progress.log(`segment: ${c.id}: cannot remove ${stale}: ${(e as Error).message}`)
    );
    progress.log(
      `segment: ${c.id} ${r.status === "skipped" ? "already done, skipped" : "→ " + r.output} (${
        formatDuration(r.seconds)
      })`,
    );
    return r;
  } catch (e) {
    const error = (e as Error).message;
    progress.log(`segment: ${c.id} failed: ${error}`);
    return { id: c.id, error: await recordError(options.out, c.id, error) };
  }
}

/**
 * Writes `<out>/report/index.html` for segmented cases: FLAIR slices with the prediction (and the
 * reference, for labelled cases) overlaid, and the metrics of labelled cases.
 * @returns the report's URI and the metrics of the labelled cases
 */
export async function segmentationReport(
  cases: Case[],
  outcomes: CaseOutcome[],
  out: string,
  extra: { title?: string; notes?: string[]; curvesSvg?: string } = {},
): Promise<{ uri: string; metrics: CaseResult[] }> {
  const byId = new Map(cases.map((c) => [c.id, c]));
  const metrics: CaseResult[] = [];
  const entries = await mapConcurrent(outcomes, 2, async (o) => {
    const c = byId.get(o.id)!;
    let m: CaseMetrics | undefined;
    // Scored where segment scored it: o.metrics is its metrics file, o.regions its dataset's
    // regions (the page's table shows ET, TC and WT only: a dataset's metrics are returned).
    if (c.seg && o.metrics && o.regions && c.dataset) {
      const scored = await evaluateDatasetPair(o.output, c.seg, labelScheme(c.dataset));
      metrics.push({ case: c.id, ...scored.metrics } as unknown as CaseResult);
    } else if (c.seg && o.metrics) {
      m = (await evaluatePair(o.output, c.seg, { truthEnhancingLabel: c.enhancingLabel })).metrics;
      metrics.push({ case: c.id, ...m });
    }
    return await caseReport(c, o.output, m);
  });
  const uri = await writeReport(out, {
    title: extra.title ?? "Segmentation",
    cases: entries,
    ...(extra.notes ? { notes: extra.notes } : {}),
    ...(extra.curvesSvg ? { curvesSvg: extra.curvesSvg } : {}),
  });
  metrics.sort((a, b) => (a.case < b.case ? -1 : 1));
  return { uri, metrics };
}
