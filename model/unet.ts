/**
 * The reversible 3D U-Net: weights, the forward pass, and gradients two ways (reversible and
 * standard autodiff) over the same weights.
 *
 *     stem 3×3×3 → [encoder level l: B reversible blocks → skip_l → down 2×2×2/2] …
 *     … [decoder level l: up 2×2×2/2 → + skip_l → B reversible blocks] → head 1×1×1
 *
 * Following the partially reversible U-Net of Brügger et al., only the block sequences are
 * reversible; the stem, down/up-sampling and head are ordinary layers. The reversible backward pass
 * keeps each sequence's output (which the U-Net needs anyway as skip connections and decoder
 * outputs) and recomputes everything inside the sequences.
 * @module
 */
import * as tf from "./tf.ts";
import {
  BOTTLENECK_FIELDS,
  type BottleneckOptions,
  bottleneckShapes,
  pointwise,
} from "./bottleneck.ts";
import { levelChannels, type NetworkConfig, normGroups } from "./config.ts";
import {
  blockForward,
  type BlockWeights,
  sequenceBackward,
  sequenceForward,
} from "./reversible.ts";
import { upsampleConv } from "./upsample.ts";
import { conv3dFilterGradByTaps, convFilterGradByTaps } from "./conv_grad.ts";

type FilterShape = [number, number, number, number, number];

/** A convolution's kernel and bias. */
export interface ConvWeights<K extends tf.Tensor = tf.Tensor5D> {
  kernel: K;
  bias: tf.Tensor1D;
}

/** Every weight of the network, structured as the network uses them. */
export interface UNetWeights {
  stem: ConvWeights; // kernel [3, 3, 3, in, c0]
  encoder: BlockWeights[][]; // [level][block]
  down: ConvWeights[]; // [level]: kernel [2, 2, 2, C_l, C_l+1]
  up: ConvWeights[]; // [level]: kernel [2, 2, 2, C_l, C_l+1] (C_l+1 → C_l)
  decoder: BlockWeights[][]; // [level][block], levels 0 .. L-2
  head: ConvWeights<tf.Tensor2D>; // kernel [c0, out]
}

/** Options of {@linkcode initWeights}. */
export interface InitOptions {
  /** Seed of every random draw: the same seed gives the same weights. @default 0 */
  seed?: number;
  /**
   * Start the last GroupNorm scale of every F and G at zero, so each block starts as the identity
   * (Goyal et al. 2017); deep additive stacks then train from the first step. @default true
   */
  zeroInitResidual?: boolean;
  /** Make the weights tf.Variables (for training) rather than plain tensors. @default true */
  variables?: boolean;
}

let modelCounter = 0;

/** The bottleneck options of the blocks at level `l`. */
export function blockOptions(config: NetworkConfig, l: number): BottleneckOptions {
  const c = levelChannels(config, l) / 2;
  return {
    groupsExpanded: normGroups(config, c * config.expansion),
    groupsNarrow: normGroups(config, c),
    epsilon: config.epsilon,
    activation: config.activation,
  };
}

/**
 * The weights' stable names and shapes, in a fixed order — the keys of saved checkpoints and of
 * optimizer state.
 */
export function weightShapes(config: NetworkConfig): [string, number[]][] {
  const out: [string, number[]][] = [];
  const { inChannels, outChannels, levels, blocksPerLevel, expansion } = config;
  const c0 = levelChannels(config, 0);
  const blocks = (prefix: string, channels: number) => {
    for (let b = 0; b < blocksPerLevel; b++) {
      for (const fn of ["F", "G"]) {
        const shapes = bottleneckShapes(channels / 2, expansion);
        for (const field of BOTTLENECK_FIELDS) {
          out.push([`${prefix}/block${b}/${fn}/${field}`, shapes[field]]);
        }
      }
    }
  };
  out.push(["stem/kernel", [3, 3, 3, inChannels, c0]], ["stem/bias", [c0]]);
  for (let l = 0; l < levels; l++) {
    const cl = levelChannels(config, l);
    blocks(`encoder${l}`, cl);
    if (l < levels - 1) {
      const next = levelChannels(config, l + 1);
      out.push([`down${l}/kernel`, [2, 2, 2, cl, next]], [`down${l}/bias`, [next]]);
    }
  }
  for (let l = levels - 2; l >= 0; l--) {
    const cl = levelChannels(config, l);
    out.push([`up${l}/kernel`, [2, 2, 2, cl, levelChannels(config, l + 1)]], [`up${l}/bias`, [cl]]);
    blocks(`decoder${l}`, cl);
  }
  out.push(["head/kernel", [c0, outChannels]], ["head/bias", [outChannels]]);
  return out;
}

