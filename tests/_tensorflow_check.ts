/**
 * The tensorflow backend's checks, run by tests/model/tensorflow_test.ts in a process of their own:
 * libtensorflow cannot be loaded into a process that has mapped Mesa's Vulkan driver (the WebGPU
 * tests do), and native libraries stay loaded for the life of the process that `deno test` runs
 * every file in. Prints one JSON object on the last line of stdout.
 *
 * Usage: deno run -A tests/_tensorflow_check.ts <grads|train> [edge]
 * @module
 */
import * as tf from "../model/tf.ts";
import { selectBackend } from "../model/backend.ts";
import {
  compareGradMaps,
  createUNet,
  diceBceLoss,
  disposeUNet,
  Optimizer,
  type OptimizerConfig,
  resolveConfig,
  reversibleGrads,
  standardGrads,
  trainStepAsync,
  unetFromWeights,
} from "../model/mod.ts";

type Tensor = { shape: number[]; values: Float32Array };
type Arrays = Map<string, Tensor>;

const [what, edgeArg] = Deno.args;
const S = Number(edgeArg ?? 16);

// libtensorflow first: the cpu path's native kernels may be loaded after it, not the reverse of
// Mesa's driver (see above), and loading it once keeps the backends switchable.
const tfChoice = await selectBackend("tensorflow");
await selectBackend("cpu");

/** The reference network with random weights (norm scales too, so no gradient is zero). */
function referenceWeights(): Arrays {
  const init = createUNet(resolveConfig({}), {
    seed: 5,
    zeroInitResidual: false,
    variables: false,
  });
  const out: Arrays = new Map();
  for (const [n, t] of init.named) {
    out.set(n, { shape: t.shape, values: t.dataSync() as Float32Array });
  }
  disposeUNet(init);
  return out;
}

function arrays(
  n: number[],
  seed: number,
  binary = false,
): { shape: number[]; values: Float32Array } {
  return tf.tidy(() => {
    // Inputs as the pipeline feeds them: z-scored intensities, roughly standard normal.
    const t = binary
      ? tf.randomUniform(n, 0, 1, "float32", seed)
      : tf.randomNormal(n, 0, 1, "float32", seed);
    const values = t.dataSync() as Float32Array;
    return { shape: n, values: binary ? values.map((v) => (v > 0.7 ? 1 : 0)) : values };
  });
}

async function read(m: Map<string, tf.Tensor>): Promise<Arrays> {
  const out: Arrays = new Map();
  for (const [k, t] of m) out.set(k, { shape: t.shape, values: (await t.data()) as Float32Array });
  return out;
}

function toTensors(a: Arrays): Map<string, tf.Tensor> {
  return new Map([...a].map(([k, v]) => [k, tf.tensor(v.values, v.shape)]));
}

/** Gradients (reversible and standard, input included) of the reference network on one backend. */
async function gradients(backend: "cpu" | "tensorflow", w: Arrays, x: Tensor, t: Tensor) {
  await selectBackend(backend);
  const config = resolveConfig({});
  const named = toTensors(w);
  const net = unetFromWeights(config, named, false);
  tf.dispose([...named.values()]);
  const xt = tf.tensor5d(x.values, x.shape as [number, number, number, number, number]);
  const tt = tf.tensor5d(t.values, t.shape as [number, number, number, number, number]);
  const before = tf.memory().numTensors;
  const out = new Map<string, tf.Tensor>();
  const started = performance.now();
  for (
    const [method, grads] of [["reversible", reversibleGrads], ["standard", standardGrads]] as const
  ) {
    const r = grads(net, xt, (logits) => diceBceLoss(logits, tt), true);
    out.set(`${method}/loss`, r.loss);
    out.set(`${method}/dx`, r.inputGrad!);
    for (const [n, g] of r.grads) out.set(`${method}/${n}`, g);
  }
  const values = await read(out);
  const ms = performance.now() - started;
  tf.dispose([...out.values()]);
  const leaked = tf.memory().numTensors - before;
  tf.dispose([xt, tt]);
  disposeUNet(net);
  return { values, ms, leaked };
}

/** Two training steps with each optimizer; returns the weights afterwards and the losses. */
async function training(
  backend: "cpu" | "tensorflow",
  w: Arrays,
  x: Tensor,
  t: Tensor,
  opt: Partial<OptimizerConfig>,
) {
  await selectBackend(backend);
  const config = resolveConfig({});
  const named = toTensors(w);
  const net = unetFromWeights(config, named, true);
  tf.dispose([...named.values()]);
  const optimizer = new Optimizer(opt);
  const xt = tf.tensor5d(x.values, x.shape as [number, number, number, number, number]);
  const tt = tf.tensor5d(t.values, t.shape as [number, number, number, number, number]);
  const losses = [await trainStepAsync(net, optimizer, xt, tt, 1e-3)];
  const before = tf.memory().numTensors;
  losses.push(await trainStepAsync(net, optimizer, xt, tt, 1e-3));
  const leaked = tf.memory().numTensors - before;
  const values = await read(net.named);
  tf.dispose([xt, tt]);
  optimizer.dispose();
  disposeUNet(net);
  return { values, losses, leaked };
}

function compare(a: Arrays, b: Arrays) {
  const ta = toTensors(a);
  const tb = toTensors(b);
  const c = compareGradMaps(ta, tb);
  tf.dispose([...ta.values(), ...tb.values()]);
  return c;
}

const w = referenceWeights();
const x = arrays([1, S, S, S, 4], 31);
const t = arrays([1, S, S, S, 3], 32, true);
let result: Record<string, unknown>;
if (what === "grads") {
  const cpu = await gradients("cpu", w, x, t);
  const tfl = await gradients("tensorflow", w, x, t);
  const part = (a: Arrays, prefix: string) => new Map([...a].filter(([k]) => k.startsWith(prefix)));
  const renamed = (a: Arrays, from: string, to: string) =>
    new Map([...a].map(([k, v]) => [k.replace(from, to), v]));
  result = {
    device: tfChoice.device,
    ...compare(tfl.values, cpu.values),
    reversible: compare(part(tfl.values, "reversible/"), part(cpu.values, "reversible/")),
    standard: compare(part(tfl.values, "standard/"), part(cpu.values, "standard/")),
    // The two methods on cpu alone: how far float32 rounding alone moves these gradients.
    cpuMethods: compare(
      renamed(part(cpu.values, "reversible/"), "reversible/", "standard/"),
      part(cpu.values, "standard/"),
    ),
    cpuMs: cpu.ms,
    tensorflowMs: tfl.ms,
    leaked: tfl.leaked,
    count: tfl.values.size,
  };
} else if (what === "train") {
  const out: Record<string, unknown> = { device: tfChoice.device };
  for (const kind of ["adam", "sgd"] as const) {
    const cpu = await training("cpu", w, x, t, { kind });
    const tfl = await training("tensorflow", w, x, t, { kind });
    // How far the weights moved, and how far the two backends' moves differ.
    const moved = compare(tfl.values, w);
    const delta = (a: Arrays) =>
      new Map(
        [...a].map(([k, v]) => [k, {
          shape: v.shape,
          values: v.values.map((y, i) => y - w.get(k)!.values[i]),
        }]),
      );
    out[kind] = {
      ...compare(delta(tfl.values), delta(cpu.values)),
      moved: moved.globalRelErr,
      cpuLosses: cpu.losses,
      tensorflowLosses: tfl.losses,
      leaked: tfl.leaked,
    };
  }
  result = out;
} else {
  throw new RangeError(`_tensorflow_check: expected grads or train, found "${what}"`);
}
console.log(JSON.stringify(result));
