/**
 * pipeline/training/bench/kernels.ts: the depthwise shapes `bench kernels` times, per level.
 * @module
 */
import { assertEquals } from "@std/assert";
import { depthwiseShapes } from "../../../pipeline/training/mod.ts";

Deno.test("bench kernels: the network's depthwise shapes per level", () => {
  assertEquals(depthwiseShapes(64), [
    [1, 64, 64, 64, 32],
    [1, 32, 32, 32, 64],
    [1, 16, 16, 16, 128],
    [1, 8, 8, 8, 256],
  ]);
});
