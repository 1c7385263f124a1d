/**
 * The 2×2×2 stride-2 transposed convolution of the decoder, written as one matrix product.
 *
 * Why not tf.conv3dTranspose: tfjs 4.22 registers no gradient for Conv3DBackpropInputV2, so it
 * cannot be trained through. With kernel = stride = 2 every output voxel receives exactly one input
 * voxel, so the layer is a [voxels, cin]·[cin, 8·cout] product followed by interleaving the eight
 * offsets into the doubled grid — all ops with gradients, and faster on the cpu backend too.
 * @module
 */
import * as tf from "./tf.ts";

/**
 * Transposed convolution, kernel 2, stride 2, with bias.
 * @param x [n, d, h, w, cin]
 * @param kernel [2, 2, 2, cout, cin] (tf.conv3dTranspose's filter layout)
 * @param bias [cout]
 * @returns [n, 2d, 2h, 2w, cout]
 */
export function upsampleConv(x: tf.Tensor5D, kernel: tf.Tensor5D, bias: tf.Tensor1D): tf.Tensor5D {
  const [n, d, h, w, cin] = x.shape;
  const [kd, kh, kw, cout, kin] = kernel.shape;
  if (kd !== 2 || kh !== 2 || kw !== 2 || kin !== cin || bias.shape[0] !== cout) {
    throw new TypeError(
      `upsampleConv: kernel must be [2,2,2,cout,${cin}] and bias [cout], found [${kernel.shape}] and [${bias.shape}]`,
    );
  }
  return tf.tidy(() => {
    // [cin, (a, b, c, cout)]: a column block per kernel offset
    const k = tf.reshape(tf.transpose(kernel, [4, 0, 1, 2, 3]), [cin, 8 * cout]);
    const y = tf.matMul(tf.reshape(x, [n * d * h * w, cin]), k); // [voxels, 8·cout]
    // (c, cout) stay adjacent, so they travel as one axis: rank 6, which every backend transposes.
    const split = tf.reshape(y, [n * d, h, w, 2, 2, 2 * cout]); // [(n,d), h, w, a, b, (c, cout)]
    const interleaved = tf.transpose(split, [0, 3, 1, 4, 2, 5]); // [(n,d), a, h, b, w, (c, cout)]
    const out = tf.reshape(interleaved, [n, 2 * d, 2 * h, 2 * w, cout]);
    return tf.add(out, bias) as tf.Tensor5D;
  });
}
