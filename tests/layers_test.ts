/**
 * Tests of the two layers TensorFlow.js lacks: the depthwise 3D convolution and the fused
 * GroupNorm(+activation). Each is compared with an independent composite of tfjs ops (values and
 * automatic-differentiation gradients), with a plain loop (values), and with central finite
 * differences (gradients); and checked for leaks, for what it keeps between forward and backward,
 * and for peak memory against its composite.
 * @module
 */
import * as tf from "../model/tf.ts";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { depthwiseConv3d } from "../model/depthwise_conv3d.ts";
import { conv3dFilterGradByTaps } from "../model/conv_grad.ts";
import { groupCount, groupNorm, type GroupNormActivation } from "../model/group_norm.ts";
import {
  assertAllClose,
  directionalDerivative,
  numericGradient,
  peakBytesAbove,
  randomNormal,
  seededRandom,
  type TensorFn,
  valueAndGrads,
} from "./_grad_check.ts";

await tf.setBackend("cpu");

type Shape5 = [number, number, number, number, number];

// ---------------------------------------------------------------------------------------------
// References for depthwiseConv3d
// ---------------------------------------------------------------------------------------------

/** Channel by channel with tf.conv3d: slice channel i, convolve with filter[..., i:i+1, :]. */
function depthwiseByConv3d(x: tf.Tensor5D, filter: tf.Tensor5D): tf.Tensor5D {
  return tf.tidy(() => {
    const [kd, kh, kw, c] = filter.shape;
    const outs: tf.Tensor5D[] = [];
    for (let i = 0; i < c; i++) {
      const xi = tf.slice(x, [0, 0, 0, 0, i], [-1, -1, -1, -1, 1]); // [n, d, h, w, 1]
      const fi = tf.slice(filter, [0, 0, 0, i, 0], [kd, kh, kw, 1, 1]); // [kd, kh, kw, 1, 1]
      outs.push(tf.conv3d(xi, fi, 1, "same"));
    }
    return tf.concat(outs, 4);
  });
}

/**
 * The straightforward composite from depthwiseConv2d, left to automatic differentiation: pad depth,
 * one depthwiseConv2d per depth offset on the shifted planes, sum (the memory baseline).
 */
function depthwiseByPlanes(x: tf.Tensor5D, filter: tf.Tensor5D): tf.Tensor5D {
  return tf.tidy(() => {
    const [n, d, h, w, c] = x.shape;
    const [kd, kh, kw] = filter.shape;
    const pd = (kd - 1) / 2;
    const padded = tf.pad(x, [[0, 0], [pd, pd], [0, 0], [0, 0], [0, 0]]); // [n, d+2pd, h, w, c]
    let sum: tf.Tensor4D | null = null;
    for (let a = 0; a < kd; a++) {
      const planes = tf.reshape(tf.slice(padded, [0, a, 0, 0, 0], [n, d, h, w, c]), [
        n * d,
        h,
        w,
        c,
      ]) as tf.Tensor4D; // [n·d, h, w, c]
      const fa = tf.reshape(tf.slice(filter, [a, 0, 0, 0, 0], [1, kh, kw, c, 1]), [kh, kw, c, 1]);
      const term = tf.depthwiseConv2d(planes, fa as tf.Tensor4D, 1, "same");
      sum = sum === null ? term : tf.add(sum, term);
    }
    return tf.reshape(sum!, x.shape) as tf.Tensor5D;
  });
}

/** Seven nested loops in float64. */
function depthwiseLoop(x: tf.Tensor5D, filter: tf.Tensor5D): Float64Array {
  const [n, d, h, w, c] = x.shape;
  const [kd, kh, kw] = filter.shape;
  const xv = x.dataSync();
  const fv = filter.dataSync();
  const out = new Float64Array(xv.length);
  const at = (i: number, z: number, y: number, u: number, ch: number) =>
    (((i * d + z) * h + y) * w + u) * c + ch;
  for (let i = 0; i < n; i++) {
    for (let z = 0; z < d; z++) {
      for (let y = 0; y < h; y++) {
        for (let u = 0; u < w; u++) {
          for (let ch = 0; ch < c; ch++) {
            let s = 0;
            for (let a = 0; a < kd; a++) {
              for (let b = 0; b < kh; b++) {
                for (let e = 0; e < kw; e++) {
                  const zz = z + a - (kd - 1) / 2;
                  const yy = y + b - (kh - 1) / 2;
                  const uu = u + e - (kw - 1) / 2;
                  if (zz < 0 || zz >= d || yy < 0 || yy >= h || uu < 0 || uu >= w) continue;
                  s += xv[at(i, zz, yy, uu, ch)] * fv[((a * kh + b) * kw + e) * c + ch];
                }
              }
            }
            out[at(i, z, y, u, ch)] = s;
          }
        }
      }
    }
  }
  return out;
}

