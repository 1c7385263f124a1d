/**
 * Tests of the native cpu path (model/native): each kernel against the plain tfjs path it
 * replaces (values and gradients, odd shapes, several channel and group counts, batches, edge
 * voxels), tfjs's own BatchMatMul against sgemm with transposes and batches, a whole reference
 * network's reversible gradients, leaks, and the fallback when the native path is off.
 *
 * The comparisons run the same function twice in one process, once with the native kernels
 * registered and once without. Skipped where gcc or OpenBLAS is missing.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import {
  depthwiseConv3d,
  diceBceLoss,
  disableNativeKernels,
  disposeUNet,
  enableNativeKernels,
  groupNorm,
  type GroupNormActivation,
  hasKernel,
  nativeKernelStatus,
  REV_DEPTHWISE_CONV3D,
  REV_GROUP_NORM_ACT,
  reversibleGrads,
  selectBackend,
} from "../../model/mod.ts";
import { assertAllClose, randomNormal, seededRandom } from "../_grad_check.ts";
import { compareGrads, randomBatch, randomNet } from "../_model_fixtures.ts";

await tf.setBackend("cpu");

const tfjsMatMul = tf.getKernel("BatchMatMul", "cpu")!.kernelFunc;
const probe = enableNativeKernels();
disableNativeKernels();
const LAYERS = probe.layers;
const SGEMM = probe.matMul;
const whyLayers = LAYERS ? "" : ` (skipped: ${probe.notes.join("; ")})`;
const whySgemm = SGEMM ? "" : ` (skipped: ${probe.notes.join("; ")})`;

type Shape5 = [number, number, number, number, number];

/**
 * Runs `f` on the plain tfjs path and then with the native kernels; returns both results' values
 * (as plain arrays, the tensors disposed) and checks that neither run leaked a tensor.
 */
function plainAndNative(f: () => tf.Tensor[]): { plain: tf.Tensor[]; native: tf.Tensor[] } {
  const run = () => {
    const before = tf.memory().numTensors;
    const out = f();
    const copies = out.map((t) => tf.tensor(t.dataSync(), t.shape, t.dtype));
    tf.dispose(out);
    assertEquals(tf.memory().numTensors, before + copies.length, "tensors leaked");
    return copies;
  };
  disableNativeKernels();
  const plain = run();
  enableNativeKernels();
  try {
    return { plain, native: run() };
  } finally {
    disableNativeKernels();
  }
}

function assertSame(
  results: { plain: tf.Tensor[]; native: tf.Tensor[] },
  names: string[],
  rtol: number,
): void {
  names.forEach((name, i) => assertAllClose(results.native[i], results.plain[i], rtol, name));
  tf.dispose([...results.plain, ...results.native]);
}

// ---- depthwise conv3d ---------------------------------------------------------------------------

const DW_CASES: { x: Shape5; k: [number, number, number] }[] = [
  { x: [1, 5, 6, 7, 4], k: [3, 3, 3] },
  { x: [2, 4, 5, 3, 3], k: [3, 3, 3] },
  { x: [1, 3, 4, 4, 1], k: [1, 1, 1] },
  { x: [2, 6, 5, 4, 2], k: [5, 5, 5] },
  { x: [1, 2, 3, 2, 2], k: [5, 3, 3] }, // kernel deeper than the volume: every voxel an edge
  { x: [2, 3, 4, 5, 2], k: [1, 3, 5] },
  { x: [1, 7, 9, 11, 32], k: [3, 3, 3] }, // the network's channel counts
  { x: [3, 4, 3, 5, 24], k: [3, 3, 3] },
];

