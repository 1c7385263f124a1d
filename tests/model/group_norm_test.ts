/**
 * model/group_norm.ts, the fused GroupNorm(+activation): against a composite of tfjs ops and a plain
 * loop (values), autodiff of the composite and central differences (gradients); leaks, what it
 * keeps, peak memory, and groupCount().
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { groupCount, groupNorm, type GroupNormActivation } from "../../model/group_norm.ts";
import {
  assertAllClose,
  directionalDerivative,
  peakBytesAbove,
  randomNormal,
  seededRandom,
  type TensorFn,
  valueAndGrads,
} from "../_grad_check.ts";

await tf.setBackend("cpu");

type Shape5 = [number, number, number, number, number];

// ---------------------------------------------------------------------------------------------
// References for groupNorm
// ---------------------------------------------------------------------------------------------

/** reshape + tf.moments + arithmetic, left to automatic differentiation. */
function groupNormComposite(
  x: tf.Tensor5D,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  groups: number,
  activation: GroupNormActivation,
  epsilon = 1e-5,
): tf.Tensor5D {
  return tf.tidy(() => {
    const [n, d, h, w, c] = x.shape;
    const xg = tf.reshape(x, [n, d * h * w, groups, c / groups]); // [n, voxels, G, c/G]
    const { mean, variance } = tf.moments(xg, [1, 3], true); // [n, 1, G, 1]
    const xhat = tf.mul(tf.sub(xg, mean), tf.rsqrt(tf.add(variance, epsilon)));
    const y = tf.add(tf.mul(tf.reshape(xhat, x.shape), gamma), beta) as tf.Tensor5D;
    if (activation === "relu") return tf.relu(y);
    if (activation === "relu6") return tf.relu6(y);
    return y;
  });
}

/** Plain loops in float64. */
function groupNormLoop(
  x: tf.Tensor5D,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  groups: number,
  activation: GroupNormActivation,
  epsilon = 1e-5,
): Float64Array {
  const [n, d, h, w, c] = x.shape;
  const voxels = d * h * w;
  const cg = c / groups;
  const xv = x.dataSync();
  const gv = gamma.dataSync();
  const bv = beta.dataSync();
  const out = new Float64Array(xv.length);
  for (let i = 0; i < n; i++) {
    for (let g = 0; g < groups; g++) {
      let sum = 0;
      for (let v = 0; v < voxels; v++) {
        for (let k = 0; k < cg; k++) sum += xv[(i * voxels + v) * c + g * cg + k];
      }
      const mean = sum / (voxels * cg);
      let sq = 0;
      for (let v = 0; v < voxels; v++) {
        for (let k = 0; k < cg; k++) sq += (xv[(i * voxels + v) * c + g * cg + k] - mean) ** 2;
      }
      const rstd = 1 / Math.sqrt(sq / (voxels * cg) + epsilon);
      for (let v = 0; v < voxels; v++) {
        for (let k = 0; k < cg; k++) {
          const ch = g * cg + k;
          const j = (i * voxels + v) * c + ch;
          const y = gv[ch] * (xv[j] - mean) * rstd + bv[ch];
          out[j] = activation === "relu"
            ? Math.max(0, y)
            : activation === "relu6"
            ? Math.min(6, Math.max(0, y))
            : y;
        }
      }
    }
  }
  return out;
}

/**
 * Inputs whose activations reach both kinks of relu6 (scale ~ ±3, offset ~ 2), and an incoming
 * gradient set to zero wherever the pre-activation is within `margin` of a kink: there the two
 * implementations may round to different sides, and a zero gradient makes the mask irrelevant.
 */
function gnInputs(xShape: Shape5, seed: number, margin = 1e-3) {
  const rng = seededRandom(seed);
  const c = xShape[4];
  const x = randomNormal<tf.Rank.R5>(xShape, rng, { mean: 0.5, std: 2 });
  const gamma = randomNormal<tf.Rank.R1>([c], rng, { std: 3 });
  const beta = randomNormal<tf.Rank.R1>([c], rng, { mean: 2, std: 2 });
  const rawDy = randomNormal<tf.Rank.R5>(xShape, rng);
  const dy = (groups: number) =>
    tf.tidy(() => {
      const pre = groupNormComposite(x, gamma, beta, groups, "none");
      const nearKink = tf.logicalOr(
        tf.less(tf.abs(pre), margin),
        tf.less(tf.abs(tf.sub(pre, 6)), margin),
      );
      return tf.where(nearKink, tf.zerosLike(rawDy), rawDy) as tf.Tensor5D;
    });
  return { x, gamma, beta, rawDy, dy, rng };
}