const dwFused: TensorFn = (x, f) => depthwiseConv3d(x as tf.Tensor5D, f as tf.Tensor5D);
const dwByConv3d: TensorFn = (x, f) => depthwiseByConv3d(x as tf.Tensor5D, f as tf.Tensor5D);
const dwByPlanes: TensorFn = (x, f) => depthwiseByPlanes(x as tf.Tensor5D, f as tf.Tensor5D);

function dwInputs(xShape: Shape5, k: [number, number, number], seed: number) {
  const rng = seededRandom(seed);
  const x = randomNormal<tf.Rank.R5>(xShape, rng);
  const filter = randomNormal<tf.Rank.R5>([...k, xShape[4], 1], rng);
  const dy = randomNormal<tf.Rank.R5>(xShape, rng);
  return { x, filter, dy, rng };
}

const kName = (k: number[]) => (k.every((v) => v === k[0]) ? `k=${k[0]}` : `k=[${k}]`);

// ---------------------------------------------------------------------------------------------
// depthwiseConv3d
// ---------------------------------------------------------------------------------------------

const DW_CASES: { x: Shape5; k: [number, number, number] }[] = [
  { x: [1, 5, 6, 7, 4], k: [3, 3, 3] },
  { x: [2, 4, 5, 3, 3], k: [3, 3, 3] },
  { x: [1, 3, 4, 4, 1], k: [1, 1, 1] },
  { x: [2, 6, 5, 4, 2], k: [5, 5, 5] },
  { x: [1, 2, 3, 2, 2], k: [5, 3, 3] }, // kernel deeper than the volume
  { x: [2, 3, 4, 5, 2], k: [1, 3, 5] },
];

for (const [i, { x: xShape, k }] of DW_CASES.entries()) {
  const shapes = `x=[${xShape}] ${kName(k)}`;

  Deno.test(`depthwiseConv3d() equals per-channel tf.conv3d, ${shapes}`, () => {
    const { x, filter, dy } = dwInputs(xShape, k, 100 + i);
    const y = depthwiseConv3d(x, filter);
    const ref = depthwiseByConv3d(x, filter);
    assertAllClose(y, ref, 1e-6, "output");
    tf.dispose([x, filter, dy, y, ref]);
  });

  Deno.test(`depthwiseConv3d() dx and dfilter equal autodiff of per-channel conv3d, ${shapes}`, () => {
    const { x, filter, dy } = dwInputs(xShape, k, 200 + i);
    const fused = valueAndGrads(dwFused, [x, filter], dy);
    const ref = valueAndGrads(dwByConv3d, [x, filter], dy);
    assertAllClose(fused.grads[0], ref.grads[0], 1e-5, "dx");
    assertAllClose(fused.grads[1], ref.grads[1], 1e-5, "dfilter");
    tf.dispose([x, filter, dy, fused.value, ref.value, ...fused.grads, ...ref.grads]);
  });
}

Deno.test("depthwiseConv3d() equals a plain loop, x=[2,3,4,5,3] k=3 and x=[1,4,3,5,2] k=[3,1,5]", () => {
  for (const [xShape, k] of [[[2, 3, 4, 5, 3], [3, 3, 3]], [[1, 4, 3, 5, 2], [3, 1, 5]]] as const) {
    const { x, filter, dy } = dwInputs([...xShape], [...k], 7);
    const y = depthwiseConv3d(x, filter);
    assertAllClose(y.dataSync(), depthwiseLoop(x, filter), 1e-6, `x=[${xShape}]`);
    tf.dispose([x, filter, dy, y]);
  }
});

Deno.test("depthwiseConv3d() equals the depthwiseConv2d-per-plane composite, x=[2,5,4,6,3] k=3", () => {
  const { x, filter, dy } = dwInputs([2, 5, 4, 6, 3], [3, 3, 3], 8);
  const fused = valueAndGrads(dwFused, [x, filter], dy);
  const ref = valueAndGrads(dwByPlanes, [x, filter], dy);
  assertAllClose(fused.value, ref.value, 1e-6, "output");
  assertAllClose(fused.grads[0], ref.grads[0], 1e-5, "dx");
  assertAllClose(fused.grads[1], ref.grads[1], 1e-5, "dfilter");
  tf.dispose([x, filter, dy, fused.value, ref.value, ...fused.grads, ...ref.grads]);
});