/** Standard deviation of a weight's initial values, or a constant for norm scales and biases. */
function initOf(
  name: string,
  shape: number[],
  zeroInitResidual: boolean,
): number | { std: number } {
  const field = name.split("/").pop()!;
  if (field === "bias" || field.endsWith("Offset")) return 0;
  if (field === "norm3Scale") return zeroInitResidual ? 0 : 1;
  if (field.endsWith("Scale")) return 1;
  // He initialisation where an activation follows, LeCun (1/fan_in) where the layer is linear.
  if (field === "expand") return { std: Math.sqrt(2 / shape[0]) };
  if (field === "depthwise") return { std: Math.sqrt(2 / 27) };
  if (field === "project") return { std: Math.sqrt(1 / shape[0]) };
  if (name.startsWith("stem")) return { std: Math.sqrt(1 / (27 * shape[3])) };
  if (name.startsWith("down")) return { std: Math.sqrt(1 / (8 * shape[3])) };
  if (name.startsWith("up")) return { std: Math.sqrt(1 / shape[4]) };
  return { std: Math.sqrt(1 / shape[0]) }; // head
}

/** Builds the structured weights from a name → tensor map (as produced by {@linkcode weightShapes}). */
export function structureWeights(
  config: NetworkConfig,
  named: Map<string, tf.Tensor>,
): UNetWeights {
  const get = <T extends tf.Tensor>(name: string): T => {
    const t = named.get(name);
    if (!t) throw new RangeError(`Missing weight "${name}"`);
    return t as T;
  };
  const conv = <K extends tf.Tensor>(p: string): ConvWeights<K> => ({
    kernel: get<K>(`${p}/kernel`),
    bias: get(`${p}/bias`),
  });
  const blocks = (prefix: string): BlockWeights[] =>
    Array.from({ length: config.blocksPerLevel }, (_, b) => {
      const fn = (f: string) =>
        Object.fromEntries(
          BOTTLENECK_FIELDS.map((field) => [field, get(`${prefix}/block${b}/${f}/${field}`)]),
        ) as unknown as BlockWeights["F"];
      return { F: fn("F"), G: fn("G") };
    });
  const levels = Array.from({ length: config.levels }, (_, l) => l);
  return {
    stem: conv("stem"),
    encoder: levels.map((l) => blocks(`encoder${l}`)),
    down: levels.slice(0, -1).map((l) => conv(`down${l}`)),
    up: levels.slice(0, -1).map((l) => conv(`up${l}`)),
    decoder: levels.slice(0, -1).map((l) => blocks(`decoder${l}`)),
    head: conv<tf.Tensor2D>("head"),
  };
}

/** A network: its configuration, its weights by name, and the same weights structured. */
export interface UNet {
  config: NetworkConfig;
  /** name → weight, in {@linkcode weightShapes} order. */
  named: Map<string, tf.Tensor>;
  weights: UNetWeights;
}

/** Creates a network with freshly initialised weights. */
export function createUNet(config: NetworkConfig, options: InitOptions = {}): UNet {
  const { seed = 0, zeroInitResidual = true, variables = true } = options;
  const id = modelCounter++;
  const named = new Map<string, tf.Tensor>();
  weightShapes(config).forEach(([name, shape], i) => {
    const init = initOf(name, shape, zeroInitResidual);
    const value = typeof init === "number"
      ? tf.fill(shape, init)
      // + 1: tfjs treats a seed of 0 as "no seed" and would draw this weight at random
      : tf.randomNormal(shape, 0, init.std, "float32", seed * 100003 + i + 1);
    named.set(name, variables ? tf.variable(value, true, `revunet${id}/${name}`) : value);
    if (variables) value.dispose();
  });
  return { config, named, weights: structureWeights(config, named) };
}

