/**
 * pipeline/cases/sampling.ts: crops forced onto tumor about a third of the time, padding around a
 * small box, and augmentation that keeps image and target aligned and is seeded.
 * @module
 */
import { assert, assertEquals } from "@std/assert";
import { streamRandom } from "../../pipeline/cases/random.ts";
import { sampleCrop, tumorVoxels } from "../../pipeline/cases/sampling.ts";
import { syntheticCase } from "./_synthetic_case.ts";

Deno.test("sampler: about a third of crops forced, every forced crop holds tumor; padding when the box is smaller", () => {
  const c = syntheticCase([20, 18, 16], 1);
  const rand = streamRandom(5, 0);
  const n = 600;
  let forced = 0;
  let unforcedWithTumor = 0;
  for (let i = 0; i < n; i++) {
    const crop = sampleCrop(c, { crop: 8, augment: false }, rand);
    const hasTumor = crop.target.some((v, j) => j % 3 === 0 && v === 1);
    if (crop.forced) {
      forced++;
      assert(hasTumor, "a forced crop holds tumor");
    } else if (hasTumor) unforcedWithTumor++;
  }
  // Binomial(600, 1/3): mean 200, sd 11.5 → ±4.5 sd
  assert(Math.abs(forced - 200) < 52, `${forced} of ${n} forced`);
  assert(unforcedWithTumor < (n - forced) * 0.9, "unforced crops are not all on tumor");
  assertEquals(tumorVoxels(c).length, [...c.regions!].filter((r) => r & 1).length);

  // A box smaller than the crop: the crop holds the whole box, zero-padded around it.
  const small = syntheticCase([6, 5, 4], 2);
  const crop = sampleCrop(small, { crop: 8, augment: false }, streamRandom(1, 1));
  let nonzero = 0;
  for (let i = 0; i < 512; i++) if (crop.image[4 * i + 1] !== 0) nonzero++;
  assertEquals(nonzero, 6 * 5 * 4);
});

Deno.test("augmentation keeps image and target aligned and is the same for the same seed", () => {
  const c = syntheticCase([20, 18, 16], 3);
  for (const spatial of [0, 1]) {
    let agree = 0, total = 0;
    for (let i = 0; i < 20; i++) {
      const opts = {
        crop: 8,
        foregroundFraction: 1,
        augment: { spatial, intensityScale: 0, intensityShift: 0, gamma: 0 },
      };
      const a = sampleCrop(c, opts, streamRandom(11, i));
      const b = sampleCrop(c, opts, streamRandom(11, i));
      assertEquals(a.image, b.image);
      assertEquals(a.target, b.target);
      for (let v = 0; v < 512; v++) {
        total++;
        if ((a.image[4 * v] > 0.5 ? 1 : 0) === a.target[3 * v]) agree++;
      }
    }
    // nearest-voxel targets against trilinear images differ only at some borders
    assert(
      agree / total > (spatial ? 0.9 : 0.9999),
      `agreement ${agree / total} with spatial ${spatial}`,
    );
  }
  // intensity augmentation changes the image, never the target
  const plain = sampleCrop(c, { crop: 8, augment: false }, streamRandom(2, 2));
  const aug = sampleCrop(c, {
    crop: 8,
    augment: { spatial: 0, mirror: 0, intensityScale: 1, intensityShift: 1, gamma: 1 },
  }, streamRandom(2, 2));
  assertEquals(aug.target, plain.target);
  assert(aug.image.some((v, i) => Math.abs(v - plain.image[i]) > 1e-6));
});