Deno.test("depthwiseConv3d() gradients match central differences element by element, x=[1,3,3,3,2] k=3", () => {
  const { x, filter, dy } = dwInputs([1, 3, 3, 3, 2], [3, 3, 3], 9);
  const { value, grads } = valueAndGrads(dwFused, [x, filter], dy);
  // Linear in each argument: the differences are exact but for float32 rounding of the output.
  assertAllClose(
    grads[0].dataSync(),
    numericGradient(dwFused, [x, filter], 0, dy, 1e-2),
    1e-3,
    "dx",
  );
  assertAllClose(
    grads[1].dataSync(),
    numericGradient(dwFused, [x, filter], 1, dy, 1e-2),
    1e-3,
    "dfilter",
  );
  tf.dispose([x, filter, dy, value, ...grads]);
});

Deno.test("depthwiseConv3d() gradients match directional central differences, x=[2,4,5,3,3] k=3", () => {
  const { x, filter, dy, rng } = dwInputs([2, 4, 5, 3, 3], [3, 3, 3], 10);
  const { value, grads } = valueAndGrads(dwFused, [x, filter], dy);
  for (const which of [0, 1]) {
    const direction = randomNormal([x, filter][which].shape, rng);
    const { numeric, analytic } = directionalDerivative(
      dwFused,
      [x, filter],
      which,
      dy,
      grads[which],
      direction,
      1e-2,
    );
    assertAllClose([numeric], [analytic], 1e-3, which === 0 ? "dx·v" : "dfilter·v");
    direction.dispose();
  }
  tf.dispose([x, filter, dy, value, ...grads]);
});

Deno.test("depthwiseConv3d() leaks no tensor in forward and gradient, x=[2,4,5,3,3] k=3", () => {
  const { x, filter, dy } = dwInputs([2, 4, 5, 3, 3], [3, 3, 3], 11);
  const before = tf.memory().numTensors;
  const y = depthwiseConv3d(x, filter);
  y.dispose();
  const { value, grads } = valueAndGrads(dwFused, [x, filter], dy);
  tf.dispose([value, ...grads]);
  assertEquals(tf.memory().numTensors, before);
  tf.dispose([x, filter, dy]);
});

Deno.test("depthwiseConv3d() keeps only x and filter between forward and backward, x=[2,4,5,3,3] k=3", () => {
  const { x, filter, dy } = dwInputs([2, 4, 5, 3, 3], [3, 3, 3], 12);
  const before = tf.memory().numBytes;
  let kept = -1;
  const { value, grads } = valueAndGrads(
    (a, b) => {
      const y = dwFused(a, b);
      kept = tf.memory().numBytes - before - y.size * 4;
      return y;
    },
    [x, filter],
    dy,
  );
  // The tape's saved tensors are clones of the inputs (the same buffers, counted again).
  assertEquals(kept, (x.size + filter.size) * 4);
  tf.dispose([x, filter, dy, value, ...grads]);
});

Deno.test("depthwiseConv3d() value-and-grad peaks below the autodiff composites, x=[1,8,8,8,16] k=3", async () => {
  const { x, filter, dy } = dwInputs([1, 8, 8, 8, 16], [3, 3, 3], 13);
  const peak = (f: TensorFn) =>
    peakBytesAbove(() => {
      const { value, grads } = valueAndGrads(f, [x, filter], dy);
      tf.dispose([value, ...grads]);
    });
  const fused = await peak(dwFused);
  const byPlanes = await peak(dwByPlanes);
  const byConv3d = await peak(dwByConv3d);
  console.log(
    `  peakBytes above inputs, x=[1,8,8,8,16] k=3: fused ${fused}, depthwiseConv2d composite ${byPlanes}, per-channel conv3d composite ${byConv3d}`,
  );
  assert(fused < byPlanes, `fused ${fused} >= depthwiseConv2d composite ${byPlanes}`);
  assert(fused < byConv3d, `fused ${fused} >= per-channel conv3d composite ${byConv3d}`);
  tf.dispose([x, filter, dy]);
});

