/**
 * pipeline/volume/geometry.ts: the one bounding-box scan (maskBox, boundingBox), box union, and
 * cropping a mask to a box, plain or through a lookup table, against brute force on random masks.
 * @module
 */
import { assertEquals, assertThrows } from "@std/assert";
import {
  boundingBox,
  type Box,
  cropCube,
  cropMask,
  type Dims,
  maskBox,
  unionBox,
} from "../../pipeline/volume/mod.ts";
import { seededRandom } from "../../pipeline/cases/random.ts";

/** The box of the nonzero voxels by brute force: min and max of their coordinates. */
function bruteBox(mask: ArrayLike<number>, [nx, ny]: Dims): Box | undefined {
  const lo = [Infinity, Infinity, Infinity];
  const hi = [-1, -1, -1];
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    const p = [i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))];
    for (let k = 0; k < 3; k++) lo[k] = Math.min(lo[k], p[k]), hi[k] = Math.max(hi[k], p[k]);
  }
  if (hi[0] < 0) return undefined;
  return { start: lo as Dims, size: [0, 1, 2].map((k) => hi[k] - lo[k] + 1) as Dims };
}

Deno.test("maskBox() equals brute force on 40 random sparse masks; undefined when empty", () => {
  const rand = seededRandom(3);
  for (let t = 0; t < 40; t++) {
    const dims: Dims = [
      1 + Math.floor(rand() * 9),
      1 + Math.floor(rand() * 9),
      1 + Math.floor(rand() * 9),
    ];
    const mask = new Float32Array(dims[0] * dims[1] * dims[2]);
    const k = Math.floor(rand() * 4);
    for (let j = 0; j < k; j++) mask[Math.floor(rand() * mask.length)] = rand() < 0.5 ? 3 : -0.5;
    assertEquals(maskBox(mask, dims), bruteBox(mask, dims), `dims [${dims}]`);
  }
  assertEquals(maskBox(new Uint8Array(60), [5, 4, 3]), undefined);
  assertEquals(boundingBox(new Uint8Array(60), [5, 4, 3]), { start: [0, 0, 0], size: [5, 4, 3] });
});

Deno.test("maskBox() and cropMask() name a mask that does not fit its dims", () => {
  assertThrows(
    () => maskBox(new Uint8Array(10), [2, 2, 2]),
    RangeError,
    "does not fit dims [2,2,2]",
  );
  assertThrows(() => maskBox(new Uint8Array(8), [2, 4]), RangeError, "dims must be 3 positive");
  const box: Box = { start: [0, 0, 0], size: [1, 1, 1] };
  assertThrows(
    () => cropMask(new Uint8Array(7), [2, 2, 2], box),
    RangeError,
    "Cannot compute a crop",
  );
});

Deno.test("unionBox() holds both boxes exactly: a=[1..2,0..0,3..5] b=[0..0,2..4,4..4]", () => {
  const a: Box = { start: [1, 0, 3], size: [2, 1, 3] };
  const b: Box = { start: [0, 2, 4], size: [1, 3, 1] };
  assertEquals(unionBox(a, b), { start: [0, 0, 3], size: [3, 5, 3] });
  assertEquals(unionBox(a, a), a);
});

Deno.test("cropMask() copies a box as 0/1, plain (nonzero) or through a table, like brute force", () => {
  const rand = seededRandom(8);
  const dims: Dims = [7, 5, 4];
  const labels = Int32Array.from({ length: 140 }, () => Math.floor(rand() * 4));
  const box: Box = { start: [2, 1, 1], size: [4, 3, 2] };
  const table = new Uint8Array([0, 0, 1, 1]);
  const plain: number[] = [];
  const looked: number[] = [];
  for (let z = 1; z < 3; z++) {
    for (let y = 1; y < 4; y++) {
      for (let x = 2; x < 6; x++) {
        const v = labels[x + 7 * (y + 5 * z)];
        plain.push(v !== 0 ? 1 : 0);
        looked.push(v >= 2 ? 1 : 0);
      }
    }
  }
  assertEquals([...cropMask(labels, dims, box)], plain);
  assertEquals([...cropMask(labels, dims, box, table)], looked);
});

Deno.test("cropCube copies the cube and zero-pads outside the volume: dims [3,2,2], 2 channels", () => {
  const dims: [number, number, number] = [3, 2, 2];
  const data = Float32Array.from({ length: 12 * 2 }, (_, i) => i + 1);
  const inside = cropCube(data, dims, 2, [1, 0, 0], 2);
  // voxel (x=1,y=0,z=0) is index 1 → channels 3, 4
  assertEquals([...inside.subarray(0, 2)], [3, 4]);
  const outside = cropCube(data, dims, 2, [-1, -1, -1], 2);
  assertEquals([...outside.subarray(0, 14)], new Array(14).fill(0));
  assertEquals([...outside.subarray(14, 16)], [1, 2]); // (1,1,1) of the cube is voxel (0,0,0)
});

Deno.test("boundingBox finds the nonzero voxels' box, or the whole grid when there are none", () => {
  const dims: Dims = [5, 4, 3];
  const mask = new Uint8Array(60);
  mask[(1 * 4 + 2) * 5 + 1] = 1; // x1 y2 z1
  mask[(2 * 4 + 3) * 5 + 3] = 1; // x3 y3 z2
  assertEquals(boundingBox(mask, dims), { start: [1, 2, 1], size: [3, 2, 2] });
  assertEquals(boundingBox(new Uint8Array(60), dims), { start: [0, 0, 0], size: [5, 4, 3] });
});
