/**
 * pipeline/cases/preprocess.ts: a case read from files, z-scored over the brain, with its region
 * targets from the segmentation (the phantom dataset of pipeline/synth/phantom.ts); preprocessCase's
 * crop to the brain undone exactly by uncropBox; a case with no brain voxel refused by name.
 * @module
 */
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { findCases } from "../../pipeline/cases/cases.ts";
import { decodeNifti, scaledData } from "../../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { loadCase, preprocessCase } from "../../pipeline/cases/preprocess.ts";
import { getObject } from "../../pipeline/storage/objects.ts";
import { regionChannels } from "../../pipeline/labels.ts";
import { uncropBox } from "../../pipeline/volume/mod.ts";
import { phantomDataset } from "../_train_fixtures.ts";
import { EMPTY_ID, writeEmptyCase } from "../_empty_case.ts";

/** The phantom dataset of the crop test (the training tests' one). */
const dataset = () => phantomDataset("revunet-train-");

Deno.test("writePhantomDataset + findCases + loadCase: z-scored over the brain, targets from seg", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ids = await writePhantomDataset(dir, {
      cases: 2,
      dims: [20, 18, 16],
      seed: 3,
      naming: "brats2023",
    });
    assertEquals(ids, ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]);
    const { cases, problems } = await findCases(dir);
    assertEquals(problems, []);
    assertEquals(
      cases.map((c) => [c.id, c.enhancingLabel as number, c.shape]),
      ids.map((id) => [id, 3 as number, [20, 18, 16]]),
    );
    const loaded = await loadCase(cases[0]);
    const seg = scaledData(decodeNifti(await getObject(cases[0].seg!), "seg"));
    const n = 20 * 18 * 16;
    for (let k = 0; k < 4; k++) {
      let s = 0, s2 = 0, count = 0;
      for (let i = 0; i < n; i++) {
        const v = loaded.image[4 * i + k];
        if (v !== 0) {
          s += v;
          s2 += v * v;
          count++;
        }
      }
      assertAlmostEquals(s / count, 0, 1e-3);
      assertAlmostEquals(Math.sqrt(s2 / count), 1, 1e-2);
    }
    for (let i = 0; i < n; i++) assertEquals(loaded.target![3 * i + 2], seg[i] === 3 ? 1 : 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("preprocessCase crops to the brain and uncropBox restores loadCase's full grid exactly", async () => {
  const { cases } = await findCases(await dataset());
  for (const c of cases) {
    const full = await loadCase(c);
    const p = await preprocessCase(c);
    assert(p.box.size.every((s, a) => s <= p.dims[a]));
    assert(
      p.box.size[0] < p.dims[0],
      "the phantom's head does not fill the grid, so the box is smaller",
    );
    assertEquals(p.dims, full.dims);
    const image = uncropBox(p.image, p.box, p.dims, 4);
    assertEquals(image.length, full.image.length);
    let maxDiff = 0;
    for (let i = 0; i < image.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(image[i] - full.image[i]));
    }
    assert(maxDiff < 1e-5, `image differs by ${maxDiff}`);
    assertEquals(regionChannels(uncropBox(p.regions!, p.box, p.dims, 1)), full.target);
    // z-scored over brain voxels: mean 0, std 1 per modality
    for (let k = 0; k < 4; k++) {
      let s = 0, s2 = 0, n = 0;
      for (let i = 0; i < p.image.length / 4; i++) {
        const v = p.image[4 * i + k];
        if (v !== 0) (s += v, s2 += v * v, n++);
      }
      assertAlmostEquals(s / n, 0, 0.05);
      assertAlmostEquals(Math.sqrt(s2 / n), 1, 0.05);
    }
  }
});

Deno.test("preprocessCase and loadCase refuse a case with no brain voxel, naming it and its files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-empty-" });
  try {
    await writeEmptyCase(`${dir}/data`);
    const [c] = (await findCases(`${dir}/data`)).cases;
    for (const load of [preprocessCase, loadCase]) {
      const e = await assertRejects(
        () => load(c),
        RangeError,
        `case "${EMPTY_ID}": no brain voxel`,
      );
      assertStringIncludes((e as Error).message, c.images.flair);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
