/**
 * `evaluate` (tasks/evaluate.ts): the command's JSON, table and files on local folders and on
 * s3rver, and its exit codes (the library: tests/evaluation/).
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { caseMetrics, CSV_COLUMNS, type Evaluation } from "../pipeline/evaluation/evaluation.ts";
import {
  evaluateShard,
  formatLesionTable,
  formatTable,
  shardOutUri,
  writeShardEvaluation,
} from "../pipeline/evaluation/mod.ts";
import { shardOf } from "../pipeline/cases/mod.ts";
import { getObject, putObject } from "../pipeline/storage/objects.ts";
import { runMain } from "./_cli.ts";
import { startS3rver } from "./_s3rver.ts";
import { type Dims, labelsFor, segFile, show, tempDir, writeTree } from "./_evaluation_fixtures.ts";

// ---------------------------------------------------------------------------------------------
// The command

/** A small local dataset: 2021 references for P, Q, R; predictions for P, Q and an extra X. */
async function commandFixture(root: string): Promise<void> {
  const dims: Dims = [6, 5, 4];
  await writeTree(root, {
    "truth/BraTS20_Training_P/BraTS20_Training_P_seg.nii.gz": segFile(labelsFor(40, 4), dims),
    "truth/BraTS20_Training_Q/BraTS20_Training_Q_seg.nii.gz": segFile(labelsFor(41, 4), dims),
    "truth/BraTS20_Training_R/BraTS20_Training_R_seg.nii.gz": segFile(labelsFor(42, 4), dims),
    "pred/BraTS20_Training_P.nii.gz": segFile(labelsFor(40, 4), dims),
    "pred/BraTS20_Training_Q.nii.gz": segFile(labelsFor(43, 4), dims),
    "pred/BraTS20_Training_X.nii.gz": segFile(labelsFor(44, 4), dims),
  });
}

function checkShape(ev: Evaluation, cases: string[], missing: string[], extra: string[]): void {
  assertEquals(Object.keys(ev), ["cases", "summary", "missing", "extra"]);
  assertEquals(ev.cases.map((c) => c.case), cases);
  for (const c of ev.cases) {
    assertEquals(Object.keys(c), ["case", "ET", "TC", "WT"]);
    for (const r of ["ET", "TC", "WT"] as const) {
      assertEquals(Object.keys(c[r]), ["dice", "hd95", "sensitivity", "specificity"]);
      for (const v of Object.values(c[r])) assert(typeof v === "number" && Number.isFinite(v));
    }
  }
  assertEquals(Object.keys(ev.summary), ["ET", "TC", "WT"]);
  for (const r of ["ET", "TC", "WT"] as const) {
    assertEquals(Object.keys(ev.summary[r]), ["dice", "hd95", "sensitivity", "specificity"]);
    assertEquals(Object.keys(ev.summary[r].dice), ["mean", "std", "median", "q25", "q75"]);
  }
  assertEquals(ev.missing, missing);
  assertEquals(ev.extra, extra);
}

