/**
 * Tests of the inverted bottleneck's two tape-free paths (model/bottleneck.ts): the lean forward
 * pass and the stage-by-stage vector-Jacobian product the reversible backward pass uses. Both are
 * compared with the composite `bottleneck()` (its value, and `tf.grads` of it for the input and
 * all nine weights) on small odd shapes, several expansions, group counts and both activations,
 * on the plain tfjs path and with the native cpu kernels; and checked for leaks and for their
 * peak memory against their analytic working sets.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals } from "@std/assert";
import {
  bottleneck,
  BOTTLENECK_FIELDS,
  bottleneckForward,
  bottleneckFromList,
  bottleneckList,
  type BottleneckOptions,
  bottleneckShapes,
  bottleneckVjp,
  type BottleneckWeights,
  disableNativeKernels,
  enableNativeKernels,
} from "../../model/mod.ts";
import { assertAllClose, randomNormal, seededRandom } from "../_grad_check.ts";

await tf.setBackend("cpu");

const probe = enableNativeKernels();
disableNativeKernels();
const NATIVE = probe.layers && probe.matMul;
const whyNative = NATIVE ? "" : ` (skipped: ${probe.notes.join("; ")})`;

type Shape5 = [number, number, number, number, number];

interface Case {
  x: Shape5;
  expansion: number;
  groupsExpanded: number;
  groupsNarrow: number;
  activation: "relu6" | "relu";
}

const CASES: Case[] = [
  { x: [1, 3, 5, 4, 4], expansion: 2, groupsExpanded: 4, groupsNarrow: 2, activation: "relu6" },
  { x: [2, 4, 3, 5, 6], expansion: 3, groupsExpanded: 6, groupsNarrow: 3, activation: "relu" },
  { x: [1, 5, 4, 3, 8], expansion: 4, groupsExpanded: 8, groupsNarrow: 8, activation: "relu6" },
  { x: [2, 3, 3, 3, 2], expansion: 5, groupsExpanded: 1, groupsNarrow: 1, activation: "relu6" },
];

const describe = (c: Case) =>
  `x=[${c.x}] t=${c.expansion} groups=${c.groupsExpanded}/${c.groupsNarrow} ${c.activation}`;

const options = (c: Case): BottleneckOptions => ({
  groupsExpanded: c.groupsExpanded,
  groupsNarrow: c.groupsNarrow,
  epsilon: 1e-5,
  activation: c.activation,
});

/**
 * Random weights whose GroupNorm scales and offsets are large enough for ReLU6 to clip on both
 * sides, so that the activations' masks are exercised; the last scale is not zero.
 */
function randomWeights(c: Case, seed: number): BottleneckWeights {
  const rng = seededRandom(seed);
  const shapes = bottleneckShapes(c.x[4], c.expansion);
  return bottleneckFromList(BOTTLENECK_FIELDS.map((field) => {
    const shape = shapes[field];
    if (field.endsWith("Scale")) return randomNormal(shape, rng, { mean: 1, std: 2 });
    if (field.endsWith("Offset")) return randomNormal(shape, rng, { std: 2 });
    return randomNormal(shape, rng, { std: Math.sqrt(2 / shape[0]) });
  }));
}

/** The composite's value and its gradients by automatic differentiation: [value, dx, ...dw]. */
function autodiff(x: tf.Tensor5D, w: BottleneckWeights, dy: tf.Tensor5D, o: BottleneckOptions) {
  return tf.tidy(() => {
    const { value, grads } = tf.valueAndGrads((input: tf.Tensor, ...ws: tf.Tensor[]) =>
      bottleneck(input as tf.Tensor5D, bottleneckFromList(ws), o)
    )([x, ...bottleneckList(w)], dy);
    return [value, ...grads];
  });
}

/** Runs `f` with the native kernels on (restoring the plain path after). */
function withNative<T>(on: boolean, f: () => T): T {
  if (on) enableNativeKernels();
  try {
    return f();
  } finally {
    if (on) disableNativeKernels();
  }
}

const NAMES = ["value", "dx", ...BOTTLENECK_FIELDS.map((f) => `d${f}`)];