/** Creates a network from given weight values (copied), checking every name and shape. */
export function unetFromWeights(
  config: NetworkConfig,
  values: Map<string, tf.Tensor>,
  variables = true,
): UNet {
  const id = modelCounter++;
  const named = new Map<string, tf.Tensor>();
  const expected = weightShapes(config);
  for (const [name, shape] of expected) {
    const v = values.get(name);
    if (!v) {
      throw new RangeError(`Weights lack "${name}" (shape [${shape}]) for this configuration`);
    }
    if (v.shape.join() !== shape.join()) {
      throw new RangeError(
        `Weight "${name}" has shape [${v.shape}], the configuration needs [${shape}]`,
      );
    }
    named.set(name, variables ? tf.variable(v, true, `revunet${id}/${name}`) : tf.clone(v));
  }
  const extra = [...values.keys()].filter((k) => !expected.some(([n]) => n === k));
  if (extra.length > 0) {
    for (const t of named.values()) t.dispose();
    throw new RangeError(
      `Weights have entries this configuration does not use: ${extra.slice(0, 5).join(", ")}`,
    );
  }
  return { config, named, weights: structureWeights(config, named) };
}

/** Frees every weight of the network. */
export function disposeUNet(net: UNet): void {
  for (const t of net.named.values()) t.dispose();
}

/** Number of scalar weights. */
export function paramCount(net: UNet): number {
  let n = 0;
  for (const t of net.named.values()) n += t.size;
  return n;
}

// ---- the layers outside the reversible sequences -------------------------------------------------

function stem(x: tf.Tensor5D, w: ConvWeights): tf.Tensor5D {
  return tf.add(tf.conv3d(x, w.kernel, 1, "same"), w.bias);
}

function down(x: tf.Tensor5D, w: ConvWeights): tf.Tensor5D {
  return tf.add(tf.conv3d(x, w.kernel, 2, "valid"), w.bias);
}

function head(x: tf.Tensor5D, w: ConvWeights<tf.Tensor2D>): tf.Tensor5D {
  return tf.add(pointwise(x, w.kernel), w.bias);
}

/**
 * The vector-Jacobian product of a biased convolution (the stem, a down-sampling layer) straight
 * from tfjs's two convolution-gradient kernels: unlike `tf.grads` of the layer, it does not
 * recompute the layer's output, and it skips the input gradient when it is not wanted (the stem's
 * input is the image).
 */
function convVjp(
  x: tf.Tensor5D,
  w: ConvWeights,
  dy: tf.Tensor5D,
  stride: number,
  pad: "same" | "valid",
  wantInput: boolean,
): { kernel: tf.Tensor; bias: tf.Tensor; dx?: tf.Tensor5D } {
  const strides: [number, number, number] = [stride, stride, stride];
  const engine = tf.engine();
  // webgpu's own kernel is one thread per filter value looping over every voxel (conv_grad.ts).
  const kernel = convFilterGradByTaps()
    ? conv3dFilterGradByTaps(x, dy, w.kernel.shape as FilterShape, stride, pad)
    : engine.runKernel<tf.Tensor>("Conv3DBackpropFilterV2", { x, dy }, {
      strides,
      pad,
      filterShape: w.kernel.shape,
    });
  const bias = tf.sum(dy, [0, 1, 2, 3]);
  const dx = wantInput
    ? engine.runKernel<tf.Tensor5D>("Conv3DBackpropInputV2", { dy, filter: w.kernel }, {
      strides,
      pad,
      inputShape: x.shape,
    })
    : undefined;
  return { kernel, bias, ...(dx ? { dx } : {}) };
}

function checkInput(config: NetworkConfig, x: tf.Tensor): asserts x is tf.Tensor5D {
  const m = 2 ** (config.levels - 1);
  if (x.rank !== 5 || x.shape[4] !== config.inChannels) {
    throw new TypeError(
      `Network input must be [n, d, h, w, ${config.inChannels}], found [${x.shape}]`,
    );
  }
  if (x.shape.slice(1, 4).some((s) => s % m !== 0)) {
    throw new RangeError(
      `Network input's spatial size [${
        x.shape.slice(1, 4)
      }] must be a multiple of ${m} on each axis (${config.levels} levels)`,
    );
  }
}

/**
 * The forward pass as plain composed ops: under a gradient tape this is the "standard twin" that
 * stores every activation. Returns logits [n, d, h, w, out].
 */
export function forwardComposite(net: UNet, x: tf.Tensor5D): tf.Tensor5D {
  checkInput(net.config, x);
  const { config, weights: w } = net;
  const blocks = (t: tf.Tensor5D, seq: BlockWeights[], l: number) => {
    const o = blockOptions(config, l);
    for (const b of seq) t = blockForward(t, b, o);
    return t;
  };
  const skips: tf.Tensor5D[] = [];
  let t = stem(x, w.stem);
  for (let l = 0; l < config.levels; l++) {
    t = blocks(t, w.encoder[l], l);
    skips.push(t);
    if (l < config.levels - 1) t = down(t, w.down[l]);
  }
  for (let l = config.levels - 2; l >= 0; l--) {
    t = tf.add(upsampleConv(t, w.up[l].kernel, w.up[l].bias), skips[l]);
    t = blocks(t, w.decoder[l], l);
  }
  return head(t, w.head);
}

