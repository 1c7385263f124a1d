/**
 * Seeded randomness: every random choice of the pipeline comes from a generator made here, so the
 * same seed gives the same data, crops and augmentations.
 * @module
 */

/** A seeded uniform generator in [0, 1) (mulberry32): small, fast and reproducible. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