const gnFused = (groups: number, activation: GroupNormActivation): TensorFn => (x, g, b) =>
  groupNorm(x as tf.Tensor5D, g as tf.Tensor1D, b as tf.Tensor1D, { groups, activation });
const gnComposite = (groups: number, activation: GroupNormActivation): TensorFn => (x, g, b) =>
  groupNormComposite(x as tf.Tensor5D, g as tf.Tensor1D, b as tf.Tensor1D, groups, activation);

// ---------------------------------------------------------------------------------------------
// groupNorm
// ---------------------------------------------------------------------------------------------

const ACTIVATIONS: GroupNormActivation[] = ["none", "relu", "relu6"];

for (const groups of [1, 2, 8]) {
  for (const activation of ACTIVATIONS) {
    const shapes = `x=[2,3,4,5,16] groups=${groups} ${activation}`;

    Deno.test(`groupNorm() equals moments composite and a plain loop, ${shapes}`, () => {
      const { x, gamma, beta, rawDy } = gnInputs([2, 3, 4, 5, 16], 300 + groups);
      const y = groupNorm(x, gamma, beta, { groups, activation });
      const ref = groupNormComposite(x, gamma, beta, groups, activation);
      assertAllClose(y, ref, 1e-5, "vs composite");
      assertAllClose(
        y.dataSync(),
        groupNormLoop(x, gamma, beta, groups, activation),
        1e-5,
        "vs loop",
      );
      tf.dispose([x, gamma, beta, rawDy, y, ref]);
    });

    Deno.test(`groupNorm() dx, dgamma, dbeta equal autodiff of the composite, ${shapes}`, () => {
      const { x, gamma, beta, rawDy, dy } = gnInputs([2, 3, 4, 5, 16], 400 + groups);
      const cot = dy(groups);
      const fused = valueAndGrads(gnFused(groups, activation), [x, gamma, beta], cot);
      const ref = valueAndGrads(gnComposite(groups, activation), [x, gamma, beta], cot);
      assertAllClose(fused.grads[0], ref.grads[0], 1e-4, "dx");
      assertAllClose(fused.grads[1], ref.grads[1], 1e-4, "dgamma");
      assertAllClose(fused.grads[2], ref.grads[2], 1e-4, "dbeta");
      tf.dispose([
        x,
        gamma,
        beta,
        rawDy,
        cot,
        fused.value,
        ref.value,
        ...fused.grads,
        ...ref.grads,
      ]);
    });
  }
}

for (const activation of ACTIVATIONS) {
  Deno.test(`groupNorm() gradients match directional central differences, x=[1,2,3,2,8] groups=2 ${activation}`, () => {
    // A wide kink margin: a step of 1e-3 moves no pre-activation by more than it.
    const { x, gamma, beta, rawDy, dy, rng } = gnInputs([1, 2, 3, 2, 8], 500, 0.05);
    const cot = dy(2);
    const f = gnFused(2, activation);
    const { value, grads } = valueAndGrads(f, [x, gamma, beta], cot);
    for (const [which, name] of [[0, "dx·v"], [1, "dgamma·v"], [2, "dbeta·v"]] as const) {
      const direction = randomNormal([x, gamma, beta][which].shape, rng);
      const d = directionalDerivative(
        f,
        [x, gamma, beta],
        which,
        cot,
        grads[which],
        direction,
        1e-3,
      );
      assertAllClose([d.numeric], [d.analytic], 1e-2, name);
      direction.dispose();
    }
    tf.dispose([x, gamma, beta, rawDy, cot, value, ...grads]);
  });
}

