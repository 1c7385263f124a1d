/**
 * pipeline/cases/preprocess.ts: a case read from files, z-scored over the brain, with its region
 * targets from the segmentation (the phantom dataset of pipeline/synth/phantom.ts).
 * @module
 */
import { assertAlmostEquals, assertEquals } from "@std/assert";
import { findCases } from "../../pipeline/cases/cases.ts";
import { decodeNifti, scaledData } from "../../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { loadCase } from "../../pipeline/cases/preprocess.ts";
import { getObject } from "../../pipeline/storage/objects.ts";

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