/**
 * Inference: logits for x, each stage in its own scope so that only the tensors the U-Net needs
 * later (skips) are alive at once. Returns [n, d, h, w, out].
 */
export function predictLogits(net: UNet, x: tf.Tensor5D): tf.Tensor5D {
  checkInput(net.config, x);
  const { config, weights: w } = net;
  const skips: tf.Tensor5D[] = [];
  let t = tf.tidy(() => stem(x, w.stem));
  for (let l = 0; l < config.levels; l++) {
    const s = sequenceForward(t, w.encoder[l], blockOptions(config, l));
    t.dispose();
    skips.push(s);
    t = l < config.levels - 1 ? tf.tidy(() => down(s, w.down[l])) : s;
  }
  for (let l = config.levels - 2; l >= 0; l--) {
    const u = tf.tidy(() =>
      tf.add(upsampleConv(t, w.up[l].kernel, w.up[l].bias), skips[l]) as tf.Tensor5D
    );
    if (t !== skips[l + 1]) t.dispose();
    skips[l + 1].dispose();
    t = sequenceForward(u, w.decoder[l], blockOptions(config, l));
    u.dispose();
  }
  skips[0].dispose();
  const logits = tf.tidy(() => head(t, w.head));
  t.dispose();
  return logits;
}

/** A loss of the logits: a scalar. */
export type LossFn = (logits: tf.Tensor5D) => tf.Scalar;

/** A loss value and the gradient of every weight, by name. Dispose the gradients after use. */
export interface LossAndGrads {
  loss: tf.Scalar;
  grads: Map<string, tf.Tensor>;
  /** dLoss/dx, when asked for with `inputGrad`. */
  inputGrad?: tf.Tensor5D;
}

/**
 * Gradients by ordinary autodiff through {@linkcode forwardComposite}: every activation is kept
 * until the backward pass. The "standard twin" memory and gradients are compared against.
 */
export function standardGrads(
  net: UNet,
  x: tf.Tensor5D,
  loss: LossFn,
  inputGrad = false,
): LossAndGrads {
  const names = [...net.named.keys()];
  const tensors = names.map((n) => net.named.get(n)!);
  const { value, grads } = tf.tidy(() =>
    tf.valueAndGrads((input: tf.Tensor, ...ws: tf.Tensor[]) => {
      const rebuilt = structureWeights(net.config, new Map(names.map((n, i) => [n, ws[i]])));
      return loss(forwardComposite({ ...net, weights: rebuilt }, input as tf.Tensor5D));
    })([x, ...tensors])
  );
  const [dx, ...dw] = grads;
  if (!inputGrad) dx.dispose();
  return {
    loss: value as tf.Scalar,
    grads: new Map(names.map((n, i) => [n, dw[i]])),
    ...(inputGrad ? { inputGrad: dx as tf.Tensor5D } : {}),
  };
}

/**
 * Gradients with the reversible backward pass: the forward pass keeps only each block sequence's
 * output; the backward pass walks the network in reverse, recomputing every sequence's inside from
 * its output. Same values as {@linkcode standardGrads} to float32 precision.
 */
