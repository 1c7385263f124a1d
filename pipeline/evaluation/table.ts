/**
 * An evaluation as text tables for people: the per-case metrics with their summary statistics,
 * and the lesion-wise scores.
 * @module
 */
import {
  caseRegion,
  EVAL_REGIONS,
  type Evaluation,
  evaluationRegions,
  type MetricName,
  METRICS,
  type Stats,
} from "./evaluation.ts";

const HEADINGS: Record<MetricName, string> = {
  dice: "Dice",
  hd95: "HD95",
  sensitivity: "Sens",
  specificity: "Spec",
};

/** A metric's value as the tables show it: HD95 in mm to 2 decimals, the others to 4. */
function formatValue(metric: MetricName, v: number | null): string {
  if (v === null) return "-";
  return metric === "hd95" ? v.toFixed(2) : v.toFixed(4);
}

/** Aligns `rows` under `head` (first column left, the others right) and draws the rule. */
function aligner(head: string[], rows: string[][]) {
  const widths = head.map((_, k) => Math.max(...rows.map((row) => row[k].length)));
  const line = (row: string[]) =>
    row.map((cell, k) => (k === 0 ? cell.padEnd(widths[k]) : cell.padStart(widths[k]))).join("  ")
      .trimEnd();
  const rule = "-".repeat(widths.reduce((a, b) => a + b + 2, -2));
  return { line, rule };
}

/** The per-case table (HD95 in mm), the summary rows, then the missing and extra cases. */
export function formatTable(e: Evaluation): string {
  const regions = evaluationRegions(e);
  const summaryOf = e.summary as Record<string, Evaluation["summary"]["WT"]>;
  const head = ["case", ...METRICS.flatMap((m) => regions.map((r) => `${HEADINGS[m]} ${r}`))];
  const rows: string[][] = e.cases.map((c) => [
    c.case,
    ...METRICS.flatMap((m) => regions.map((r) => formatValue(m, caseRegion(c, r)[m]))),
  ]);
  const stats: (keyof Stats)[] = ["mean", "std", "median", "q25", "q75"];
  const summary = stats.map((s) => [
    s,
    ...METRICS.flatMap((m) => regions.map((r) => formatValue(m, summaryOf[r][m][s]))),
  ]);
  const { line, rule } = aligner(head, [head, ...rows, ...summary]);
  return [
    line(head),
    rule,
    ...rows.map(line),
    rule,
    ...summary.map(line),
    "",
    `${e.cases.length} cases evaluated; ${e.missing.length} missing` +
    (e.missing.length ? ` (${e.missing.join(", ")})` : "") +
    `; ${e.extra.length} extra` + (e.extra.length ? ` (${e.extra.join(", ")})` : ""),
  ].join("\n");
}

/** The lesion-wise table: per case Dice, HD95 and lesion counts per region, then the means. */
export function formatLesionTable(e: Evaluation): string {
  const lw = e.lesionWise!;
  const head = [
    "case",
    ...EVAL_REGIONS.map((r) => `LDice ${r}`),
    ...EVAL_REGIONS.map((r) => `LHD95 ${r}`),
    ...EVAL_REGIONS.map((r) => `TP/FP/FN ${r}`),
  ];
  const rows = e.cases.map((c) => [
    c.case,
    ...EVAL_REGIONS.map((r) => formatValue("dice", c.lesionWise?.[r].dice ?? null)),
    ...EVAL_REGIONS.map((r) => formatValue("hd95", c.lesionWise?.[r].hd95 ?? null)),
    ...EVAL_REGIONS.map((r) => {
      const l = c.lesionWise?.[r];
      return l ? `${l.tp}/${l.fp}/${l.fn}` : "-";
    }),
  ]);
  const mean = [
    "mean",
    ...EVAL_REGIONS.map((r) => formatValue("dice", lw.summary[r].dice.mean)),
    ...EVAL_REGIONS.map((r) => formatValue("hd95", lw.summary[r].hd95.mean)),
    ...EVAL_REGIONS.map(() => ""),
  ];
  const { line, rule } = aligner(head, [head, ...rows, mean]);
  return [
    `lesion-wise (${
      lw.challenge ?? "custom"
    }: dilation ${lw.dilation}, lesions <= ${lw.minVolume} ` +
    `mm³ left out; misses score Dice 0, HD95 374 mm)`,
    line(head),
    rule,
    ...rows.map(line),
    rule,
    line(mean),
  ].join("\n");
}
