/**
 * Strided slices of float32 tensors for the cpu backend, in plain TypeScript.
 *
 * Why: every reversible block splits its channels in two (`tf.split(x, 2, 4)`) and its backward
 * pass splits the output and the gradient too. tfjs's cpu kernel copies a slice that is not one
 * contiguous run element by element through `TensorBuffer.get`/`set` and index arrays; once the
 * native kernels took the convolutions and GroupNorm, that was the largest item of a training
 * step's profile (about a quarter of it at 16³). Copying whole runs of the innermost sliced axis
 * is one tight typed-array loop.
 * @module
 */
import * as tf from "../tf.ts";

/**
 * Copies the box `[begin, begin + size)` of a row-major array of `shape` into a new array.
 * `begin` and `size` must be valid and complete (one entry per axis, no -1).
 */
export function stridedSlice(
  values: Float32Array,
  shape: number[],
  begin: number[],
  size: number[],
): Float32Array {
  const rank = shape.length;
  const out = new Float32Array(tf.util.sizeFromShape(size));
  if (out.length === 0) return out;
  // The innermost axes taken whole merge into one run with the last axis that is cut.
  let j = rank - 1;
  let run = 1;
  while (j > 0 && size[j] === shape[j] && begin[j] === 0) run *= shape[j--];
  const strides = tf.util.computeStrides(shape); // element strides of axes 0..rank-2
  const stride = (axis: number) => (axis === rank - 1 ? 1 : strides[axis]);
  run *= size[j];
  const start = begin.reduce((s, b, axis) => s + b * stride(axis), 0);
  // Walk the outer index space (axes 0..j-1) like an odometer.
  const outer = j === 0 ? 1 : tf.util.sizeFromShape(size.slice(0, j));
  const index = new Array(j).fill(0);
  let src = start;
  for (let o = 0, dst = 0; o < outer; o++, dst += run) {
    if (run >= 64) {
      out.set(values.subarray(src, src + run), dst);
    } else {
      for (let k = 0; k < run; k++) out[dst + k] = values[src + k];
    }
    for (let axis = j - 1; axis >= 0; axis--) {
      src += stride(axis);
      if (++index[axis] < size[axis]) break;
      src -= size[axis] * stride(axis);
      index[axis] = 0;
    }
  }
  return out;
}