export function reversibleGrads(
  net: UNet,
  x: tf.Tensor5D,
  loss: LossFn,
  inputGrad = false,
): LossAndGrads {
  checkInput(net.config, x);
  const { config, weights: w } = net;
  const L = config.levels;
  const grads = new Map<string, tf.Tensor>();
  const put = (prefix: string, g: Record<string, tf.Tensor>) => {
    for (const [k, v] of Object.entries(g)) grads.set(`${prefix}/${k}`, v);
  };
  const putBlocks = (prefix: string, gs: { F: object; G: object }[]) =>
    gs.forEach((g, b) => {
      put(`${prefix}/block${b}/F`, g.F as Record<string, tf.Tensor>);
      put(`${prefix}/block${b}/G`, g.G as Record<string, tf.Tensor>);
    });
  /** VJP of a plain layer f(input, kernel, bias) with respect to all three. */
  const layerVjp = <K extends tf.Tensor>(
    f: (t: tf.Tensor5D, cw: ConvWeights<K>) => tf.Tensor5D,
    input: tf.Tensor5D,
    cw: ConvWeights<K>,
    dy: tf.Tensor5D,
  ) =>
    tf.tidy(() => {
      const g = tf.grads((t: tf.Tensor, k: tf.Tensor, b: tf.Tensor) =>
        f(t as tf.Tensor5D, { kernel: k as K, bias: b as tf.Tensor1D })
      )([input, cw.kernel, cw.bias], dy);
      return { dx: g[0] as tf.Tensor5D, kernel: g[1], bias: g[2] };
    });

  // ---- forward: keep x, the encoder outputs (skips) and the decoder outputs
  const enc: tf.Tensor5D[] = [];
  let a = tf.tidy(() => stem(x, w.stem));
  for (let l = 0; l < L; l++) {
    enc.push(sequenceForward(a, w.encoder[l], blockOptions(config, l)));
    a.dispose();
    if (l < L - 1) a = tf.tidy(() => down(enc[l], w.down[l]));
  }
  const dec: tf.Tensor5D[] = new Array(L); // dec[L-1] is the bottom encoder output
  dec[L - 1] = enc[L - 1];
  for (let l = L - 2; l >= 0; l--) {
    const u = tf.tidy(() =>
      tf.add(upsampleConv(dec[l + 1], w.up[l].kernel, w.up[l].bias), enc[l]) as tf.Tensor5D
    );
    dec[l] = sequenceForward(u, w.decoder[l], blockOptions(config, l));
    u.dispose();
  }

  // ---- loss and the head
  const top = tf.tidy(() => {
    const { value, grads: g } = tf.valueAndGrads((t: tf.Tensor, k: tf.Tensor, b: tf.Tensor) =>
      loss(head(t as tf.Tensor5D, { kernel: k as tf.Tensor2D, bias: b as tf.Tensor1D }))
    )([dec[0], w.head.kernel, w.head.bias]);
    return { value: value as tf.Scalar, dx: g[0] as tf.Tensor5D, kernel: g[1], bias: g[2] };
  });
  put("head", { kernel: top.kernel, bias: top.bias });

  // ---- decoder, top to bottom: the gradient of each skip is collected for the encoder pass
  const skipGrads: tf.Tensor5D[] = new Array(L - 1);
  let dOut = top.dx;
  for (let l = 0; l < L - 1; l++) {
    const seq = sequenceBackward(dec[l], dOut, w.decoder[l], blockOptions(config, l));
    putBlocks(`decoder${l}`, seq.grads);
    seq.x.dispose();
    dOut.dispose();
    if (l > 0) dec[l].dispose();
    skipGrads[l] = seq.dx; // u = up(dec[l+1]) + skip: both get du
    const up = layerVjp(
      (t, cw) => upsampleConv(t, cw.kernel, cw.bias),
      dec[l + 1],
      w.up[l],
      seq.dx,
    );
    put(`up${l}`, { kernel: up.kernel, bias: up.bias });
    dOut = up.dx;
  }
  dec[0].dispose();

  // ---- encoder, bottom to top
  let dx: tf.Tensor5D | undefined;
  for (let l = L - 1; l >= 0; l--) {
    const dTotal = l < L - 1 ? tf.add(dOut, skipGrads[l]) as tf.Tensor5D : dOut;
    if (l < L - 1) {
      dOut.dispose();
      skipGrads[l].dispose();
    }
    const seq = sequenceBackward(enc[l], dTotal, w.encoder[l], blockOptions(config, l));
    putBlocks(`encoder${l}`, seq.grads);
    dTotal.dispose();
    enc[l].dispose();
    if (l > 0) {
      const dn = convVjp(enc[l - 1], w.down[l - 1], seq.dx, 2, "valid", true);
      put(`down${l - 1}`, { kernel: dn.kernel, bias: dn.bias });
      dOut = dn.dx!;
    } else {
      const st = convVjp(x, w.stem, seq.dx, 1, "same", inputGrad);
      put("stem", { kernel: st.kernel, bias: st.bias });
      dx = st.dx;
    }
    seq.x.dispose();
    seq.dx.dispose();
  }
  // Same order as the weights, so callers can zip them.
  const ordered = new Map([...net.named.keys()].map((n) => [n, grads.get(n)!]));
  return { loss: top.value, grads: ordered, ...(dx ? { inputGrad: dx } : {}) };
}

/** Gradients with the configured method (reversible unless `config.reversible` is false). */
export function computeGrads(net: UNet, x: tf.Tensor5D, loss: LossFn): LossAndGrads {
  return net.config.reversible ? reversibleGrads(net, x, loss) : standardGrads(net, x, loss);
}
