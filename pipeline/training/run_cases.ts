/**
 * The cases a training run trains and validates on: the labelled cases found under its data, the
 * dataset they describe (channels in, regions out), and the seeded split into training and
 * validation cases, or the split of the run being resumed found again by id.
 * @module
 */
import {
  type Case,
  caseDataset,
  type DatasetDescription,
  findCases,
  isBraTS,
  labelScheme,
  streamRandom,
} from "../cases/mod.ts";
import type { Labels } from "../labels.ts";
import { SettingsError } from "./settings.ts";

/** The labelled cases, split into training and validation cases by a seeded shuffle. */
export function splitCases(
  cases: Case[],
  valCases: number,
  seed: number,
): { train: Case[]; val: Case[] } {
  const sorted = [...cases].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const rand = streamRandom(seed, 0, 2);
  for (let i = sorted.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [sorted[i], sorted[j]] = [sorted[j], sorted[i]];
  }
  return { val: sorted.slice(0, valCases), train: sorted.slice(valCases) };
}

/**
 * The labelled cases under `data`. A missing folder, or one without case files, is an error
 * saying which and what is expected. A case that cannot be read is an error, not skipped: the
 * split, and so the run, would silently depend on which files happened to be readable. A resumed
 * run (`own`: the ids of its cases) only needs its own, and logs the others it skips.
 */
export async function labelledCases(
  data: string,
  own: ReadonlySet<string>,
  log: (message: string) => void,
): Promise<Case[]> {
  const { cases: found, problems } = await findCases(data, { required: true });
  const fatal = own.size > 0 ? problems.filter((p) => own.has(p.id)) : problems;
  for (const p of problems) {
    if (!fatal.includes(p)) log(`skipping case ${p.id} (not part of this run): ${p.error}`);
  }
  if (fatal.length > 0) {
    throw new Error(
      `${data}: ${fatal.length} case${
        fatal.length === 1 ? "" : "s"
      } cannot be used; fix or remove ${fatal.length === 1 ? "it" : "them"} and run again:\n  ${
        fatal.map((p) => p.error).join("\n  ")
      }`,
    );
  }
  const labelled = found.filter((c) => c.seg);
  if (labelled.length === 0) {
    throw new Error(`${data}: no labelled cases (image files with a _seg) to train on`);
  }
  return labelled;
}

/** What the network of a run on a dataset takes and gives. */
export interface RunDataset {
  dataset: DatasetDescription;
  /** Its labels: BraTS (4) or the dataset's own scheme. */
  scheme: Labels;
  /** The regions the network predicts, in order. */
  regionNames: string[];
  /** The network's input channels and output regions. */
  io: { inChannels: number; outChannels: number };
}

/** The dataset a run's cases belong to (that of the first case): the network follows the data. */
export function runDataset(first: Case, data: string): RunDataset {
  const dataset = caseDataset(first);
  const scheme: Labels = isBraTS(dataset) ? 4 : labelScheme(dataset, data);
  const regionNames = typeof scheme === "number"
    ? ["WT", "TC", "ET"]
    : scheme.regions.map((r) => r.name);
  return {
    dataset,
    scheme,
    regionNames,
    io: { inChannels: dataset.channels.length, outChannels: regionNames.length },
  };
}

/**
 * The run's split: that of the run being resumed (`stored`, by id), else a seeded split of
 * `labelled` leaving `valCases` for validation.
 * @throws {Error} naming a case of the stored split that is gone
 * @throws {SettingsError} of `--val-cases` when it leaves no training case
 */
export function runSplit(
  labelled: Case[],
  stored: { train: string[]; val: string[] },
  s: { data: string; valCases: number; seed: number },
): { train: Case[]; val: Case[] } {
  if (stored.train.length > 0) {
    const byId = new Map(labelled.map((c) => [c.id, c]));
    const pick = (ids: string[]) =>
      ids.map((id) => {
        const c = byId.get(id);
        if (!c) throw new Error(`${s.data}: case ${id} of the run being resumed is gone`);
        return c;
      });
    return { train: pick(stored.train), val: pick(stored.val) };
  }
  if (s.valCases >= labelled.length) {
    throw new SettingsError(
      "--val-cases",
      `--val-cases ${s.valCases} leaves no training case: ${s.data} has ${labelled.length} labelled cases`,
    );
  }
  return splitCases(labelled, s.valCases, s.seed);
}
