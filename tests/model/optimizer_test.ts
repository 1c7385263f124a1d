/**
 * The optimizers and the learning-rate schedule against values worked out by hand (in float64, written
 * below as literals) from PyTorch's update rules, for two steps on a two-element weight with chosen
 * gradients: g1 = [0.5, 0.25], g2 = [-0.2, 1.0], w0 = [1, -2], lr 0.1.
 */
import * as tf from "../../model/tf.ts";
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  DEFAULT_OPTIMIZER,
  Optimizer,
  type OptimizerConfig,
  polyLearningRate,
} from "../../model/mod.ts";

await tf.setBackend("cpu");

const GRADS = [[0.5, 0.25], [-0.2, 1.0]];

/** A weight variable [1, -2] (the variable keeps its own copy of the initial tensor). */
function weight(): tf.Variable {
  const init = tf.tensor1d([1, -2]);
  const w = tf.variable(init, true, `w${Math.random()}`);
  init.dispose();
  return w;
}

/** Runs two updates from w0 = [1, -2]; returns w after each, and checks no tensor is left behind. */
function twoSteps(config: Partial<OptimizerConfig>, lr = 0.1): number[][] {
  const before = tf.memory().numTensors;
  const w = weight();
  const weights = new Map<string, tf.Tensor>([["w", w]]);
  const opt = new Optimizer(config);
  const after: number[][] = [];
  for (const g of GRADS) {
    const grad = tf.tensor1d(g);
    opt.apply(weights, new Map([["w", grad]]), lr);
    grad.dispose();
    after.push([...w.dataSync()]);
  }
  opt.dispose();
  w.dispose();
  assertEquals(tf.memory().numTensors, before, "every tensor is disposed");
  return after;
}

function assertClose(actual: number[], expected: number[], tol: number, what: string) {
  assertEquals(actual.length, expected.length);
  actual.forEach((a, i) => assertAlmostEquals(a, expected[i], tol, `${what}[${i}]`));
}

Deno.test("polyLearningRate: lr·(1 − step/total)^0.9, zero at and after the end, any power", () => {
  assertEquals(polyLearningRate(0.01, 0, 100), 0.01);
  assertAlmostEquals(polyLearningRate(1, 50, 100), 0.5358867312681466, 1e-15); // 0.5^0.9
  assertAlmostEquals(polyLearningRate(2, 25, 100), 2 * 0.7718895067235705, 1e-15); // 2·0.75^0.9
  assertAlmostEquals(polyLearningRate(1, 75, 100), 0.2871745887492587, 1e-15); // 0.25^0.9
  assertEquals(polyLearningRate(1, 100, 100), 0);
  // Past the end (a run resumed with fewer epochs): clamped to 0, not NaN from a negative base.
  assertEquals(polyLearningRate(1, 150, 100), 0);
  // total 0 is treated as 1 rather than dividing by zero
  assertEquals(polyLearningRate(3, 0, 0), 3);
  assertEquals(polyLearningRate(1, 50, 100, 2), 0.25);
  // strictly decreasing over a run
  let last = Infinity;
  for (let s = 0; s <= 10; s++) {
    const lr = polyLearningRate(1, s, 10);
    assert(lr < last, `step ${s}: ${lr} < ${last}`);
    last = lr;
  }
});

Deno.test("SGD with Nesterov momentum and L2 weight decay matches PyTorch's rule worked by hand", () => {
  // PyTorch: d = g + wd·w; v = μv + d; w -= lr·(d + μv)   (μ 0.9, wd 0.01, lr 0.1)
  // step 1, w[0]: d = 0.5 + 0.01·1 = 0.51; v = 0.51; w = 1 − 0.1·(0.51 + 0.9·0.51) = 0.9031
  //        w[1]: d = 0.25 − 0.02 = 0.23; v = 0.23; w = −2 − 0.1·(0.23 + 0.207) = −2.0437
  // step 2, w[0]: d = −0.2 + 0.009031 = −0.190969; v = 0.459 − 0.190969 = 0.268031;
  //               w = 0.9031 − 0.1·(−0.190969 + 0.2412279) = 0.89807411
  //        w[1]: d = 1 − 0.020437 = 0.979563; v = 0.207 + 0.979563 = 1.186563;
  //               w = −2.0437 − 0.1·(0.979563 + 1.0679067) = −2.24844697
  const [w1, w2] = twoSteps({ kind: "sgd", momentum: 0.9, weightDecay: 0.01 });
  assertClose(w1, [0.9031, -2.0437], 1e-6, "step 1");
  assertClose(w2, [0.89807411, -2.24844697], 1e-6, "step 2");
  // Without decay, plain Nesterov: w = 1 − 0.1·(0.5 + 0.9·0.5) = 0.905
  assertClose(twoSteps({ kind: "sgd", momentum: 0.9 })[0], [0.905, -2.0475], 1e-6, "no decay");
  assertEquals(DEFAULT_OPTIMIZER.momentum, 0.99, "nnU-Net's momentum is the default");
});

Deno.test("Adam matches the bias-corrected rule worked by hand", () => {
  // β1 0.9, β2 0.999, ε 1e-8, lr 0.1
  // step 1: m = 0.1·g, v = 0.001·g², m̂ = g, v̂ = g²: w -= 0.1·g/(|g| + ε) ≈ 0.1·sign(g)
  //   → [1 − 0.0999999998, −2 − 0.0999999996]
  // step 2, w[0]: m = 0.045 − 0.02 = 0.025; v = 0.00024975 + 0.00004 = 0.00028975;
  //   m̂ = 0.025/0.19 = 0.131578947; v̂ = 0.00028975/0.001999 = 0.144947474; √v̂ = 0.380719;
  //   w = 0.900000002 − 0.1·0.131578947/0.380719 = 0.865439418
  //         w[1]: m = 0.0225 + 0.1 = 0.1225; v = 0.0000624375 + 0.001 = 0.0010624375;
  //   m̂ = 0.644736842; v̂ = 0.531484492; √v̂ = 0.729029; w = −2.1 − 0.0884376 = −2.188437644
  const [w1, w2] = twoSteps({ kind: "adam" });
  assertClose(w1, [0.900000002, -2.099999996], 1e-6, "step 1");
  assertClose(w2, [0.8654394181165108, -2.1884376438445123], 1e-6, "step 2");
});

