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

/** A block's input or output as its two channel halves, [n, d, h, w, C/2] each. */
type Halves = [tf.Tensor5D, tf.Tensor5D];

/**
 * (y1, y2) = block(x1, x2) outside any gradient tape, on halves, taking ownership of x1 and x2:
 * each is freed as soon as it is used (a tf.tidy around the block would keep F's and G's
 * expanded intermediates until it ends).
 */
function blockValue(
  x1: tf.Tensor5D,
  x2: tf.Tensor5D,
  w: BlockWeights,
  o: BottleneckOptions,
): Halves {
  const f = bottleneckForward(x2, w.F, o);
  const y1 = tf.add(x1, f) as tf.Tensor5D;
  tf.dispose([x1, f]);
  const g = bottleneckForward(y1, w.G, o);
  const y2 = tf.add(x2, g) as tf.Tensor5D;
  tf.dispose([x2, g]);
  return [y1, y2];
}

/** x = block⁻¹(y): the block's input recomputed from its output (outside any gradient tape). */
export function blockInverse(y: tf.Tensor5D, w: BlockWeights, o: BottleneckOptions): tf.Tensor5D {
  const [y1, y2] = tf.split(y, 2, 4) as Halves;
  const g = bottleneckForward(y1, w.G, o);
  const x2 = tf.sub(y2, g) as tf.Tensor5D;
  tf.dispose([y2, g]);
  const f = bottleneckForward(x2, w.F, o);
  const x1 = tf.sub(y1, f) as tf.Tensor5D;
  tf.dispose([y1, f]);
  return joinHalves([x1, x2]);
}

/**
 * Runs blocks in sequence, freeing as it goes, so that only the current activation (as its two
 * halves) is alive between blocks. Under a gradient tape this would store everything; call it
 * outside one. The input is not disposed; the returned tensor is new.
 */
export function sequenceForward(
  x: tf.Tensor5D,
  blocks: BlockWeights[],
  o: BottleneckOptions,
): tf.Tensor5D {
  if (blocks.length === 0) return tf.clone(x);
  // The halves stay apart from the first block to the last: one split and one concatenation
  // per sequence, not one of each per block.
  let halves = tf.split(x, 2, 4) as Halves;
  for (const w of blocks) halves = blockValue(halves[0], halves[1], w, o);
  return joinHalves(halves);
}

/** The channel concatenation of two halves, which are freed. */
function joinHalves(halves: Halves): tf.Tensor5D {
  const whole = tf.concat(halves, 4) as tf.Tensor5D;
  tf.dispose(halves);
  return whole;
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
  const step = blockBackwardHalves(
    tf.split(y, 2, 4) as Halves,
    tf.split(dy, 2, 4) as Halves,
    w,
    o,
  );
  return { x: joinHalves(step.x), dx: joinHalves(step.dx), grads: step.grads };
}

/**
 * {@linkcode blockBackward} on halves, taking ownership of y's and dy's halves (each freed as
 * soon as it is used).
 */
function blockBackwardHalves(
  [y1, y2]: Halves,
  [dy1, dy2]: Halves,
  w: BlockWeights,
  o: BottleneckOptions,
): { x: Halves; dx: Halves; grads: BlockGrads } {
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
  return { x: [x1, x2], dx: [dy1Total, dx2], grads: { F: f.dw, G: g.dw } };
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
  if (blocks.length === 0) return { x: tf.clone(y), dx: tf.clone(dy), grads: [] };
  // As in sequenceForward, the halves stay apart through the whole sequence.
  let out = tf.split(y, 2, 4) as Halves;
  let dOut = tf.split(dy, 2, 4) as Halves;
  const grads: BlockGrads[] = new Array(blocks.length);
  for (let b = blocks.length - 1; b >= 0; b--) {
    const step = blockBackwardHalves(out, dOut, blocks[b], o);
    out = step.x;
    dOut = step.dx;
    grads[b] = step.grads;
  }
  return { x: joinHalves(out), dx: joinHalves(dOut), grads };
}
