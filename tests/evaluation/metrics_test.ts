/**
 * pipeline/evaluation/metrics.ts: regionDice over nested regions, inside a box.
 * @module
 */
import { assertEquals } from "@std/assert";
import { regionDice } from "../../pipeline/evaluation/metrics.ts";

Deno.test("regionDice: nested regions, empty-empty scores 1, reference voxels outside the box missed", () => {
  const regions = Uint8Array.from([7, 3, 1, 0]);
  assertEquals(regionDice(regions, regions), { WT: 1, TC: 1, ET: 1 });
  const none = new Uint8Array(4);
  assertEquals(regionDice(none, new Uint8Array(4)), { WT: 1, TC: 1, ET: 1 });
  assertEquals(regionDice(none, regions).WT, 0);
  // WT: 3 of 3 in the box and 1 outside: 2·3 / (3 + 4); TC: 2·2 / (2 + 2); ET: 2·1 / (1 + 3).
  assertEquals(regionDice(regions, regions, [1, 0, 2]), { WT: 6 / 7, TC: 1, ET: 0.5 });
  assertEquals(regionDice(none, none, [0, 0, 1]), { WT: 1, TC: 1, ET: 0 });
});