Deno.test("evaluate --json prints one JSON object, writes --out, and exits 1 on missing cases", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const pred = join(tmp.path, "pred");
  const truth = join(tmp.path, "truth");
  const out = join(tmp.path, "metrics");
  const strict = await runMain([
    "evaluate",
    "--pred",
    pred,
    "--truth",
    truth,
    "--json",
    "--out",
    out,
  ]);
  assertEquals(strict.code, 1, show(strict));
  const lines = strict.stdout.split("\n").filter((l) => l !== "");
  assertEquals(lines.length, 1, show(strict));
  const ev = JSON.parse(lines[0]) as Evaluation;
  checkShape(ev, ["BraTS20_Training_P", "BraTS20_Training_Q"], ["BraTS20_Training_R"], [
    "BraTS20_Training_X",
  ]);
  assertEquals(ev.cases[0].WT.dice, 1);
  assertStringIncludes(strict.stderr, 'missing: no prediction for case "BraTS20_Training_R"');
  assertStringIncludes(strict.stderr, 'extra: prediction "BraTS20_Training_X" has no reference');
  assertStringIncludes(strict.stderr, "--allow-missing");
  // What was computed is written all the same.
  assertEquals(JSON.parse(await Deno.readTextFile(join(out, "metrics.json"))), ev);
  const csv = (await Deno.readTextFile(join(out, "metrics.csv"))).trim().split("\n");
  assertEquals(csv[0], ["case", ...CSV_COLUMNS].join(","));
  assertEquals(csv.length, 3);
  assertEquals(csv[1].split(",").slice(1).map(Number), [1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1]);
  assertEquals(
    csv[2].split(",").map((v, k) => (k === 0 ? v : Number(v))),
    [
      ev.cases[1].case,
      ...(["ET", "TC", "WT"] as const).flatMap((r) => Object.values(ev.cases[1][r])),
    ],
  );

  const [allowed, table] = [
    await runMain(["evaluate", "--pred", pred, "--truth", truth, "--json", "--allow-missing"]),
    await runMain(["evaluate", "--pred", pred, "--truth", truth, "--allow-missing"]),
  ];
  assertEquals(allowed.code, 0, show(allowed));
  assertEquals(JSON.parse(allowed.stdout), ev);
  assertEquals(table.code, 0, show(table));
  assertStringIncludes(table.stdout, "Dice ET");
  assertStringIncludes(table.stdout, "BraTS20_Training_Q");
  assertStringIncludes(table.stdout, "median");
  assertStringIncludes(
    table.stdout,
    "1 missing (BraTS20_Training_R); 1 extra (BraTS20_Training_X)",
  );
});

Deno.test("evaluateShard() takes one shard's cases; writeShardEvaluation() and shardOutUri() name its outputs", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const [pred, truth, out] = ["pred", "truth", "out"].map((d) => join(tmp.path, d));
  const ids = ["P", "Q", "R"].map((x) => `BraTS20_Training_${x}`);
  for (const index of [0, 1]) {
    const shard = { index, count: 2 };
    const ev = await evaluateShard(pred, truth, { shard });
    const mine = ids.filter((id) => shardOf(id, 2) === index);
    assertEquals([...ev.cases.map((c) => c.case), ...ev.missing].sort(), mine);
    const written = await writeShardEvaluation(out, ev, shard);
    assertEquals(written, [
      join(out, `metrics-shard-${index}-of-2.json`),
      join(out, `metrics-shard-${index}-of-2.csv`),
    ]);
    assertEquals(shardOutUri(out, shard), join(out, `shard-${index}-of-2`));
  }
  const all = await evaluateShard(pred, truth);
  assertEquals(all.cases.map((c) => c.case), ids.slice(0, 2));
  assertEquals(await writeShardEvaluation(out, all), [
    join(out, "metrics.json"),
    join(out, "metrics.csv"),
  ]);
  assertEquals(shardOutUri(out), out);
});

Deno.test("formatTable() and formatLesionTable(): the rows of a table as wide as its rule", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const ev = await evaluateShard(join(tmp.path, "pred"), join(tmp.path, "truth"), {
    lesionWise: { dilation: 1, minVolume: 0 },
  });
  const [table, footer] = formatTable(ev).split("\n\n");
  const rows = table.split("\n");
  assertEquals(rows.length, 1 + 1 + 2 + 1 + 5); // head, rule, 2 cases, rule, 5 statistics
  assert(rows.every((r) => r.length === rows[1].length), table);
  assert(/^-+$/.test(rows[1]) && rows[4] === rows[1], table);
  assertEquals(rows.slice(5).map((r) => r.split(" ")[0]), ["mean", "std", "median", "q25", "q75"]);
  assertEquals(
    footer,
    "2 cases evaluated; 1 missing (BraTS20_Training_R); 1 extra (BraTS20_Training_X)",
  );
  const [title, ...lesionRows] = formatLesionTable(ev).split("\n");
  assertStringIncludes(title, "lesion-wise (custom: dilation 1, lesions <= 0 mm³ left out");
  assertEquals(lesionRows.length, 1 + 1 + 2 + 1 + 1); // head, rule, 2 cases, rule, mean
  // The mean row has no counts: its trailing empty cells are trimmed.
  const full = lesionRows.slice(0, -1);
  assert(full.every((r) => r.length === lesionRows[1].length), lesionRows.join("\n"));
  assert(lesionRows[0].startsWith("case") && lesionRows.at(-1)!.startsWith("mean"));
});