Deno.test("groupNorm() leaks no tensor in forward and gradient, x=[2,3,4,5,16] groups=8 each activation", () => {
  const { x, gamma, beta, rawDy } = gnInputs([2, 3, 4, 5, 16], 600);
  for (const activation of ACTIVATIONS) {
    const before = tf.memory().numTensors;
    const y = groupNorm(x, gamma, beta, { groups: 8, activation });
    y.dispose();
    const { value, grads } = valueAndGrads(gnFused(8, activation), [x, gamma, beta], rawDy);
    tf.dispose([value, ...grads]);
    assertEquals(tf.memory().numTensors, before, activation);
  }
  tf.dispose([x, gamma, beta, rawDy]);
});

Deno.test("groupNorm() keeps only x, gamma, beta and two numbers per sample and group, x=[2,3,4,5,16] groups=8 relu6", () => {
  const { x, gamma, beta, rawDy } = gnInputs([2, 3, 4, 5, 16], 601);
  const before = tf.memory().numBytes;
  let kept = -1;
  const { value, grads } = valueAndGrads(
    (a, g, b) => {
      const y = gnFused(8, "relu6")(a, g, b);
      kept = tf.memory().numBytes - before - y.size * 4;
      return y;
    },
    [x, gamma, beta],
    rawDy,
  );
  // Saved inputs are clones (the same buffers, counted again); mean and rstd are [n, G] each.
  assertEquals(kept, (x.size + gamma.size + beta.size + 2 * 2 * 8) * 4);
  tf.dispose([x, gamma, beta, rawDy, value, ...grads]);
});

Deno.test("groupNorm() value-and-grad peaks below the autodiff composite, x=[1,8,8,8,32] groups=8 relu6", async () => {
  const { x, gamma, beta, rawDy } = gnInputs([1, 8, 8, 8, 32], 700);
  const peak = (f: TensorFn) =>
    peakBytesAbove(() => {
      const { value, grads } = valueAndGrads(f, [x, gamma, beta], rawDy);
      tf.dispose([value, ...grads]);
    });
  const fused = await peak(gnFused(8, "relu6"));
  const composite = await peak(gnComposite(8, "relu6"));
  console.log(
    `  peakBytes above inputs, x=[1,8,8,8,32] groups=8 relu6: fused ${fused}, composite ${composite}`,
  );
  assert(fused < composite, `fused ${fused} >= composite ${composite}`);
  tf.dispose([x, gamma, beta, rawDy]);
});

Deno.test("groupNorm() rejects wrong shapes, groups, epsilon and activation", () => {
  const x = tf.zeros([1, 2, 2, 2, 12]) as tf.Tensor5D;
  const g = tf.ones([12]) as tf.Tensor1D;
  const b = tf.zeros([12]) as tf.Tensor1D;
  assertThrows(
    () => groupNorm(x, g, b, { groups: 8 }),
    RangeError,
    "channels (12) must be divisible by groups (8)",
  );
  const g4 = tf.ones([4]) as tf.Tensor1D;
  assertThrows(
    () => groupNorm(x, g4, b, { groups: 4 }),
    TypeError,
    "groupNorm: gamma must be [c] with c = 12, found [4]",
  );
  const x4 = tf.zeros([2, 2, 2, 12]) as unknown as tf.Tensor5D;
  assertThrows(() => groupNorm(x4, g, b, { groups: 4 }), TypeError, "x must be rank 5");
  assertThrows(() => groupNorm(x, g, b, { groups: 4, epsilon: 0 }), RangeError, "epsilon");
  assertThrows(
    () => groupNorm(x, g, b, { groups: 4, activation: "gelu" as GroupNormActivation }),
    RangeError,
    'found "gelu"',
  );
  tf.dispose([x, g, b, g4, x4]);
});

Deno.test("groupCount() is min(8, channels) and checks divisibility", () => {
  assertEquals(groupCount(4), 4);
  assertEquals(groupCount(8), 8);
  assertEquals(groupCount(16), 8);
  assertEquals(groupCount(256), 8);
  assertEquals(groupCount(6, 2), 2);
  assertThrows(() => groupCount(12), RangeError, "channels (12) must be divisible");
  assertThrows(() => groupCount(0), RangeError, "positive integer");
  assertThrows(() => groupCount(16, 0), RangeError, "maxGroups");
});
