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

/**
 * A generator for one `(seed, counter, stream)` triple: counter-based, so step `k` of a run draws
 * the same numbers whether the run got there in one go or was resumed from a checkpoint, and
 * data loading can run ahead without shifting what later steps draw.
 */
export function streamRandom(seed: number, counter: number, stream = 0): () => number {
  let h = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(counter + 0x632be5ab, 0xc2b2ae35);
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b) ^ Math.imul(stream + 0x1b873593, 0x27d4eb2f);
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  h ^= h >>> 13;
  const next = seededRandom(h >>> 0);
  next(); // the first draw of mulberry32 correlates with nearby seeds; drop it
  return next;
}