Deno.test("evaluate --report --shard: the shard's metrics files and its report folder, no others", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const [pred, truth, out] = ["pred", "truth", "out"].map((d) => join(tmp.path, d));
  const index = shardOf("BraTS20_Training_P", 2);
  const r = await runMain([
    "evaluate",
    "--pred",
    pred,
    "--truth",
    truth,
    "--out",
    out,
    "--report",
    "--shard",
    `${index}/2`,
    "--allow-missing",
    "--json",
  ]);
  assertEquals(r.code, 0, show(r));
  const ev = JSON.parse(r.stdout) as Evaluation;
  assert(ev.cases.some((c) => c.case === "BraTS20_Training_P"), r.stdout);
  const name = `shard-${index}-of-2`;
  assertEquals(JSON.parse(await Deno.readTextFile(join(out, `metrics-${name}.json`))), ev);
  const html = await Deno.readTextFile(join(out, name, "report", "index.html"));
  for (const c of ev.cases) assertStringIncludes(html, c.case);
  assertStringIncludes(r.stderr, `evaluate: report ${join(out, name, "report", "index.html")}`);
  assertStringIncludes(r.stderr, `evaluate: wrote ${join(out, `metrics-${name}.json`)} and `);
  const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
  assertEquals(names, [`metrics-${name}.csv`, `metrics-${name}.json`, name]);
});

Deno.test("evaluate exits 2 on usage errors and 1 on a broken file, writing nothing", async () => {
  await using tmp = await tempDir();
  await commandFixture(tmp.path);
  const pred = join(tmp.path, "pred");
  const truth = join(tmp.path, "truth");
  const out = join(tmp.path, "metrics");
  await Deno.writeFile(join(pred, "BraTS20_Training_R.nii.gz"), new Uint8Array([0x1f, 0x8b, 8, 0]));
  const noPred = await runMain(["evaluate", "--truth", truth]);
  const badLabels = await runMain([
    "evaluate",
    "--pred",
    pred,
    "--truth",
    truth,
    "--labels",
    "2022",
  ]);
  const broken = await runMain(["evaluate", "--pred", pred, "--truth", truth, "--out", out]);
  assertEquals(noPred.code, 2, show(noPred));
  assertStringIncludes(noPred.stderr, "--pred <uri> is required");
  assertEquals(badLabels.code, 2, show(badLabels));
  assertStringIncludes(badLabels.stderr, "--labels must be 2021 or 2023");
  assertEquals(broken.code, 1, show(broken));
  assertStringIncludes(broken.stderr, join(pred, "BraTS20_Training_R.nii.gz"));
  assertEquals(broken.stdout, "");
  await assertRejects(() => Deno.stat(out), Deno.errors.NotFound);
});

Deno.test("evaluate reads predictions and references from s3rver and writes --out there", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  const dims: Dims = [6, 5, 4];
  const id = "BraTS-GLI-00001-000";
  await putObject(`s3://brats/truth/${id}/${id}-seg.nii.gz`, segFile(labelsFor(50, 3), dims));
  await putObject(`s3://brats/pred/${id}.nii.gz`, segFile(labelsFor(51, 3), dims));
  const env = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([k]) => k.startsWith("AWS_")),
  );
  assertEquals(env.AWS_ENDPOINT_URL_S3, s3.endpoint);
  const r = await runMain([
    "evaluate",
    "--pred",
    "s3://brats/pred/",
    "--truth",
    "s3://brats/truth",
    "--out",
    "s3://brats/eval",
    "--json",
  ], env);
  assertEquals(r.code, 0, show(r));
  const ev = JSON.parse(r.stdout) as Evaluation;
  checkShape(ev, [id], [], []);
  assertEquals(
    ev.cases[0].ET,
    caseMetrics(labelsFor(51, 3), labelsFor(50, 3), dims, [1, 1, 1], 3).ET,
  );
  const dec = new TextDecoder();
  assertEquals(JSON.parse(dec.decode(await getObject("s3://brats/eval/metrics.json"))), ev);
  const csv = dec.decode(await getObject("s3://brats/eval/metrics.csv")).trim().split("\n");
  assertEquals(csv.length, 2);
  assert(csv[1].startsWith(`${id},`), csv[1]);
});
