/**
 * Tests of backend selection, and of the WebGPU backend against the cpu one: conv3d, the project's
 * depthwiseConv3d and groupNorm (values and gradients), and a small whole network (inference,
 * reversible and standard gradients). Without a GPU these run on a software adapter (Mesa's
 * llvmpipe, from mesa-vulkan-drivers); where there is no adapter at all they are skipped, and the
 * reason is printed and shown in the test names.
 *
 * Every parity test computes on cpu first from plain arrays, reads the results back to plain
 * arrays, switches to webgpu, computes again from the same arrays, compares, and switches back to
 * cpu whatever happens, so later test files run on cpu.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { type BackendName, checkWebGpuErrors, selectBackend } from "../../model/backend.ts";
import { setConvFilterGradMode } from "../../model/conv_grad.ts";
import { depthwiseConv3d } from "../../model/depthwise_conv3d.ts";
import { groupNorm, type GroupNormActivation } from "../../model/group_norm.ts";
import {
  hasKernel,
  REV_ADAM_UPDATE,
  REV_DEPTHWISE_CONV3D,
  REV_GROUP_NORM_ACT_GRAD,
  REV_SGD_UPDATE,
} from "../../model/native/names.ts";
import {
  depthwiseTiling,
  disableWebGpuKernels,
  filterGradTiling,
  setWgslTiles,
  webGpuKernelsEnabled,
} from "../../model/webgpu/kernels.ts";
import {
  createUNet,
  diceBceLoss,
  disposeUNet,
  type NetworkConfig,
  Optimizer,
  predictLogits,
  resolveConfig,
  reversibleGrads,
  standardGrads,
  trainStepAsync,
  unetFromWeights,
} from "../../model/mod.ts";
import { slidingWindowProbabilities } from "../../pipeline/inference/sliding_window.ts";
import { loadModel, saveModel } from "../../pipeline/training/model_store.ts";
import { unetPredictor } from "../../model/mod.ts";

await selectBackend("cpu");

/** float32 agreement between two backends, relative to the largest magnitude of the cpu values. */
const RTOL = 1e-3;

// ---- whether a WebGPU adapter exists, decided once at load ---------------------------------------

interface Adapter {
  info?: { description?: string; vendor?: string; isFallbackAdapter?: boolean };
}
const webgpu = await findAdapter();
const SKIP = webgpu.ok ? "" : ` (skipped: ${webgpu.why})`;
if (!webgpu.ok) console.warn(`backend_test: WebGPU parity tests skipped: ${webgpu.why}`);

async function findAdapter(): Promise<
  { ok: true; software: boolean; description: string } | { ok: false; why: string }
> {
  const gpu = (navigator as unknown as {
    gpu?: { requestAdapter(o?: object): Promise<Adapter | null> };
  }).gpu;
  if (!gpu) return { ok: false, why: "navigator.gpu is missing (run with --unstable-webgpu)" };
  // As selectBackend does: keeps libwayland from printing about a missing runtime directory.
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) return { ok: false, why: "no WebGPU adapter (install mesa-vulkan-drivers)" };
  const description = adapter.info?.description ?? "unnamed adapter";
  const software = adapter.info?.isFallbackAdapter === true ||
    /llvmpipe|lavapipe|swiftshader/i.test(description);
  return { ok: true, software, description };
}

// ---- selection ---------------------------------------------------------------------------------

Deno.test("selectBackend('cpu') makes cpu active, says so, and silences the Node.js banner", async () => {
  const lines: string[] = [];
  const choice = await selectBackend("cpu", (m) => lines.push(m));
  assertEquals(choice.name, "cpu");
  assertEquals(tf.getBackend(), "cpu");
  assertStringIncludes(choice.device, "cpu");
  assertStringIncludes(choice.reason, "asked for cpu");
  assert(lines.some((l) => l.includes("using cpu")), lines.join("\n"));
  // tfjs-backend-cpu prints its "running TensorFlow.js in Node.js" banner while firstUse is true.
  assertEquals((tf.findBackend("cpu") as unknown as { firstUse: boolean }).firstUse, false);
});

Deno.test("selectBackend rejects an unknown name with a RangeError listing the valid ones", async () => {
  await assertRejects(
    () => selectBackend("cuda" as BackendName),
    RangeError,
    'Unknown backend "cuda": expected one of auto, tensorflow, webgpu, wasm, cpu',
  );
  assertEquals(tf.getBackend(), "cpu");
});

