/**
 * pipeline/segmentation/batch.ts: segment() over a dataset: a written segmentation nibabel reads,
 * probabilities added to an earlier run, its messages going to the progress it is given.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
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
import { segment } from "../../pipeline/segmentation/mod.ts";
import { HAS_NIBABEL, PYTHON } from "../_nifti_fixtures.ts";
import { assertMetricsRecord, readJson, tinyModel } from "./_segment_fixtures.ts";

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
