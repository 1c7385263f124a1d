/**
 * `evaluate` (tasks/evaluate.ts): the command's JSON, table and files on local folders and on
 * s3rver, and its exit codes (the library: tests/evaluation/).
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { caseMetrics, CSV_COLUMNS, type Evaluation } from "../pipeline/evaluation/evaluation.ts";
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