Deno.test("selectBackend('auto') skips what is missing here and says why", async () => {
  const lines: string[] = [];
  try {
    const choice = await selectBackend("auto", (m) => lines.push(m));
    // tfjs-node(-gpu) is not mapped in deno.json; a hardware adapter would win, a software one not.
    const expected = webgpu.ok && !webgpu.software ? "webgpu" : "cpu";
    assertEquals(choice.name, expected, choice.reason);
    assertEquals(tf.getBackend(), expected);
    assertStringIncludes(choice.reason, "@tensorflow/tfjs-node-gpu: ");
    assertStringIncludes(choice.reason, "@tensorflow/tfjs-node: ");
    if (expected === "cpu") assertStringIncludes(choice.reason, "webgpu: ");
    if (webgpu.ok && webgpu.software) assertStringIncludes(choice.reason, "software adapter");
    assert(lines.filter((l) => l.startsWith("backend: skipping")).length >= 2, lines.join("\n"));
  } finally {
    await selectBackend("cpu");
  }
});

Deno.test("selectBackend('tensorflow') without tfjs-node names what it needs", async () => {
  try {
    const choice = await selectBackend("tensorflow");
    assertEquals(choice.name, "tensorflow"); // only where a libtensorflow binding is installed
  } catch (e) {
    const msg = (e as Error).message;
    for (
      const part of ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node", "CUDA 11.2", "cuDNN 8.1"]
    ) {
      assertStringIncludes(msg, part);
    }
  } finally {
    await selectBackend("cpu");
  }
});

Deno.test("selectBackend('wasm') without the package names the package to add", async () => {
  try {
    const choice = await selectBackend("wasm");
    assertEquals(choice.name, "wasm"); // only where deno.json maps @tensorflow/tfjs-backend-wasm
  } catch (e) {
    assertStringIncludes((e as Error).message, '"@tensorflow/tfjs-backend-wasm"');
  } finally {
    await selectBackend("cpu");
  }
});

Deno.test("selectBackend('webgpu') without navigator.gpu says to enable WebGPU", async () => {
  const own = Object.getOwnPropertyDescriptor(navigator, "gpu");
  Object.defineProperty(navigator, "gpu", { value: undefined, configurable: true });
  try {
    await assertRejects(() => selectBackend("webgpu"), Error, "--unstable-webgpu");
    assertEquals(tf.getBackend(), "cpu");
  } finally {
    if (own) Object.defineProperty(navigator, "gpu", own);
    else delete (navigator as unknown as { gpu?: unknown }).gpu;
  }
});

// ---- parity of webgpu with cpu -------------------------------------------------------------------

/** Named outputs of one computation, read back to plain arrays. */
type Outputs = Map<string, { shape: number[]; values: Float32Array }>;

/**
 * Runs `compute` on cpu and then on webgpu and compares every output. `compute` builds its inputs
 * from plain arrays (so nothing crosses backends) and returns named tensors, which are read and
 * disposed here. Small tensors are kept on the GPU kernels, not handed to the cpu ones.
 */
async function assertSameOnWebGpu(compute: () => Map<string, tf.Tensor>): Promise<void> {
  const before = tf.memory().numTensors;
  const expected = await runOn("cpu", compute);
  const threshold = "WEBGPU_CPU_HANDOFF_SIZE_THRESHOLD";
  let saved: number | undefined;
  let actual: Outputs;
  try {
    await selectBackend("webgpu");
    saved = tf.env().getNumber(threshold);
    tf.env().set(threshold, 0);
    actual = await runOn("webgpu", compute);
  } finally {
    if (saved !== undefined) tf.env().set(threshold, saved);
    await selectBackend("cpu");
  }
  assertEquals(tf.memory().numTensors, before, "tensors leaked");
  const failures: string[] = [];
  for (const [name, e] of expected) {
    const a = actual.get(name)!;
    if (a.shape.join() !== e.shape.join()) {
      failures.push(`${name}: shape [${a.shape}] on webgpu, [${e.shape}] on cpu`);
      continue;
    }
    const err = relativeError(a.values, e.values);
    if (!(err <= RTOL)) failures.push(`${name}: relative error ${err.toExponential(2)}`);
  }
  assert(failures.length === 0, `webgpu differs from cpu beyond ${RTOL}:\n${failures.join("\n")}`);
}

