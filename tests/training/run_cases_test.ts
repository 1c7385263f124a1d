/**
 * pipeline/training/run_cases.ts: the seeded train/validation split of a run's cases.
 * @module
 */
import { assertEquals } from "@std/assert";
import { splitCases } from "../../pipeline/training/mod.ts";

Deno.test("splitCases is seeded and disjoint", () => {
  const cases = ["a", "b", "c", "d", "e"].map((id) => ({ id }) as never);
  const s1 = splitCases(cases, 2, 1);
  assertEquals(splitCases(cases, 2, 1), s1);
  assertEquals(s1.val.length, 2);
  assertEquals(new Set([...s1.train, ...s1.val].map((c) => (c as { id: string }).id)).size, 5);
});
