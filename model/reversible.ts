/**
 * The reversible block and the reversible sequence's memory-saving backward pass.
 *
 * A block splits its C channels into halves and couples them additively (RevNet):
 *
 *     y1 = x1 + F(x2)        x2 = y2 − G(y1)
 *     y2 = x2 + G(y1)        x1 = y1 − F(x2)
 *
 * so a block's input can be recomputed exactly from its output. The backward pass of a sequence
 * therefore needs only the sequence's output: it walks the blocks from last to first, recomputing
 * each block's input and taking that block's gradients, disposing as it goes.
 *
 * Why not tf.customGrad: in tfjs 4.22 a gradient function cannot call tf.grads (the inner call
 * replaces the active tape), and a block's backward needs the gradients of F and G. So the network
 * drives the backward pass itself (see unet.ts), calling {@linkcode blockBackward} at top level.
 * @module
 */
import * as tf from "./tf.ts";
import {
  bottleneck,
  bottleneckForward,
  type BottleneckOptions,
  bottleneckVjp,
  type BottleneckWeights,
} from "./bottleneck.ts";

/** Weights of one reversible block: its two inverted bottlenecks. */
export interface BlockWeights {
  F: BottleneckWeights;
  G: BottleneckWeights;
}

/** Gradients of one block's weights, in the same shape as {@linkcode BlockWeights}. */
export type BlockGrads = BlockWeights;

/**
 * y = block(x) for x of shape [n, d, h, w, C], as composed ops that automatic differentiation can
 * go through (the standard twin). Outside a tape, {@linkcode sequenceForward} is leaner.
 */
export function blockForward(x: tf.Tensor5D, w: BlockWeights, o: BottleneckOptions): tf.Tensor5D {
  return tf.tidy(() => {
    const [x1, x2] = tf.split(x, 2, 4) as [tf.Tensor5D, tf.Tensor5D]; // [n,d,h,w,C/2] each
    const y1 = tf.add(x1, bottleneck(x2, w.F, o)) as tf.Tensor5D;
    const y2 = tf.add(x2, bottleneck(y1, w.G, o)) as tf.Tensor5D;
    return tf.concat([y1, y2], 4) as tf.Tensor5D; // [n,d,h,w,C]
  });
}

/**
 * y = block(x) outside any gradient tape, freeing every intermediate as soon as it is used: a
 * tf.tidy around the whole block would keep F's and G's expanded intermediates until it ends.
 */
function blockValue(x: tf.Tensor5D, w: BlockWeights, o: BottleneckOptions): tf.Tensor5D {
  const [x1, x2] = tf.split(x, 2, 4) as [tf.Tensor5D, tf.Tensor5D]; // [n,d,h,w,C/2] each
  const f = bottleneckForward(x2, w.F, o);
  const y1 = tf.add(x1, f) as tf.Tensor5D;
  tf.dispose([x1, f]);
  const g = bottleneckForward(y1, w.G, o);
  const y2 = tf.add(x2, g) as tf.Tensor5D;
  tf.dispose([x2, g]);
  const y = tf.concat([y1, y2], 4) as tf.Tensor5D; // [n,d,h,w,C]
  tf.dispose([y1, y2]);
  return y;
}

/** x = block⁻¹(y): the block's input recomputed from its output (outside any gradient tape). */
export function blockInverse(y: tf.Tensor5D, w: BlockWeights, o: BottleneckOptions): tf.Tensor5D {
  const [y1, y2] = tf.split(y, 2, 4) as [tf.Tensor5D, tf.Tensor5D];
  const g = bottleneckForward(y1, w.G, o);
  const x2 = tf.sub(y2, g) as tf.Tensor5D;
  tf.dispose([y2, g]);
  const f = bottleneckForward(x2, w.F, o);
  const x1 = tf.sub(y1, f) as tf.Tensor5D;
  tf.dispose([y1, f]);
  const x = tf.concat([x1, x2], 4) as tf.Tensor5D;
  tf.dispose([x1, x2]);
  return x;
}

/**
 * Runs blocks in sequence, each in its own tidy scope, so that only the current tensor is alive
 * between blocks. Under a gradient tape this would store everything; call it outside one.
 * The input is not disposed; the returned tensor is new.
 */
export function sequenceForward(
  x: tf.Tensor5D,
  blocks: BlockWeights[],
  o: BottleneckOptions,
): tf.Tensor5D {
  let current = x;
  for (const w of blocks) {
    const next = blockValue(current, w, o);
    if (current !== x) current.dispose();
    current = next;
  }
  return current === x ? tf.clone(x) : current;
}

/**
 * The backward pass of one block from its output alone.
 * @param y the block's output [n, d, h, w, C]
 * @param dy the loss gradient with respect to y
 * @returns the recomputed input x, the gradient dx, and the gradients of F's and G's weights
 */
export function blockBackward(
  y: tf.Tensor5D,
  dy: tf.Tensor5D,
  w: BlockWeights,
  o: BottleneckOptions,
): { x: tf.Tensor5D; dx: tf.Tensor5D; grads: BlockGrads } {
  const [y1, y2] = tf.split(y, 2, 4) as [tf.Tensor5D, tf.Tensor5D]; // [n,d,h,w,C/2]
  const [dy1, dy2] = tf.split(dy, 2, 4) as [tf.Tensor5D, tf.Tensor5D];
  // y2 = x2 + G(y1): G's gradient flows into y1 on top of dy1.
  const g = bottleneckVjp(y1, w.G, dy2, o);
  const x2 = tf.sub(y2, g.value) as tf.Tensor5D;
  const dy1Total = tf.add(dy1, g.dx) as tf.Tensor5D;
  tf.dispose([y2, g.value, g.dx, dy1]);
  // y1 = x1 + F(x2)
  const f = bottleneckVjp(x2, w.F, dy1Total, o);
  const x1 = tf.sub(y1, f.value) as tf.Tensor5D;
  const dx2 = tf.add(dy2, f.dx) as tf.Tensor5D;
  tf.dispose([y1, f.value, f.dx, dy2]);
  const x = tf.concat([x1, x2], 4) as tf.Tensor5D;
  const dx = tf.concat([dy1Total, dx2], 4) as tf.Tensor5D;
  tf.dispose([x1, x2, dy1Total, dx2]);
  return { x, dx, grads: { F: f.dw, G: g.dw } };
}

/**
 * The backward pass of a block sequence from its output alone: no activation inside the sequence
 * was kept by the forward pass.
 * @param y the sequence's output (not disposed)
 * @param dy the loss gradient with respect to y (not disposed)
 * @returns the recomputed sequence input, its gradient, and each block's weight gradients
 */
export function sequenceBackward(
  y: tf.Tensor5D,
  dy: tf.Tensor5D,
  blocks: BlockWeights[],
  o: BottleneckOptions,
): { x: tf.Tensor5D; dx: tf.Tensor5D; grads: BlockGrads[] } {
  let out = y;
  let dOut = dy;
  const grads: BlockGrads[] = new Array(blocks.length);
  for (let b = blocks.length - 1; b >= 0; b--) {
    const step = blockBackward(out, dOut, blocks[b], o);
    if (out !== y) out.dispose();
    if (dOut !== dy) dOut.dispose();
    out = step.x;
    dOut = step.dx;
    grads[b] = step.grads;
  }
  return {
    x: out === y ? tf.clone(y) : out,
    dx: dOut === dy ? tf.clone(dy) : dOut,
    grads,
  };
}