for (const [i, c] of CASES.entries()) {
  const o = options(c);
  const inputs = () => {
    const rng = seededRandom(100 + i);
    const x = randomNormal<tf.Rank.R5>(c.x, rng, { mean: 0.5, std: 2 });
    const dy = randomNormal<tf.Rank.R5>(c.x, rng);
    return { x, dy, w: randomWeights(c, 200 + i) };
  };

  for (const native of [false, true]) {
    const path = native ? "native kernels" : "tfjs ops";
    Deno.test({
      name: `bottleneckVjp() equals autodiff of the composite (${path}), ${describe(c)}${
        native ? whyNative : ""
      }`,
      ignore: native && !NATIVE,
      fn() {
        const { x, dy, w } = inputs();
        // The reference is always the plain tfjs composite.
        const expected = autodiff(x, w, dy, o);
        const before = tf.memory().numTensors;
        const got = withNative(native, () => {
          const r = bottleneckVjp(x, w, dy, o);
          return [r.value, r.dx, ...bottleneckList(r.dw)];
        });
        assertEquals(tf.memory().numTensors, before + got.length, "tensors leaked");
        got.forEach((g, k) => assertAllClose(g, expected[k], 2e-4, NAMES[k]));
        tf.dispose([x, dy, ...bottleneckList(w), ...expected, ...got]);
      },
    });

    Deno.test({
      name: `bottleneckForward() equals the composite and leaks nothing (${path}), ${describe(c)}${
        native ? whyNative : ""
      }`,
      ignore: native && !NATIVE,
      fn() {
        const { x, dy, w } = inputs();
        const expected = bottleneck(x, w, o);
        const before = tf.memory().numTensors;
        const got = withNative(native, () => bottleneckForward(x, w, o));
        assertEquals(tf.memory().numTensors, before + 1, "tensors leaked");
        assertEquals(got.shape, c.x);
        assertAllClose(got, expected, 1e-4, "value");
        tf.dispose([x, dy, ...bottleneckList(w), expected, got]);
      },
    });
  }
}

/** Peak bytes above what was alive before `f`, with `f`'s results disposed afterwards. */
async function peakAbove(f: () => tf.Tensor[]): Promise<number> {
  const start = tf.memory().numBytes;
  let out: tf.Tensor[] = [];
  const info = await tf.profile(() => {
    out = f();
  });
  const peak = Number(info.peakBytes); // tf.profile reuses its result object
  tf.dispose(out);
  return peak - start;
}

Deno.test({
  name:
    `bottleneckVjp() holds at most three expanded tensors (native kernels), x=[1,12,12,12,8] t=4${whyNative}`,
  ignore: !NATIVE,
  async fn() {
    const c: Case = {
      x: [1, 12, 12, 12, 8],
      expansion: 4,
      groupsExpanded: 8,
      groupsNarrow: 8,
      activation: "relu6",
    };
    const o = options(c);
    const rng = seededRandom(7);
    const x = randomNormal<tf.Rank.R5>(c.x, rng);
    const dy = randomNormal<tf.Rank.R5>(c.x, rng);
    const w = randomWeights(c, 8);
    const voxels = 12 ** 3;
    const narrow = 4 * voxels * 8; // bytes of one [1, 12, 12, 12, 8] tensor
    const expanded = 4 * narrow;
    const vjp = await withNative(true, () =>
      peakAbove(() => {
        const r = bottleneckVjp(x, w, dy, o);
        return [r.value, r.dx, ...bottleneckList(r.dw)];
      }));
    const forward = await withNative(true, () => peakAbove(() => [bottleneckForward(x, w, o)]));
    const composite = await withNative(true, () => peakAbove(() => autodiff(x, w, dy, o)));
    // Three expanded tensors, plus narrow ones (the value, a3, its gradient, the aliases of the
    // weight-gradient products) and the weights' gradients.
    assert(vjp <= 3 * expanded + 4 * narrow, `vjp peak ${vjp} > ${3 * expanded + 4 * narrow}`);
    assert(forward <= 2 * expanded + narrow, `forward peak ${forward} > ${2 * expanded + narrow}`);
    assert(vjp < composite / 2, `vjp peak ${vjp}, autodiff of the composite ${composite}`);
    tf.dispose([x, dy, ...bottleneckList(w)]);
  },
});
