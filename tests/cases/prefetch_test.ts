/**
 * pipeline/cases/prefetch.ts: batches made in a worker equal the main thread's, and cases already in
 * shared memory are read where they are.
 * @module
 */
import { assert, assertEquals } from "@std/assert";
import { sharedCase } from "../../pipeline/cases/case_cache.ts";
import { batchForStep, BatchPrefetcher } from "../../pipeline/cases/prefetch.ts";
import { streamRandom } from "../../pipeline/cases/random.ts";
import { sampleBatch } from "../../pipeline/cases/sampling.ts";
import { syntheticCase } from "./_synthetic_case.ts";

Deno.test("prefetch in a worker hands out exactly the batches the main thread would make", async () => {
  const cases = [syntheticCase([16, 14, 12], 1), syntheticCase([12, 16, 14], 2)];
  const options = { batch: 2, seed: 4, sampling: { crop: 8 }, workers: 1, depth: 3 };
  const p = new BatchPrefetcher(cases, options);
  try {
    for (let step = 0; step < 6; step++) {
      const b = await p.next(step);
      const expected = batchForStep(cases, options, step);
      assertEquals(b.image, expected.image);
      assertEquals(b.target, expected.target);
      assertEquals(b.ids, expected.ids);
    }
  } finally {
    p.close();
  }
  const other = sampleBatch(cases, 2, { crop: 8 }, streamRandom(5, 0, 1));
  assert(other.image.some((v, i) => v !== batchForStep(cases, options, 0).image[i]));
});

Deno.test("prefetch uses cases already in shared memory where they are, without a second copy", async () => {
  const c = sharedCase(syntheticCase([16, 14, 12], 1));
  assert(
    c.image.buffer instanceof SharedArrayBuffer && c.regions!.buffer instanceof SharedArrayBuffer,
  );
  const options = { batch: 1, seed: 4, sampling: { crop: 8, augment: false as const }, workers: 1 };
  const p = new BatchPrefetcher([c], options);
  try {
    // Written after the prefetcher took the case: a worker sees it only if it reads the same memory.
    c.image.fill(7);
    const b = await p.next(0);
    assert(b.image.every((v) => v === 7), "the worker read the caller's shared arrays");
  } finally {
    p.close();
  }
  assertEquals(sharedCase(c), c, "a case already in shared memory is returned as it is");
});