Deno.test("depthwiseConv3d() rejects wrong ranks, shapes, kernel sizes and dtypes", () => {
  const x = tf.zeros([1, 4, 4, 4, 8]) as tf.Tensor5D;
  const bad = tf.zeros([3, 3, 3, 4, 1]) as tf.Tensor5D;
  assertThrows(
    () => depthwiseConv3d(x, bad),
    TypeError,
    "depthwiseConv3d: filter must be [kd,kh,kw,c,1] with c = 8, found [3,3,3,4,1]",
  );
  const multiplier = tf.zeros([3, 3, 3, 8, 2]) as tf.Tensor5D;
  assertThrows(() => depthwiseConv3d(x, multiplier), TypeError, "found [3,3,3,8,2]");
  const even = tf.zeros([3, 2, 3, 8, 1]) as tf.Tensor5D;
  assertThrows(() => depthwiseConv3d(x, even), TypeError, "odd kernel sizes");
  const x4 = tf.zeros([4, 4, 4, 8]) as unknown as tf.Tensor5D;
  const filter = tf.zeros([3, 3, 3, 8, 1]) as tf.Tensor5D;
  assertThrows(() => depthwiseConv3d(x4, filter), TypeError, "x must be rank 5");
  const xi = tf.zeros([1, 4, 4, 4, 8], "int32") as tf.Tensor5D;
  assertThrows(() => depthwiseConv3d(xi, filter), TypeError, "x must be float32, found int32");
  tf.dispose([x, bad, multiplier, even, x4, filter, xi]);
});

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

// The tap-by-tap filter gradient webgpu uses, against the cpu backend's Conv3DBackpropFilterV2 (the
// native C loop when built, else tfjs's): independent code either way.
for (
  const [xShape, filterShape, stride, pad] of [
    [[2, 6, 5, 7, 3], [3, 3, 3, 3, 5], 1, "same"], // the stem
    [[1, 8, 6, 4, 4], [2, 2, 2, 4, 6], 2, "valid"], // a down-sampling convolution
    [[1, 5, 7, 6, 2], [3, 1, 2, 2, 3], 1, "same"], // an even kernel: padding uneven
    [[1, 7, 6, 9, 2], [3, 3, 3, 2, 4], 2, "same"], // stride 2 with padding, odd sizes
  ] as [Shape5, Shape5, number, "same" | "valid"][]
) {
  Deno.test(`conv3dFilterGradByTaps equals Conv3DBackpropFilterV2, x=[${xShape}] w=[${filterShape}] stride ${stride} ${pad}`, () => {
    const x = tf.randomNormal(xShape, 0, 1, "float32", 1) as tf.Tensor5D;
    const info = tf.backend_util.computeConv3DInfo(
      x.shape,
      filterShape,
      stride,
      1,
      pad,
    );
    const dy = tf.randomNormal(
      [xShape[0], info.outDepth, info.outHeight, info.outWidth, filterShape[4]],
      0,
      1,
      "float32",
      2,
    ) as tf.Tensor5D;
    const before = tf.memory().numTensors;
    const byTaps = conv3dFilterGradByTaps(x, dy, filterShape, stride, pad);
    assertEquals(tf.memory().numTensors, before + 1, "only the result is left");
    const reference = tf.tidy(() =>
      tf.grad((w: tf.Tensor) => tf.sum(tf.mul(tf.conv3d(x, w as tf.Tensor5D, stride, pad), dy)))(
        tf.zeros(filterShape),
      )
    );
    assertEquals(byTaps.shape, filterShape);
    const a = byTaps.dataSync();
    const e = reference.dataSync();
    let worst = 0;
    let scale = 0;
    for (let i = 0; i < e.length; i++) {
      worst = Math.max(worst, Math.abs(a[i] - e[i]));
      scale = Math.max(scale, Math.abs(e[i]));
    }
    assert(scale > 0 && worst / scale < 1e-5, `relative error ${worst / scale}`);
    tf.dispose([x, dy, byTaps, reference]);
  });
}

Deno.test("conv3dFilterGradByTaps names a dy that does not fit the convolution", () => {
  const x = tf.zeros([1, 4, 4, 4, 2]) as tf.Tensor5D;
  const dy = tf.zeros([1, 4, 4, 4, 3]) as tf.Tensor5D;
  assertThrows(
    () => conv3dFilterGradByTaps(x, dy, [2, 2, 2, 2, 3], 2, "valid"),
    TypeError,
    "dy [1,4,4,4,3] must be [1,2,2,2,3]",
  );
  tf.dispose([x, dy]);
});
