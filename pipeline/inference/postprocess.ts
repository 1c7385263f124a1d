/**
 * Post-processing of a label map, as nnU-Net offers it: keep only the largest 26-connected
 * component of the foreground (every non-zero label together), setting the voxels of every other
 * component to background. A network trained on few cases scatters small false positives far from
 * the tumour; when the tumour is one connected body, this removes them without touching it.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { keepLargestComponent } from "./postprocess.ts";
 * // A 10×1×1 line: a tumour of 3 voxels (labels 2, 1, 4) and a stray voxel far from it.
 * const labels = new Uint8Array([2, 1, 4, 0, 0, 0, 0, 0, 2, 0]);
 * const removed = keepLargestComponent(labels, [10, 1, 1]);
 * assertEquals([...labels], [2, 1, 4, 0, 0, 0, 0, 0, 0, 0]);
 * assertEquals(removed, 1);
 * ```
 * @module
 */
import { connectedComponents } from "../evaluation/mod.ts";

/**
 * Sets to 0, in place, every foreground voxel outside the largest 26-connected component of the
 * non-zero voxels (ties: the component met first in voxel order is kept).
 *
 * @param labels a label map in x-fastest order
 * @param dims its grid [nx, ny, nz]
 * @returns how many voxels were set to background
 */
export function keepLargestComponent(labels: Uint8Array, dims: readonly number[]): number {
  if (labels.length !== dims[0] * dims[1] * dims[2]) {
    throw new RangeError(
      `a ${labels.length}-voxel label map does not fill a ${dims.join("×")} grid`,
    );
  }
  const { labels: component, count } = connectedComponents(labels, dims);
  if (count <= 1) return 0;
  const size = new Float64Array(count + 1);
  for (let i = 0; i < component.length; i++) size[component[i]]++;
  let largest = 1;
  for (let c = 2; c <= count; c++) if (size[c] > size[largest]) largest = c;
  let removed = 0;
  for (let i = 0; i < labels.length; i++) {
    const c = component[i];
    if (c !== 0 && c !== largest) {
      labels[i] = 0;
      removed++;
    }
  }
  return removed;
}
