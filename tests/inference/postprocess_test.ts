import { assertEquals, assertThrows } from "@std/assert";
import { keepLargestComponent } from "../../pipeline/inference/postprocess.ts";
import { connectedComponents } from "../../pipeline/evaluation/lesion_wise.ts";

Deno.test("keepLargestComponent() keeps the largest 26-connected body, labels unchanged, and removes the rest", () => {
  const dims = [8, 8, 8];
  const at = (x: number, y: number, z: number) => x + 8 * y + 64 * z;
  const labels = new Uint8Array(512);
  // The tumour: a 3×3×3 block of mixed labels (27 voxels).
  for (let z = 1; z < 4; z++) {
    for (let y = 1; y < 4; y++) {
      for (let x = 1; x < 4; x++) labels[at(x, y, z)] = 1 + ((x + y + z) % 3);
    }
  }
  // A voxel touching it only by a corner belongs to it (26-connectivity).
  labels[at(4, 4, 4)] = 2;
  // Two stray bodies: 2 voxels and 1 voxel, away from it.
  labels[at(7, 7, 7)] = 2;
  labels[at(7, 6, 7)] = 4;
  labels[at(0, 7, 0)] = 1;
  const before = labels.slice();
  const removed = keepLargestComponent(labels, dims);
  assertEquals(removed, 3);
  for (let i = 0; i < 512; i++) {
    const stray = i === at(7, 7, 7) || i === at(7, 6, 7) || i === at(0, 7, 0);
    assertEquals(labels[i], stray ? 0 : before[i], `voxel ${i}`);
  }
  assertEquals(connectedComponents(labels, dims).count, 1);
});

Deno.test("keepLargestComponent() leaves an empty or one-body map alone and checks the grid", () => {
  const empty = new Uint8Array(27);
  assertEquals(keepLargestComponent(empty, [3, 3, 3]), 0);
  const one = new Uint8Array(27).fill(1);
  assertEquals(keepLargestComponent(one, [3, 3, 3]), 0);
  assertEquals(one.every((v) => v === 1), true);
  assertThrows(
    () => keepLargestComponent(one, [3, 3, 2]),
    RangeError,
    "does not fill a 3×3×2 grid",
  );
});

Deno.test("keepLargestComponent() keeps the first of two equal bodies", () => {
  const labels = new Uint8Array([1, 0, 0, 1]);
  assertEquals(keepLargestComponent(labels, [4, 1, 1]), 1);
  assertEquals([...labels], [1, 0, 0, 0]);
});
