/**
 * pipeline/segmentation/batch.ts: segment() over a dataset: a written segmentation nibabel reads,
 * probabilities added to an earlier run, its messages going to the progress it is given; a case with
 * no brain voxel failed with an error record (and refused by the Segmenter the service shares).
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { findCases } from "../../pipeline/cases/cases.ts";
import { evaluatePair } from "../../pipeline/evaluation/evaluation.ts";
import { decodeNifti, encodeNifti } from "../../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import {
  deleteObject,
  exists,
  getObject,
  listObjects,
  putObject,
} from "../../pipeline/storage/objects.ts";
import { segment, Segmenter } from "../../pipeline/segmentation/mod.ts";
import { HAS_NIBABEL, PYTHON } from "../_nifti_fixtures.ts";
import { assertMetricsRecord, readJson, tinyModel } from "./_segment_fixtures.ts";
import { pathMissing } from "../_train_fixtures.ts";
import { DIMS, EMPTY_ID, writeEmptyCase } from "../_empty_case.ts";

await tf.setBackend("cpu");

Deno.test({
  name: "segment: nibabel reads a written segmentation with the input's shape and affine, as uint8",
  ignore: !HAS_NIBABEL,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [24, 28, 20], seed: 4 });
      const model = await tinyModel(dir);
      const r = await segment({ model, input: `${dir}/data`, out: `${dir}/seg` });
      const [c] = (await findCases(`${dir}/data`)).cases;
      assertEquals(r.cases.map((o) => o.output), [`${dir}/seg/${c.id}.nii.gz`]);
      const out = await new Deno.Command(PYTHON, {
        args: [
          "-c",
          "import sys, nibabel as nib, numpy as np; a = nib.load(sys.argv[1]); b = nib.load(sys.argv[2]); " +
          "print(a.shape == b.shape, np.allclose(a.affine, b.affine), a.get_data_dtype() == np.uint8, " +
          "sorted(set(np.unique(np.asarray(a.dataobj)).tolist()) - {0, 1, 2, 4}) == [])",
          `${dir}/seg/${c.id}.nii.gz`,
          c.images.flair,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assertEquals(
        new TextDecoder().decode(out.stdout).trim(),
        "True True True True",
        new TextDecoder().decode(out.stderr),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("segment --save-probabilities after a run without them writes them; labels first, record last; a reference added later brings metrics", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [24, 24, 16], seed: 7 });
    const model = await tinyModel(dir);
    const [c] = (await findCases(`${dir}/data`)).cases;
    const segBytes = await getObject(c.seg!);
    await deleteObject(c.seg!);
    const opts = { model, input: `${dir}/data`, out: `${dir}/seg` };
    const at = (name: string, out = opts.out) => `${out}/${c.id}${name}`;

    const plain = await segment(opts);
    assertEquals(plain.cases.map((o) => [o.status, o.metrics]), [["done", undefined]]);
    assertEquals(await exists(at("_probabilities.nii.gz")), false);
    assertEquals(await exists(at(".metrics.json")), false, "no reference, no metrics");
    const withProbs = await segment({ ...opts, saveProbabilities: true });
    assertEquals(withProbs.cases.map((o) => o.status), ["done"], "probabilities were missing");
    const probs = decodeNifti(await getObject(at("_probabilities.nii.gz")), c.id);
    assertEquals(probs.header.dims, [24, 24, 16, 3]);
    assertEquals((await readJson(at(".json"))).outputs, [
      at(".nii.gz"),
      at("_probabilities.nii.gz"),
    ]);
    assertEquals((await segment({ ...opts, saveProbabilities: true })).cases[0].status, "skipped");
    assertEquals((await segment(opts)).cases[0].status, "skipped", "the record covers more");

    // The probabilities cannot be written (a folder holds their name): the labels are written,
    // no record (so a re-run redoes the case), the error is recorded; then the re-run completes.
    const out2 = `${dir}/seg2`;
    await Deno.mkdir(at("_probabilities.nii.gz", out2), { recursive: true });
    await Deno.writeTextFile(`${at("_probabilities.nii.gz", out2)}/x`, "in the way");
    const blocked = await segment({ ...opts, out: out2, saveProbabilities: true });
    assertEquals(blocked.failed.map((f) => f.id), [c.id]);
    assert(
      blocked.failed[0].error.includes(`${c.id}_probabilities.nii.gz`),
      blocked.failed[0].error,
    );
    assert(await exists(at(".nii.gz", out2)), "the labels come first");
    assertEquals(await exists(at(".json", out2)), false, "no record over missing outputs");
    assert(await exists(at(".error.json", out2)));
    await Deno.remove(at("_probabilities.nii.gz", out2), { recursive: true });
    const unblocked = await segment({ ...opts, out: out2, saveProbabilities: true });
    assertEquals(unblocked.cases.map((o) => o.status), ["done"]);
    assertEquals(await exists(at(".error.json", out2)), false);
    assert(await exists(at("_probabilities.nii.gz", out2)));

    // The reference arrives: the inputs changed, so the case is redone and scored.
    await putObject(c.seg!, segBytes);
    const scored = await segment(opts);
    assertEquals(scored.cases.map((o) => [o.status, o.metrics]), [["done", at(".metrics.json")]]);
    assertEquals(
      await exists(at("_probabilities.nii.gz")),
      false,
      "redone without --save-probabilities: no probabilities of the previous labels left",
    );
    assertMetricsRecord(await readJson(at(".metrics.json")), c.id, c.seg!);
    assertEquals(
      (await readJson(at(".metrics.json"))).ET,
      (await evaluatePair(at(".nii.gz"), c.seg!)).metrics.ET,
    );

    // A reference that cannot be scored fails the case before anything is written.
    const labels = decodeNifti(segBytes, c.seg!);
    const bad = new Uint8Array(labels.data.length);
    bad[5] = 7;
    await putObject(c.seg!, encodeNifti(bad, "uint8", labels.header, { name: c.seg! }));
    const out3 = `${dir}/seg3`;
    const unscorable = await segment({ ...opts, out: out3 });
    assertEquals(unscorable.failed.map((f) => f.id), [c.id]);
    assert(unscorable.failed[0].error.includes(c.seg!), unscorable.failed[0].error);
    assertEquals(
      (await listObjects(out3)).map((o) => o.key),
      [`${c.id}.error.json`],
      "nothing but the error record",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("segment() prints nothing itself: its messages and window progress go to the progress it is given", async () => {
  const dir = await Deno.makeTempDir();
  const printed: unknown[][] = [];
  const saved = { error: console.error, log: console.log, warn: console.warn };
  try {
    await writePhantomDataset(`${dir}/data`, { cases: 1, dims: [16, 16, 16], seed: 4 });
    // Created (tfjs initialised, its banner printed) before console is watched.
    const model = await tinyModel(dir);
    const opts = { model, input: `${dir}/data`, out: `${dir}/seg`, window: 16 };
    console.error = console.log = console.warn = (...a: unknown[]) => void printed.push(a);
    const silent = await segment(opts);
    const lines: string[] = [];
    const windows: [number, number][] = [];
    const reported = await segment({
      ...opts,
      force: true,
      progress: {
        log: (m) => lines.push(m),
        update: (_l, done, total) => windows.push([done, total]),
      },
    });
    Object.assign(console, saved);
    assertEquals(printed, []);
    assertEquals([silent.failed, reported.failed], [[], []]);
    const id = reported.cases[0].id;
    // The backend chosen, then the case.
    assertEquals(lines.length, 2, lines.join("\n"));
    assertStringIncludes(lines[0], "segment: backend: using cpu");
    assertStringIncludes(lines[1], `segment: ${id} → ${dir}/seg/${id}.nii.gz`);
    assert(
      windows.length > 0 && windows.at(-1)![0] === windows.at(-1)![1],
      JSON.stringify(windows),
    );
  } finally {
    Object.assign(console, saved);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("segment: a case with no brain voxel fails with an error record naming it, nothing else written; the others are segmented", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-empty-" });
  try {
    const [good] = await writePhantomDataset(`${dir}/data`, { cases: 1, dims: DIMS, seed: 5 });
    await writeEmptyCase(`${dir}/data`);
    const model = await tinyModel(dir);
    const r = await segment({ model, input: `${dir}/data`, out: `${dir}/seg` });
    assertEquals(r.cases.map((c) => [c.id, c.status]), [[good, "done"]]);
    assertEquals(r.failed.map((f) => f.id), [EMPTY_ID]);
    assertStringIncludes(r.failed[0].error, `case "${EMPTY_ID}": no brain voxel`);
    const record = JSON.parse(await Deno.readTextFile(`${dir}/seg/${EMPTY_ID}.error.json`));
    assertEquals(record.case, EMPTY_ID);
    assertStringIncludes(record.error, "no brain voxel");
    for (const f of [".nii.gz", ".json", ".metrics.json"]) {
      assert(await pathMissing(`${dir}/seg/${EMPTY_ID}${f}`), `no ${EMPTY_ID}${f}`);
    }
    assert(await exists(`${dir}/seg/${good}.nii.gz`));

    // The Segmenter that `serve` shares refuses it the same way.
    const segmenter = await Segmenter.load(model, {});
    try {
      const c = (await findCases(`${dir}/data`)).cases.find((c) => c.id === EMPTY_ID)!;
      await assertRejects(
        () => segmenter.segmentCase(c, `${dir}/seg2`),
        RangeError,
        `case "${EMPTY_ID}": no brain voxel`,
      );
      assert(await pathMissing(`${dir}/seg2`), "nothing written");
    } finally {
      segmenter.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