for (const [i, { x: xShape, k }] of DW_CASES.entries()) {
  Deno.test({
    name:
      `native depthwiseConv3d equals the tfjs path: value, dx, dfilter, x=[${xShape}] k=[${k}]` +
      whyLayers,
    ignore: !LAYERS,
    fn: () => {
      const rng = seededRandom(300 + i);
      const x = randomNormal<tf.Rank.R5>(xShape, rng);
      const filter = randomNormal<tf.Rank.R5>([...k, xShape[4], 1], rng);
      const dy = randomNormal<tf.Rank.R5>(xShape, rng);
      const results = plainAndNative(() => {
        const { value, grads } = tf.valueAndGrads((a: tf.Tensor, f: tf.Tensor) =>
          depthwiseConv3d(a as tf.Tensor5D, f as tf.Tensor5D)
        )([x, filter], dy);
        return [value, ...grads];
      });
      assertSame(results, ["value", "dx", "dfilter"], 1e-5);
      tf.dispose([x, filter, dy]);
    },
  });
}

// ---- GroupNorm ----------------------------------------------------------------------------------

const GN_CASES: { x: Shape5; groups: number }[] = [
  { x: [1, 5, 6, 7, 16], groups: 8 },
  { x: [2, 3, 4, 5, 12], groups: 3 },
  { x: [3, 2, 2, 3, 8], groups: 1 },
  { x: [1, 4, 3, 5, 6], groups: 6 },
  { x: [2, 6, 5, 4, 64], groups: 8 },
];
const ACTIVATIONS: GroupNormActivation[] = ["none", "relu", "relu6"];

