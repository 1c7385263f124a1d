/**
 * pipeline/synth/phantom.ts: the small procedural phantom cases the tests train on.
 * @module
 */
import { assert, assertEquals } from "@std/assert";
import { phantomCase } from "../../pipeline/synth/phantom.ts";

Deno.test("phantomCase is deterministic for a seed and holds all three tumor labels", () => {
  const a = phantomCase([24, 24, 20], 5);
  const b = phantomCase([24, 24, 20], 5);
  const c = phantomCase([24, 24, 20], 6);
  assertEquals(a.images.t1ce, b.images.t1ce);
  assertEquals(a.seg, b.seg);
  assert(a.seg.some((v, i) => v !== c.seg[i]), "another seed moves the tumor");
  assertEquals([...new Set(a.seg)].sort(), [0, 1, 2, 4]);
  assertEquals([...new Set(phantomCase([24, 24, 20], 5, 3).seg)].sort(), [0, 1, 2, 3]);
  // Tumor only inside the head, where the images are nonzero.
  assert(a.seg.every((v, i) => v === 0 || a.images.flair[i] > 0));
});
