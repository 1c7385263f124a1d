/**
 * Tests of pipeline/evaluation/run.ts beyond what tests/evaluate_test.ts runs through the command:
 * which references the BraTS-only options refuse, and the error of missing predictions.
 * @module
 */
import { join } from "node:path";
import { assertEquals, assertStringIncludes } from "@std/assert";
import {
  bratsOnlyProblem,
  type Evaluation,
  missingPredictionsError,
} from "../../pipeline/evaluation/mod.ts";
import { LPS, segFile, tempDir, writeTree } from "../_evaluation_fixtures.ts";

const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

Deno.test("bratsOnlyProblem() names the options, the dataset and its regions; none for BraTS references or no option", async () => {
  await using tmp = await tempDir();
  await writeTree(tmp.path, {
    "ds/dataset.json": json({
      name: "WT",
      channel_names: { "0": "FLAIR", "1": "T1" },
      labels: { background: 0, whole_tumor: 1 },
      numTraining: 1,
      file_ending: ".nii.gz",
    }),
    "ds/labelsTr/A.nii.gz": segFile(new Uint8Array(6 * 5 * 4), [6, 5, 4], LPS),
    "brats/A_seg.nii.gz": segFile(new Uint8Array(6 * 5 * 4), [6, 5, 4], LPS),
  });
  const ds = join(tmp.path, "ds");
  assertEquals(await bratsOnlyProblem([], ds), undefined, "no BraTS-only option given");
  assertEquals(await bratsOnlyProblem(["--report"], join(tmp.path, "brats")), undefined);
  const problem = await bratsOnlyProblem(["--lesion-wise", "--report"], ds);
  assertEquals(
    problem,
    `--lesion-wise, --report: BraTS-named references only; ${ds} is an nnU-Net dataset ` +
      `(${join(ds, "dataset.json")}, regions "whole_tumor")`,
  );
});

Deno.test("missingPredictionsError() counts the reference cases and names the first five", () => {
  const evaluation = {
    cases: [{ case: "x" }],
    missing: ["a", "b", "c", "d", "e", "f"],
    extra: [],
  } as unknown as Evaluation;
  const err = missingPredictionsError(evaluation, "out/seg");
  assertStringIncludes(
    err.message,
    "6 of 7 reference cases have no prediction under out/seg (a, b, c, d, e, ...)",
  );
  assertStringIncludes(err.message, "--allow-missing");
});