Deno.test("AdamW: decoupled weight decay lr·wd·w, not added to the gradient's moments", () => {
  // PyTorch AdamW: w ← w·(1 − lr·wd) − lr·m̂/(√v̂ + ε)   (wd 0.1, lr 0.1: the factor is 0.99)
  // step 1: [1·0.99 − 0.1, −2·0.99 − 0.1] = [0.89, −2.08]
  // step 2: w[0] = 0.890000002·0.99 − 0.0345605819 = 0.846539418
  //         w[1] = −2.079999996·0.99 − 0.0884376438 = −2.147637644
  const [w1, w2] = twoSteps({ kind: "adam", weightDecay: 0.1 });
  assertClose(w1, [0.890000002, -2.079999996], 1e-6, "step 1");
  assertClose(w2, [0.8465394180965108, -2.1476376438845124], 1e-6, "step 2");
  // The moments are the gradient's alone: the same as without decay.
  const before = tf.memory().numTensors;
  const w = weight();
  const opt = new Optimizer({ kind: "adam", weightDecay: 0.1 });
  const g = tf.tensor1d(GRADS[0]);
  opt.apply(new Map([["w", w]]), new Map([["w", g]]), 0.1);
  const [m, v] = opt.slots.get("w")!;
  assertClose([...m.dataSync()], [0.05, 0.025], 1e-9, "m");
  assertClose([...v.dataSync()], [0.00025, 0.0000625], 1e-10, "v");
  tf.dispose([g, w]);
  opt.dispose();
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("Optimizer: state() and load() continue exactly where the saved optimizer was", () => {
  for (const kind of ["adam", "sgd"] as const) {
    const before = tf.memory().numTensors;
    const a = weight();
    const b = weight();
    const oa = new Optimizer({ kind, weightDecay: 0.01 });
    const g0 = tf.tensor1d(GRADS[0]);
    const g1 = tf.tensor1d(GRADS[1]);
    oa.apply(new Map([["w", a]]), new Map([["w", g0]]), 0.1);
    b.assign(a);
    const ob = new Optimizer({ kind, weightDecay: 0.01 });
    ob.load(oa.step, oa.state());
    oa.apply(new Map([["w", a]]), new Map([["w", g1]]), 0.05);
    ob.apply(new Map([["w", b]]), new Map([["w", g1]]), 0.05);
    assertEquals([...b.dataSync()], [...a.dataSync()], `${kind}: same second step`);
    assertEquals(ob.step, 2);
    tf.dispose([a, b, g0, g1]);
    oa.dispose();
    ob.dispose();
    assertEquals(tf.memory().numTensors, before, `${kind}: nothing leaked`);
  }
  assertThrows(() => new Optimizer({ kind: "rmsprop" as "adam" }), RangeError, "rmsprop");
  const sgd = new Optimizer({ kind: "sgd" });
  const t = tf.zeros([2]);
  assertThrows(() => sgd.load(0, new Map([["slot1/w", t]])), RangeError, "slot1/w");
  t.dispose();
  sgd.dispose();
});

Deno.test("Adam's cpu loop equals the op-by-op float32 update bit for bit, weight decay included", () => {
  const n = 1000;
  const rand = (seed: number) => tf.randomNormal([n], 0, 1, "float32", seed) as tf.Tensor1D;
  for (const weightDecay of [0, 0.01]) {
    const init = rand(1);
    const w = tf.variable(init, true, `adam-loop-${weightDecay}`);
    const opt = new Optimizer({ kind: "adam", weightDecay });
    const weights = new Map<string, tf.Tensor>([["w", w]]);
    // The same three updates with tfjs ops, as the optimizer does on other backends.
    let [rw, rm, rv]: tf.Tensor[] = [tf.clone(init), tf.zerosLike(init), tf.zerosLike(init)];
    const { beta1, beta2, epsilon } = DEFAULT_OPTIMIZER;
    for (let step = 1; step <= 3; step++) {
      const g = rand(10 + step);
      opt.apply(weights, new Map([["w", g]]), 0.01);
      const next = tf.tidy(() => {
        const m = tf.add(tf.mul(rm, beta1), tf.mul(g, 1 - beta1));
        const v = tf.add(tf.mul(rv, beta2), tf.mul(tf.square(g), 1 - beta2));
        const mHat = tf.div(m, 1 - Math.pow(beta1, step));
        const vHat = tf.div(v, 1 - Math.pow(beta2, step));
        let update = tf.div(mHat, tf.add(tf.sqrt(vHat), epsilon));
        if (weightDecay > 0) update = tf.add(update, tf.mul(rw, weightDecay));
        return [tf.sub(rw, tf.mul(update, 0.01)), m, v];
      });
      tf.dispose([rw, rm, rv, g]);
      [rw, rm, rv] = next;
    }
    assertEquals([...w.dataSync()], [...rw.dataSync()], "weights");
    const [m, v] = opt.slots.get("w")!;
    assertEquals([...m.dataSync()], [...rm.dataSync()], "first moment");
    assertEquals([...v.dataSync()], [...rv.dataSync()], "second moment");
    tf.dispose([init, w, rw, rm, rv]);
    opt.dispose();
  }
});