for (const [i, { x: xShape, groups }] of GN_CASES.entries()) {
  for (const activation of ACTIVATIONS) {
    Deno.test({
      name: `native groupNorm equals the tfjs path: value, dx, dgamma, dbeta, x=[${xShape}] ` +
        `groups=${groups} ${activation}${whyLayers}`,
      ignore: !LAYERS,
      fn: () => {
        const rng = seededRandom(400 + i);
        const c = xShape[4];
        // Offset and spread so that relu6 clips on both sides and each group's mean is far from 0.
        const x = randomNormal<tf.Rank.R5>(xShape, rng, { mean: 2, std: 3 });
        const gamma = randomNormal<tf.Rank.R1>([c], rng, { mean: 1, std: 2 });
        const beta = randomNormal<tf.Rank.R1>([c], rng, { mean: 1, std: 2 });
        const dy = randomNormal<tf.Rank.R5>(xShape, rng);
        const results = plainAndNative(() => {
          const { value, grads } = tf.valueAndGrads(
            (a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
              groupNorm(a as tf.Tensor5D, g as tf.Tensor1D, b as tf.Tensor1D, {
                groups,
                activation,
              }),
          )([x, gamma, beta], dy);
          return [value, ...grads];
        });
        assertSame(results, ["value", "dx", "dgamma", "dbeta"], 2e-5);
        tf.dispose([x, gamma, beta, dy]);
      },
    });
  }
}

// ---- dense conv3d -------------------------------------------------------------------------------

const CONV_CASES: {
  x: Shape5;
  k: number[];
  co: number;
  strides: number | [number, number, number];
  pad: "same" | "valid";
}[] = [
  { x: [1, 5, 6, 7, 4], k: [3, 3, 3], co: 16, strides: 1, pad: "same" }, // the stem
  { x: [2, 6, 4, 8, 16], k: [2, 2, 2], co: 32, strides: 2, pad: "valid" }, // a downsampling
  { x: [1, 5, 7, 6, 3], k: [3, 1, 5], co: 5, strides: [2, 1, 3], pad: "same" },
  { x: [2, 3, 5, 4, 2], k: [3, 3, 3], co: 3, strides: [1, 2, 2], pad: "valid" },
];

for (const [i, { x: xShape, k, co, strides, pad }] of CONV_CASES.entries()) {
  Deno.test({
    name: `native Conv3D equals tfjs's kernels: value, dx, dfilter, x=[${xShape}] k=[${k}] ` +
      `co=${co} strides=${strides} ${pad}${whyLayers}`,
    ignore: !LAYERS,
    fn: () => {
      const rng = seededRandom(350 + i);
      const x = randomNormal<tf.Rank.R5>(xShape, rng);
      const filter = randomNormal<tf.Rank.R5>([...k, xShape[4], co], rng);
      const y = tf.conv3d(x, filter, strides, pad);
      const dy = randomNormal<tf.Rank.R5>(y.shape, rng);
      const results = plainAndNative(() => {
        const { value, grads } = tf.valueAndGrads((a: tf.Tensor, f: tf.Tensor) =>
          tf.conv3d(a as tf.Tensor5D, f as tf.Tensor5D, strides, pad)
        )([x, filter], dy);
        return [value, ...grads];
      });
      assertSame(results, ["value", "dx", "dfilter"], 1e-5);
      tf.dispose([x, filter, y, dy]);
    },
  });
}

// ---- BatchMatMul, Slice, SplitV -----------------------------------------------------------------

const MM_CASES: { a: number[]; b: number[]; ta: boolean; tb: boolean }[] = [
  { a: [7, 5], b: [5, 3], ta: false, tb: false },
  { a: [5, 7], b: [5, 3], ta: true, tb: false },
  { a: [7, 5], b: [3, 5], ta: false, tb: true },
  { a: [5, 7], b: [3, 5], ta: true, tb: true },
  { a: [2, 3, 4, 5], b: [2, 3, 5, 6], ta: false, tb: false }, // rank 4, batch 6
  { a: [3, 4, 5], b: [5, 2], ta: false, tb: false }, // b broadcast over a's batch: one sgemm
  { a: [3, 5, 4], b: [1, 2, 5], ta: true, tb: true }, // b broadcast, both transposed
  { a: [4, 5], b: [3, 5, 2], ta: false, tb: false }, // a broadcast over b's batch
  { a: [1000, 16], b: [16, 64], ta: false, tb: false }, // a pointwise convolution
  { a: [0, 4], b: [4, 3], ta: false, tb: false }, // empty
];

Deno.test({
  name: `native BatchMatMul (sgemm) equals tfjs's kernel with transposes and batches${whySgemm}`,
  ignore: !SGEMM,
  fn: () => {
    const rng = seededRandom(500);
    for (const { a: aShape, b: bShape, ta, tb } of MM_CASES) {
      const a = randomNormal(aShape, rng);
      const b = randomNormal(bShape, rng);
      const results = plainAndNative(() => [tf.matMul(a, b, ta, tb)]);
      assertSame(results, [`matMul [${aShape}]${ta ? "ᵀ" : ""}·[${bShape}]${tb ? "ᵀ" : ""}`], 1e-5);
      tf.dispose([a, b]);
    }
  },
});

Deno.test({
  name: `native BatchMatMul: gradients equal tfjs's, int32 falls back to tfjs's kernel${whySgemm}`,
  ignore: !SGEMM,
  fn: () => {
    const rng = seededRandom(501);
    // Batched b: tfjs 4.22's own MatMul gradient mis-shapes db when b is broadcast.
    const a = randomNormal([2, 6, 5], rng);
    const b = randomNormal([2, 5, 4], rng);
    const dy = randomNormal([2, 6, 4], rng);
    const results = plainAndNative(() => {
      const { value, grads } = tf.valueAndGrads((p: tf.Tensor, q: tf.Tensor) => tf.matMul(p, q))(
        [a, b],
        dy,
      );
      return [value, ...grads];
    });
    assertSame(results, ["value", "da", "db"], 1e-5);
    const ai = tf.tensor2d([[1, 2], [3, 4]], undefined, "int32");
    const ints = plainAndNative(() => [tf.matMul(ai, ai, false, true)]);
    assertEquals(ints.native[0].dtype, "int32");
    assertEquals([...ints.native[0].dataSync()], [5, 11, 11, 25]);
    tf.dispose([a, b, dy, ai, ...ints.plain, ...ints.native]);
  },
});

Deno.test("native Slice and SplitV equal tfjs's kernels on strided, contiguous and int boxes", () => {
  const rng = seededRandom(502);
  const x = randomNormal([2, 3, 4, 5, 6], rng);
  const xi = tf.cast(tf.mul(x, 10), "int32");
  const results = plainAndNative(() => [
    ...tf.split(x, 2, 4), // the blocks' channel split
    ...tf.split(x, [1, 3, 1], 3),
    ...tf.split(x, 2, 0), // contiguous: views
    tf.slice(x, [1, 0, 1, 2, 1], [1, 3, 2, 2, 4]),
    tf.slice(x, [0, 1, 0, 0, 0], [2, 2, 4, 5, 6]),
    tf.slice(x, [1, 2, 3, 4, 5], [1, 1, 1, 1, 1]),
    tf.slice(xi, [0, 0, 0, 0, 3], [2, 3, 4, 5, 3]),
  ]);
  assertEquals(results.native.length, 11);
  assertEquals(results.native[10].dtype, "int32");
  results.native.forEach((t, i) =>
    assertEquals([...t.dataSync()], [...results.plain[i].dataSync()], `piece ${i}`)
  );
  tf.dispose([x, xi, ...results.plain, ...results.native]);
});

Deno.test("native element-wise kernels equal tfjs's: broadcasts, sums, transposes, concats", () => {
  const rng = seededRandom(503);
  const x = randomNormal([2, 3, 4, 5, 6], rng);
  const y = randomNormal([2, 3, 4, 5, 6], rng);
  const bias = randomNormal([6], rng);
  const block = randomNormal([1, 1, 5, 6], rng);
  const row = randomNormal([1, 1, 1, 1, 6], rng);
  const middle = randomNormal([1, 3, 1, 1, 1], rng); // not a trailing block: tfjs's kernel
  const positive = tf.tidy(() => tf.add(tf.abs(y), 0.5));
  const s = tf.scalar(1.7);
  const xi = tf.cast(tf.mul(x, 10), "int32");
  const xFlat = tf.reshape(x, [720]);
  const yFlat = tf.reshape(y, [720]);
  const results = plainAndNative(() => [
    tf.add(x, y),
    tf.sub(x, y),
    tf.mul(x, y),
    tf.div(x, positive),
    tf.add(x, bias),
    tf.sub(bias, x),
    tf.mul(row, x),
    tf.div(block, positive),
    tf.sub(x, s),
    tf.div(s, positive),
    tf.mul(s, x),
    tf.add(x, middle),
    tf.add(xi, xi), // int32: tfjs's kernel
    tf.sum(x, [0, 1, 2, 3]),
    tf.sum(x, [1, 2, 3], true),
    tf.sum(x),
    tf.sum(x, -1),
    tf.sum(x, [0, 2]), // two runs: tfjs's kernel
    tf.transpose(x, [0, 2, 1, 3, 4]),
    tf.transpose(x, [4, 3, 2, 1, 0]),
    tf.transpose(x, [1, 0, 2, 3, 4]),
    tf.concat([x, y], 4),
    tf.concat([x, y, x], 1),
    tf.concat([xFlat, yFlat], 0),
    tf.concat([xi, xi], 2),
  ]);
  results.native.forEach((t, i) => {
    const p = results.plain[i];
    assertEquals(t.shape, p.shape, `result ${i}: shape`);
    assertEquals(t.dtype, p.dtype, `result ${i}: dtype`);
    // Sums add in float64 here and in float32 in tfjs; the rest is exact.
    if (i >= 13 && i <= 17) assertAllClose(t, p, 1e-5, `result ${i}`);
    else assertEquals([...t.dataSync()], [...p.dataSync()], `result ${i}`);
  });
  tf.dispose([x, y, bias, block, row, middle, positive, s, xi, xFlat, yFlat]);
  tf.dispose([...results.plain, ...results.native]);
});

// ---- the whole network --------------------------------------------------------------------------

Deno.test({
  name:
    `native path: reference network's reversible gradients equal the tfjs path's, 8³${whyLayers}`,
  ignore: !LAYERS || !SGEMM,
  fn: () => {
    const net = randomNet({}, 5);
    const { x, target } = randomBatch(net, 8);
    const loss = (logits: tf.Tensor5D) => diceBceLoss(logits, target);
    disableNativeKernels();
    const plain = reversibleGrads(net, x, loss, true);
    const before = tf.memory().numTensors;
    enableNativeKernels();
    const native = reversibleGrads(net, x, loss, true);
    disableNativeKernels();
    assertEquals(tf.memory().numTensors - before, native.grads.size + 2, "tensors leaked");
    const all = (r: typeof plain) => new Map([...r.grads, ["input", r.inputGrad!]]);
    const cmp = compareGrads(all(native), all(plain));
    assert(cmp.globalRelErr <= 1e-4, `global relative L2 error ${cmp.globalRelErr}`);
    assert(
      cmp.worstTensorRelErr <= 5e-3,
      `worst tensor ${cmp.worstTensor}: relative error ${cmp.worstTensorRelErr}`,
    );
    const lossDiff = Math.abs(native.loss.dataSync()[0] - plain.loss.dataSync()[0]);
    assert(lossDiff <= 1e-5, `loss differs by ${lossDiff}`);
    for (const r of [plain, native]) tf.dispose([r.loss, r.inputGrad!, ...r.grads.values()]);
    tf.dispose([x, target]);
    disposeUNet(net);
  },
});

// ---- switching on and off -----------------------------------------------------------------------

Deno.test("disableNativeKernels() restores tfjs's kernels and the layers' composite path", () => {
  enableNativeKernels();
  disableNativeKernels();
  disableNativeKernels(); // idempotent
  assertEquals(tf.getKernel("BatchMatMul", "cpu")!.kernelFunc, tfjsMatMul);
  assert(!hasKernel(REV_DEPTHWISE_CONV3D) && !hasKernel(REV_GROUP_NORM_ACT));
  assertEquals(nativeKernelStatus(), {
    matMul: false,
    layers: false,
    slices: false,
    elementwise: false,
    threads: 0,
    notes: [],
  });
  // The composite path still works: a centre-tap filter is the identity.
  const x = tf.randomNormal([1, 3, 4, 5, 2], 0, 1, "float32", 7) as tf.Tensor5D;
  const filter = tf.tidy(() =>
    tf.reshape(
      tf.cast(tf.oneHot(tf.fill([2], 13, "int32") as tf.Tensor1D, 27).transpose(), "float32"),
      [3, 3, 3, 2, 1],
    )
  ) as tf.Tensor5D;
  const y = depthwiseConv3d(x, filter);
  assertAllClose(y, x, 1e-7, "identity convolution");
  tf.dispose([x, filter, y]);
});

Deno.test({
  name: `enableNativeKernels() is idempotent and registers nothing for webgpu${whyLayers}`,
  ignore: !LAYERS,
  fn: () => {
    const first = enableNativeKernels({ threads: 2 });
    const again = enableNativeKernels({ threads: 2 });
    assertEquals(again, first);
    assert(hasKernel(REV_DEPTHWISE_CONV3D));
    assertEquals(tf.getKernel(REV_DEPTHWISE_CONV3D, "webgpu"), undefined);
    assertEquals(tf.getKernel(REV_GROUP_NORM_ACT, "webgpu"), undefined);
    disableNativeKernels();
  },
});

Deno.test("selectBackend('cpu') turns the native path on, and off with REVUNET_NATIVE=0", async () => {
  const saved = Deno.env.get("REVUNET_NATIVE");
  try {
    Deno.env.set("REVUNET_NATIVE", "0");
    const lines: string[] = [];
    const off = await selectBackend("cpu", (m) => lines.push(m));
    assertEquals(nativeKernelStatus().layers, false);
    assertEquals(tf.getKernel("BatchMatMul", "cpu")!.kernelFunc, tfjsMatMul);
    assertStringIncludes(off.device, "tfjs JavaScript kernels, 1 thread");
    assert(lines.some((l) => l.includes("REVUNET_NATIVE=0")), lines.join("\n"));
    Deno.env.delete("REVUNET_NATIVE");
    const on = await selectBackend("cpu");
    assertEquals(nativeKernelStatus().layers, LAYERS);
    assertEquals(nativeKernelStatus().matMul, SGEMM);
    if (LAYERS) assertStringIncludes(on.device, "native depthwise conv3d and GroupNorm");
  } finally {
    if (saved === undefined) Deno.env.delete("REVUNET_NATIVE");
    else Deno.env.set("REVUNET_NATIVE", saved);
    disableNativeKernels();
  }
});
