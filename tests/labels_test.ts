/**
 * pipeline/labels.ts, the one owner of region↔label conversion: region masks, lookup tables,
 * region counts and voxel counts agree with labelsToRegions on both BraTS conventions and on a
 * dataset's own scheme; probabilities to labels as the Segmenter converts them.
 * @module
 */
import { assertEquals, assertThrows } from "@std/assert";
import {
  type LabelScheme,
  labelsToRegions,
  probabilitiesToLabels,
  REGION_BITS,
  regionChannels,
  regionCount,
  regionMask,
  regionMaskTable,
  regionVoxels,
} from "../pipeline/labels.ts";
import { seededRandom } from "../pipeline/cases/random.ts";

const SCHEME: LabelScheme = {
  regions: [{ name: "kidney", labels: [1, 2] }, { name: "tumour", labels: [2] }],
  order: [1, 2],
};

Deno.test("regionMask() and regionMaskTable() equal labelsToRegions' bit, per region and scheme", () => {
  const rand = seededRandom(4);
  for (
    const [scheme, values, bits] of [
      [4, [0, 1, 2, 4], [1, 2, 4]],
      [3, [0, 1, 2, 3], [1, 2, 4]],
      [SCHEME, [0, 1, 2], [1, 2]],
    ] as const
  ) {
    const labels = Uint8Array.from(
      { length: 500 },
      () => values[Math.floor(rand() * values.length)],
    );
    const regions = labelsToRegions(labels, scheme);
    const out = new Uint8Array(labels.length);
    for (const bit of bits) {
      const expected = [...regions].map((r) => (r & bit) !== 0 ? 1 : 0);
      assertEquals(
        [...regionMask(labels, scheme, bit)],
        expected,
        `scheme ${JSON.stringify(scheme)}`,
      );
      assertEquals(regionMask(labels, scheme, bit, out), out);
      assertEquals([...out], expected);
      const table = regionMaskTable(scheme, bit);
      assertEquals([...labels].map((l) => table[l]), expected);
    }
  }
  // Labels outside the convention are in no region (caseMetrics refuses them before).
  assertEquals([...regionMask([3, 5, 0.5, 300], 4, REGION_BITS.WT)], [0, 0, 0, 0]);
});

Deno.test("regionCount() is 3 for BraTS, a scheme's regions otherwise; regionVoxels() counts bits", () => {
  assertEquals([regionCount(4), regionCount(3), regionCount(SCHEME)], [3, 3, 2]);
  const regions = labelsToRegions([0, 1, 2, 4, 4, 2], 4);
  assertEquals(regionVoxels(regions, 3), [5, 3, 2]);
  assertEquals(regionVoxels(labelsToRegions([0, 1, 2, 2], SCHEME), 2), [3, 2]);
});

Deno.test("labelsToRegions + regionChannels nest WT ⊇ TC ⊇ ET for both label conventions and name bad labels", () => {
  const targets = (l: number[], e: 3 | 4) => [...regionChannels(labelsToRegions(l, e))];
  assertEquals(targets([0, 1, 2, 4], 4), [0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1]);
  assertEquals(targets([3, 2], 3), [1, 1, 1, 1, 0, 0]);
  assertThrows(
    () => labelsToRegions([0, 3], 4, "x_seg.nii.gz"),
    RangeError,
    "x_seg.nii.gz: voxel 1 has label 3",
  );
});

Deno.test("probabilitiesToLabels: WT→2, TC→1, ET→4 or 3, each overwriting; small ET becomes necrosis", () => {
  const probs = Float32Array.from([
    0.1,
    0.1,
    0.1, // background
    0.9,
    0.1,
    0.1, // edema
    0.9,
    0.9,
    0.1, // necrosis
    0.9,
    0.9,
    0.9, // enhancing
    0.2,
    0.2,
    0.9, // ET alone still counts as ET (nnU-Net order)
  ]);
  assertEquals([...probabilitiesToLabels(probs, 4)], [0, 2, 1, 4, 4]);
  assertEquals([...probabilitiesToLabels(probs, 3)], [0, 2, 1, 3, 3]);
  assertEquals(
    [...probabilitiesToLabels(probs, 4, 3)],
    [0, 2, 1, 1, 1],
    "2 ET voxels < 3 → necrosis",
  );
  assertEquals([...probabilitiesToLabels(probs, 4, 2)], [0, 2, 1, 4, 4]);
});