async function runOn(backend: string, compute: () => Map<string, tf.Tensor>): Promise<Outputs> {
  await selectBackend(backend as BackendName);
  let outputs: Map<string, tf.Tensor>;
  try {
    outputs = compute();
  } catch (e) {
    // tfjs names no kernel in its errors; the stack does ("reverse [as kernelFunc]").
    const stack = String((e as Error).stack);
    const kernel = stack.match(/at (?:Object\.)?(\w+) \[as kernelFunc\]/)?.[1] ?? "unknown";
    throw new Error(`on ${backend}, in kernel ${kernel}: ${(e as Error).message}`, { cause: e });
  }
  const read: Outputs = new Map();
  try {
    for (const [name, t] of outputs) {
      read.set(name, { shape: t.shape, values: Float32Array.from(await t.data()) });
    }
  } finally {
    tf.dispose([...outputs.values()]);
  }
  return read;
}

/** max |a − e| / max |e|; NaN anywhere gives NaN. */
function relativeError(a: Float32Array, e: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < e.length; i++) {
    const d = Math.abs(a[i] - e[i]);
    if (Number.isNaN(d)) return NaN;
    diff = Math.max(diff, d);
    scale = Math.max(scale, Math.abs(e[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

/** Seeded normal values as plain arrays (mulberry32 + Box–Muller): the same on every backend. */
function normal(shape: number[], seed: number, std = 1): { shape: number[]; values: Float32Array } {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const values = new Float32Array(shape.reduce((p, q) => p * q, 1));
  for (let i = 0; i < values.length; i++) {
    values[i] = std * Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  }
  return { shape, values };
}

function tensor<T extends tf.Tensor>(a: { shape: number[]; values: Float32Array }): T {
  return tf.tensor(a.values, a.shape, "float32") as T;
}

/** `Σ w ⊙ f(inputs)` and its gradient with respect to every input, under their names. */
function valueAndGrads(
  f: (...inputs: tf.Tensor[]) => tf.Tensor,
  inputs: Record<string, tf.Tensor>,
  weight: tf.Tensor,
): Map<string, tf.Tensor> {
  const names = Object.keys(inputs);
  const out = tf.tidy(() => {
    const y = f(...names.map((n) => inputs[n]));
    const { value, grads } = tf.valueAndGrads((...xs: tf.Tensor[]) =>
      tf.sum(tf.mul(f(...xs), weight))
    )(
      names.map((n) => inputs[n]),
    );
    return [y, value, ...grads];
  });
  tf.dispose([...Object.values(inputs), weight]);
  const [y, value, ...grads] = out;
  return new Map([["y", y], ["loss", value], ...names.map((n, i) => [`d${n}`, grads[i]] as const)]);
}

/** depthwiseConv3d's value and gradients on webgpu against cpu, for x of `xShape`, kernel `k`. */
function depthwiseOnWebGpu(xShape: number[], k: number[], seed = 31): Promise<void> {
  const x = normal(xShape, seed);
  const filter = normal([...k, xShape[4], 1], seed + 1, 0.3);
  const w = normal(xShape, seed + 2);
  return assertSameOnWebGpu(() =>
    valueAndGrads(
      (a, b) => depthwiseConv3d(a as tf.Tensor5D, b as tf.Tensor5D),
      { x: tensor(x), filter: tensor(filter) },
      tensor(w),
    )
  );
}

const ignore = !webgpu.ok;

Deno.test({
  name: `webgpu matches cpu: conv3d 3×3×3 same and 2×2×2/2 valid, values and gradients${SKIP}`,
  ignore,
  fn: async () => {
    const x = normal([1, 8, 8, 8, 3], 1);
    const k3 = normal([3, 3, 3, 3, 4], 2, 0.3);
    const k2 = normal([2, 2, 2, 3, 4], 3, 0.3);
    const w3 = normal([1, 8, 8, 8, 4], 4);
    const w2 = normal([1, 4, 4, 4, 4], 5);
    await assertSameOnWebGpu(() => {
      const same = valueAndGrads(
        (a, b) => tf.conv3d(a as tf.Tensor5D, b as tf.Tensor5D, 1, "same"),
        { x: tensor(x), filter: tensor(k3) },
        tensor(w3),
      );
      const down = valueAndGrads(
        (a, b) => tf.conv3d(a as tf.Tensor5D, b as tf.Tensor5D, 2, "valid"),
        { x: tensor(x), filter: tensor(k2) },
        tensor(w2),
      );
      return new Map([
        ...[...same].map(([n, t]) => [`same/${n}`, t] as const),
        ...[...down].map(([n, t]) => [`down/${n}`, t] as const),
      ]);
    });
  },
});

Deno.test({
  name: `webgpu matches cpu: depthwiseConv3d values and gradients${SKIP}`,
  ignore,
  fn: () => depthwiseOnWebGpu([2, 8, 8, 8, 4], [3, 3, 3], 11),
});

Deno.test({
  name: `webgpu matches cpu: groupNorm + relu6 values and gradients${SKIP}`,
  ignore,
  fn: async () => {
    const x = normal([2, 8, 8, 8, 8], 21, 2);
    const gamma = normal([8], 22);
    const beta = normal([8], 23);
    const w = normal([2, 8, 8, 8, 8], 24);
    await assertSameOnWebGpu(() =>
      valueAndGrads(
        (a, g, b) =>
          groupNorm(a as tf.Tensor5D, g as tf.Tensor1D, b as tf.Tensor1D, {
            groups: 4,
            activation: "relu6",
          }),
        { x: tensor(x), gamma: tensor(gamma), beta: tensor(beta) },
        tensor(w),
      )
    );
  },
});

Deno.test({
  name: `webgpu: selecting it registers the WGSL kernels; REVUNET_NATIVE=0 leaves tfjs's${SKIP}`,
  ignore,
  fn: async () => {
    const saved = Deno.env.get("REVUNET_NATIVE");
    try {
      const on = await selectBackend("webgpu");
      assert(webGpuKernelsEnabled() && hasKernel(REV_DEPTHWISE_CONV3D), on.device);
      assert(hasKernel(REV_GROUP_NORM_ACT_GRAD));
      assertStringIncludes(on.device, "WGSL");
      Deno.env.set("REVUNET_NATIVE", "0");
      const off = await selectBackend("webgpu");
      assert(!webGpuKernelsEnabled() && !hasKernel(REV_DEPTHWISE_CONV3D), off.device);
      assertStringIncludes(off.device, "tfjs kernels only");
    } finally {
      if (saved === undefined) Deno.env.delete("REVUNET_NATIVE");
      else Deno.env.set("REVUNET_NATIVE", saved);
      await selectBackend("cpu");
    }
  },
});

// Odd sizes, a batch of 2, kernels 1×3×5 and 5×5×5, channel counts that are not powers of two;
// volumes of several 4×4×8 tiles with partial tiles at every edge and a partial channel block; and
// one of 1,859 tiles, so each workgroup of the filter gradient sums a run of two tiles, the last
// run half empty.
for (
  const [xShape, k] of [
    [[2, 5, 6, 7, 3], [3, 3, 3]],
    [[1, 4, 3, 6, 5], [1, 3, 5]],
    [[1, 6, 5, 4, 2], [5, 5, 5]],
    [[2, 9, 7, 19, 12], [3, 3, 3]],
    [[1, 9, 7, 19, 12], [5, 5, 5]],
    [[1, 52, 52, 88, 1], [3, 3, 3]],
  ] as [number[], number[]][]
) {
  Deno.test({
    name:
      `webgpu WGSL depthwiseConv3d matches cpu: value, dx, dfilter, x=[${xShape}] k=[${k}]${SKIP}`,
    ignore,
    fn: () => depthwiseOnWebGpu(xShape, k),
  });
}

// Adam/AdamW and SGD: the fused WGSL updates against the cpu backend's, over three steps. A large
// learning rate, so that a wrong update shows against the weights' own magnitude.
Deno.test({
  name: `webgpu fused Adam/AdamW and SGD updates match cpu: weights and state over 3 steps${SKIP}`,
  ignore,
  fn: async () => {
    const shapes = [[3, 3, 3, 8, 1], [16, 32], [7]];
    const init = shapes.map((shape, i) => normal(shape, 60 + i));
    const grads = [0, 1, 2].map((step) =>
      shapes.map((shape, i) => normal(shape, 70 + 10 * step + i))
    );
    for (
      const [kind, weightDecay] of [["adam", 0], ["adam", 0.1], ["sgd", 0], ["sgd", 0.1]] as const
    ) {
      await assertSameOnWebGpu(() => {
        const weights = new Map<string, tf.Tensor>(init.map((a, i) => {
          const t = tensor(a);
          const w = tf.variable(t);
          t.dispose();
          return [`w${i}`, w];
        }));
        const optimizer = new Optimizer({ kind, weightDecay });
        for (const step of grads) {
          const g = new Map(step.map((a, i) => [`w${i}`, tensor(a)]));
          optimizer.apply(weights, g, 0.3);
          tf.dispose([...g.values()]);
        }
        const out = new Map<string, tf.Tensor>();
        for (const [name, w] of weights) out.set(name, w);
        for (const [name, t] of optimizer.state()) out.set(name, tf.clone(t));
        optimizer.dispose();
        return out;
      });
    }
  },
});

Deno.test({
  name: `webgpu: an Adam step is one fused kernel per weight (three dispatches, not fifteen), ` +
    `and so is an SGD step${SKIP}`,
  ignore,
  fn: async () => {
    await selectBackend("webgpu");
    try {
      assert(hasKernel(REV_ADAM_UPDATE));
      const weights = new Map<string, tf.Tensor>([
        ["a", tf.variable(tf.ones([4, 4]))],
        ["b", tf.variable(tf.ones([5]))],
      ]);
      const grads = new Map([["a", tf.fill([4, 4], 0.5)], ["b", tf.fill([5], -0.5)]]);
      const optimizer = new Optimizer({ kind: "adam" });
      optimizer.apply(weights, grads, 0.1); // creates the moments
      const info = await tf.profile(() => optimizer.apply(weights, grads, 0.1));
      assertEquals(info.kernels.map((k) => k.name), [REV_ADAM_UPDATE, REV_ADAM_UPDATE]);
      // 1 − 0.1 · m̂ / (√v̂ + ε) with m̂ = g and v̂ = g² at every step: 0.8 after two steps.
      const a = (await weights.get("a")!.data())[0];
      const b = (await weights.get("b")!.data())[0];
      assert(Math.abs(a - 0.8) < 1e-5 && Math.abs(b - 1.2) < 1e-5, `a = ${a}, b = ${b}`);
      optimizer.dispose();
      const sgd = new Optimizer({ kind: "sgd", momentum: 0.9 });
      const sgdInfo = await tf.profile(() => sgd.apply(weights, grads, 0.1));
      // (its first step also creates the velocities)
      assertEquals(
        sgdInfo.kernels.map((k) => k.name).filter((n) => n !== "ZerosLike"),
        [REV_SGD_UPDATE, REV_SGD_UPDATE],
      );
      // vel = g = 0.5; w −= 0.1 · (g + 0.9 · vel) = 0.095
      const a2 = (await weights.get("a")!.data())[0];
      assert(Math.abs(a2 - (0.8 - 0.095)) < 1e-5, `a = ${a2}`);
      sgd.dispose();
      tf.dispose([...weights.values(), ...grads.values()]);
    } finally {
      await selectBackend("cpu");
    }
  },
});

// The untiled programs: REVUNET_WGSL_TILES=0, and kernels whose halo outgrows workgroup memory.
Deno.test({
  name: `webgpu WGSL depthwiseConv3d untiled (REVUNET_WGSL_TILES=0) matches cpu${SKIP}`,
  ignore,
  fn: async () => {
    for (const [xShape, k] of [[[2, 9, 7, 19, 12], [3, 3, 3]], [[1, 4, 3, 6, 5], [1, 3, 5]]]) {
      const was = setWgslTiles(false);
      try {
        await depthwiseOnWebGpu(xShape, k);
      } finally {
        setWgslTiles(was);
      }
    }
  },
});

Deno.test("WGSL tiling fits WebGPU's guaranteed limits, and gives up on kernels that cannot", () => {
  for (const k of [[1, 1, 1], [3, 3, 3], [1, 3, 5], [5, 5, 5], [7, 7, 7], [9, 9, 9]]) {
    const halo = k.map((v, i) => v - 1 + [4, 4, 8][i]);
    const haloVoxels = halo[0] * halo[1] * halo[2];
    const taps = k[0] * k[1] * k[2];
    const fwd = depthwiseTiling(k);
    if (fwd) {
      assert(fwd.threads <= 256, `${k}: ${fwd.threads} threads`);
      assert((haloVoxels + taps) * fwd.cb * 4 <= 16384, `${k}: forward workgroup memory`);
    }
    const grad = filterGradTiling(k);
    if (grad) {
      assert(grad.threads <= 256, `${k}: ${grad.threads} threads`);
      assert((haloVoxels + 128) * grad.cb * 4 <= 16384, `${k}: filter-gradient workgroup memory`);
    }
  }
  assertEquals(depthwiseTiling([3, 3, 3])?.cb, 8);
  assertEquals(filterGradTiling([3, 3, 3]), {
    cb: 8,
    halo: [6, 6, 10],
    threads: 216,
    rowGroups: 3,
  });
  // 14·14·18 halo voxels + 1,331 taps > 4,096 floats even for one channel: the untiled program
  // runs; the filter gradient keeps dy's 128 voxels instead of the taps, and gives up at 13³.
  assertEquals(depthwiseTiling([11, 11, 11]), null);
  assertEquals(filterGradTiling([11, 11, 11])?.cb, 1);
  assertEquals(filterGradTiling([13, 13, 13]), null);
});

for (
  const [xShape, groups, activation] of [
    [[2, 3, 5, 4, 12], 3, "none"],
    [[1, 6, 5, 7, 16], 8, "relu"],
    [[3, 2, 3, 4, 6], 6, "relu6"],
    [[1, 4, 4, 3, 8], 1, "relu6"],
  ] as [number[], number, GroupNormActivation][]
) {
  Deno.test({
    name: `webgpu WGSL groupNorm matches cpu: value, dx, dgamma, dbeta, x=[${xShape}] ` +
      `groups=${groups} ${activation}${SKIP}`,
    ignore,
    fn: async () => {
      const c = xShape[4];
      const x = normal(xShape, 41, 2);
      const gamma = normal([c], 42);
      const beta = normal([c], 43);
      const w = normal(xShape, 44);
      await assertSameOnWebGpu(() =>
        valueAndGrads(
          (a, g, b) =>
            groupNorm(a as tf.Tensor5D, g as tf.Tensor1D, b as tf.Tensor1D, {
              groups,
              activation,
            }),
          { x: tensor(x), gamma: tensor(gamma), beta: tensor(beta) },
          tensor(w),
        )
      );
    },
  });
}

Deno.test({
  name: `webgpu: the WGSL kernels give the layers' composite values on webgpu itself${SKIP}`,
  ignore,
  fn: async () => {
    const x = normal([1, 6, 6, 6, 8], 51, 2);
    const filter = normal([3, 3, 3, 8, 1], 52, 0.3);
    const gamma = normal([8], 53);
    const beta = normal([8], 54);
    const compute = async () => {
      const out = tf.tidy(() => {
        const y = depthwiseConv3d(tensor(x), tensor(filter));
        return groupNorm(y, tensor(gamma), tensor(beta), { groups: 4, activation: "relu6" });
      });
      const values = Float32Array.from(await out.data());
      out.dispose();
      return values;
    };
    try {
      await selectBackend("webgpu");
      const wgsl = await compute();
      disableWebGpuKernels();
      assert(!hasKernel(REV_DEPTHWISE_CONV3D));
      const composite = await compute();
      const err = relativeError(wgsl, composite);
      assert(err <= RTOL, `relative error ${err}`);
    } finally {
      await selectBackend("cpu");
    }
  },
});

for (const filterGrad of ["kernel", "taps"] as const) {
  Deno.test({
    name: `webgpu matches cpu: 2-level network logits, reversible and standard gradients, ` +
      `convolution filter gradients by ${filterGrad}${SKIP}`,
    ignore,
    fn: async () => {
      const was = setConvFilterGradMode(filterGrad);
      try {
        const config: NetworkConfig = resolveConfig({
          levels: 2,
          baseChannels: 8,
          blocksPerLevel: 1,
        });
        // Random weights read to plain arrays, norm scales included (zeroInitResidual: false), so that
        // no block is the identity and every gradient is non-zero.
        const init = createUNet(config, { seed: 5, zeroInitResidual: false, variables: false });
        const weights = new Map(
          [...init.named].map((
            [n, t],
          ) => [n, { shape: t.shape, values: t.dataSync() as Float32Array }]),
        );
        disposeUNet(init);
        const x = normal([1, 8, 8, 8, config.inChannels], 31);
        const target = normal([1, 8, 8, 8, config.outChannels], 32);
        target.values = target.values.map((v) => (v > 0.5 ? 1 : 0));
        await assertSameOnWebGpu(() => {
          const named = new Map([...weights].map(([n, a]) => [n, tensor(a)]));
          const net = unetFromWeights(config, named, false);
          tf.dispose([...named.values()]);
          const xt = tensor<tf.Tensor5D>(x);
          const tt = tensor<tf.Tensor5D>(target);
          const loss = (logits: tf.Tensor5D) => diceBceLoss(logits, tt);
          const out = new Map<string, tf.Tensor>([["logits", predictLogits(net, xt)]]);
          for (
            const [method, grads] of [["reversible", reversibleGrads], [
              "standard",
              standardGrads,
            ]] as const
          ) {
            const r = grads(net, xt, loss, true);
            out.set(`${method}/loss`, r.loss);
            out.set(`${method}/dx`, r.inputGrad!);
            for (const [n, g] of r.grads) out.set(`${method}/${n}`, g);
          }
          tf.dispose([xt, tt]);
          disposeUNet(net);
          return out;
        });
      } finally {
        setConvFilterGradMode(was);
      }
    },
  });
}

/** A small network, its optimizer and one batch, on the active backend. */
function smallTraining() {
  const config = resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 });
  return {
    net: createUNet(config, { seed: 1 }),
    opt: new Optimizer(),
    x: tf.randomNormal([1, 8, 8, 8, 4], 0, 1, "float32", 3) as tf.Tensor5D,
    t: tf.randomUniform([1, 8, 8, 8, 3], 0, 1, "float32", 4).round() as tf.Tensor5D,
  };
}

Deno.test({
  name:
    `webgpu runs the pipeline's own reads: a training step, sliding windows, saving a model${SKIP}`,
  ignore,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await selectBackend("webgpu");
      const { net, opt, x, t } = smallTraining();
      const loss = await trainStepAsync(net, opt, x, t, 1e-3);
      assert(Number.isFinite(loss), `loss ${loss}`);
      const image = Float32Array.from({ length: 12 * 10 * 8 * 4 }, (_, i) => Math.sin(i));
      const probs = await slidingWindowProbabilities(unetPredictor(net), image, [12, 10, 8], {
        window: 8,
      });
      assertEquals(probs.length, 12 * 10 * 8 * 3);
      assert(probs.every((p) => p >= 0 && p <= 1));
      await saveModel(dir, net, opt);
      const saved = Float32Array.from(await net.named.get("stem/kernel")!.data());
      tf.dispose([x, t]);
      opt.dispose();
      disposeUNet(net);
      await selectBackend("cpu");
      const { net: back } = await loadModel(dir);
      assertEquals(back.named.get("stem/kernel")!.dataSync(), saved);
      disposeUNet(back);
    } finally {
      await selectBackend("cpu");
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: `webgpu: an error the device reports fails the next training step and window${SKIP}`,
  ignore,
  fn: async () => {
    await selectBackend("webgpu");
    const { net, opt, x, t } = smallTraining();
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    // An invalid request, as a dispatch the device refuses would be: tfjs-webgpu never looks.
    const refuse = async () => {
      device.createBuffer({ size: 4, usage: 0 });
      await new Promise((resolve) => setTimeout(resolve, 100)); // errors arrive as events
    };
    try {
      await refuse();
      await assertRejects(
        () => trainStepAsync(net, opt, x, t, 1e-3),
        Error,
        "the WebGPU device reported 1 error",
      );
      checkWebGpuErrors(); // reported once, then forgotten
      const image = Float32Array.from({ length: 8 * 8 * 8 * 4 }, (_, i) => Math.sin(i));
      await refuse();
      await assertRejects(
        () => slidingWindowProbabilities(unetPredictor(net), image, [8, 8, 8], { window: 8 }),
        Error,
        "results computed since are wrong",
      );
      assert(Number.isFinite(await trainStepAsync(net, opt, x, t, 1e-3)));
    } finally {
      tf.dispose([x, t]);
      opt.dispose();
      disposeUNet(net);
      await selectBackend("cpu");
    }
  },
});
