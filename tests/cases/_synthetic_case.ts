/**
 * A preprocessed case built in memory for the sampler and prefetch tests: nested spherical
 * regions, channel 0 marking whole tumor (so that image and target alignment can be checked) and
 * seeded noise in the other three.
 * @module
 */
import type { PreprocessedCase } from "../../pipeline/cases/preprocess.ts";
import { streamRandom } from "../../pipeline/cases/random.ts";
import type { Dims } from "../../pipeline/volume/mod.ts";

/** A `size` case, its box the whole grid, seeded by `seed`. */
export function syntheticCase(size: Dims, seed: number): PreprocessedCase {
  const n = size[0] * size[1] * size[2];
  const rand = streamRandom(seed, 0);
  const regions = new Uint8Array(n);
  const image = new Float32Array(n * 4);
  const c = size.map((s) => s / 2);
  let i = 0;
  for (let z = 0; z < size[2]; z++) {
    for (let y = 0; y < size[1]; y++) {
      for (let x = 0; x < size[0]; x++, i++) {
        const r = Math.hypot(x - c[0] * 1.2, y - c[1], z - c[2]);
        regions[i] = r < 2 ? 7 : r < 3 ? 3 : r < 4 ? 1 : 0;
        // channel 0 marks whole tumor so that alignment of image and target can be checked
        image[4 * i] = regions[i] & 1;
        for (let k = 1; k < 4; k++) image[4 * i + k] = rand();
      }
    }
  }
  return {
    id: `c${seed}`,
    dims: size,
    box: { start: [0, 0, 0], size },
    stats: [],
    image,
    regions,
  };
}
