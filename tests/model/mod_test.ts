import * as tf from "../../model/tf.ts";
import { assert, assertAlmostEquals, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { compareGrads, randomBatch, randomNet } from "../_model_fixtures.ts";
import {
  blockForward,
  blockInverse,
  blockOptions,
  compareGradMapsAsync,
  countParams,
  createUNet,
  diceBceLoss,
  disposeUNet,
  forwardComposite,
  Optimizer,
  paramCount,
  predictLogits,
  REFERENCE_CONFIG,
  resolveConfig,
  reversibleGrads,
  standardGrads,
  trainStep,
  upsampleConv,
} from "../../model/mod.ts";

function maxAbs(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
}

Deno.test("reference network has 479,955 parameters, counted and built", () => {
  assertEquals(countParams(resolveConfig()), 479_955);
  const net = createUNet(resolveConfig());
  assertEquals(paramCount(net), 479_955);
  disposeUNet(net);
});

Deno.test("countParams agrees with the built network for other configurations", () => {
  for (
    const cfg of [
      { levels: 3, baseChannels: 8, blocksPerLevel: 1 },
      { levels: 3, baseChannels: 32, blocksPerLevel: 3, expansion: 2 },
      { levels: 5, outChannels: 4, inChannels: 2, maxGroups: 4 },
    ]
  ) {
    const c = resolveConfig(cfg);
    const net = createUNet(c);
    assertEquals(paramCount(net), countParams(c), JSON.stringify(cfg));
    disposeUNet(net);
  }
});

Deno.test("resolveConfig rejects unknown fields and invalid values with their names", () => {
  assertThrows(() => resolveConfig({ baseChanels: 16 } as never), RangeError, "baseChanels");
  assertThrows(() => resolveConfig({ baseChannels: 15 }), RangeError, "baseChannels must be even");
  assertThrows(() => resolveConfig({ levels: 0 }), RangeError, "levels");
  assertThrows(() => resolveConfig({ activation: "gelu" as never }), RangeError, "activation");
  assertThrows(
    () => resolveConfig({ baseChannels: 12, maxGroups: 8 }),
    RangeError,
    "GroupNorm groups",
  );
});

Deno.test("upsampleConv equals tf.conv3dTranspose: x=[2,3,4,5,6] -> cout 4", () => {
  const x = tf.randomNormal([2, 3, 4, 5, 6], 0, 1, "float32", 1) as tf.Tensor5D;
  const k = tf.randomNormal([2, 2, 2, 4, 6], 0, 1, "float32", 2) as tf.Tensor5D;
  const b = tf.randomNormal([4], 0, 1, "float32", 3) as tf.Tensor1D;
  const ours = upsampleConv(x, k, b);
  const ref = tf.add(tf.conv3dTranspose(x, k, [2, 6, 8, 10, 4], 2, "valid"), b);
  assertEquals(ours.shape, [2, 6, 8, 10, 4]);
  assert(maxAbs(ours, ref) < 1e-4, `max abs diff ${maxAbs(ours, ref)}`);
  tf.dispose([x, k, b, ours, ref]);
});

Deno.test("reversible block inverse recovers x from y to float32 precision: x=[1,8,8,8,32]", () => {
  const net = randomNet({}, 5);
  const o = blockOptions(net.config, 1);
  const w = net.weights.encoder[1][0];
  const x = tf.randomNormal([1, 8, 8, 8, 32], 0, 1, "float32", 9) as tf.Tensor5D;
  const y = blockForward(x, w, o);
  const back = blockInverse(y, w, o);
  const err = maxAbs(back, x);
  const scale = tf.tidy(() => tf.max(tf.abs(y)).dataSync()[0]);
  assert(err <= 1e-5 * scale, `reconstruction error ${err} (|y|max ${scale})`);
  tf.dispose([x, y, back]);
  disposeUNet(net);
});

Deno.test("predictLogits (scoped inference) equals the composite forward pass", () => {
  const net = randomNet({}, 2);
  const { x, target } = randomBatch(net, 16);
  const a = predictLogits(net, x);
  const b = tf.tidy(() => forwardComposite(net, x));
  assertEquals(a.shape, [1, 16, 16, 16, 3]);
  assert(maxAbs(a, b) < 1e-4, `diff ${maxAbs(a, b)}`);
  tf.dispose([a, b, x, target]);
  disposeUNet(net);
});

Deno.test("reversible gradients equal standard autodiff gradients for every weight and the input: reference net, 16^3", () => {
  const net = randomNet({}, 4);
  const { x, target } = randomBatch(net, 16);
  const loss = (logits: tf.Tensor5D) => diceBceLoss(logits, target);
  const rev = reversibleGrads(net, x, loss, true);
  const std = standardGrads(net, x, loss, true);
  assertAlmostEquals(rev.loss.dataSync()[0], std.loss.dataSync()[0], 1e-5);
  assertEquals([...rev.grads.keys()], [...std.grads.keys()]);
  const all = (r: typeof rev) => new Map([...r.grads, ["input", r.inputGrad!]]);
  const cmp = compareGrads(all(rev), all(std));
  assert(cmp.globalRelErr <= 1e-4, `global relative L2 error ${cmp.globalRelErr}`);
  assert(
    cmp.worstTensorRelErr <= 5e-3,
    `worst tensor ${cmp.worstTensor}: relative error ${cmp.worstTensorRelErr}`,
  );
  tf.dispose([x, target, rev.loss, std.loss, rev.inputGrad!, std.inputGrad!]);
  tf.dispose([...rev.grads.values(), ...std.grads.values()]);
  disposeUNet(net);
});

Deno.test("a training step leaks no tensors and lowers the loss on a fixed batch", () => {
  const net = createUNet(resolveConfig({ levels: 3, baseChannels: 8 }), { seed: 3 });
  const { x, target } = randomBatch(net, 16);
  const opt = new Optimizer({ kind: "adam" });
  const first = trainStep(net, opt, x, target, 1e-2); // creates the optimizer's slots
  const before = tf.memory().numTensors;
  let last = first;
  for (let i = 0; i < 5; i++) last = trainStep(net, opt, x, target, 1e-2);
  assertEquals(tf.memory().numTensors, before);
  assert(last < first, `loss went from ${first} to ${last}`);
  opt.dispose();
  tf.dispose([x, target]);
  disposeUNet(net);
});

Deno.test("standard and reversible training steps give the same weights after 2 steps", () => {
  const make = (reversible: boolean) =>
    createUNet(resolveConfig({ levels: 3, baseChannels: 8, reversible }), { seed: 11 });
  const a = make(true);
  const b = make(false);
  const { x, target } = randomBatch(a, 8);
  const oa = new Optimizer({ kind: "sgd" });
  const ob = new Optimizer({ kind: "sgd" });
  for (let i = 0; i < 2; i++) {
    trainStep(a, oa, x, target, 1e-2);
    trainStep(b, ob, x, target, 1e-2);
  }
  let worst = 0;
  for (const [name, w] of a.named) worst = Math.max(worst, maxAbs(w, b.named.get(name)!));
  assert(worst < 1e-5, `largest weight difference ${worst}`);
  oa.dispose();
  ob.dispose();
  tf.dispose([x, target]);
  disposeUNet(a);
  disposeUNet(b);
});

Deno.test("network input of the wrong shape is refused with its shape", () => {
  const net = createUNet(REFERENCE_CONFIG);
  const x = tf.zeros([1, 12, 16, 16, 4]) as tf.Tensor5D;
  assertThrows(() => predictLogits(net, x), RangeError, "multiple of 8");
  const y = tf.zeros([1, 16, 16, 16, 3]) as tf.Tensor5D;
  assertThrows(() => predictLogits(net, y), TypeError, "[n, d, h, w, 4]");
  tf.dispose([x, y]);
  disposeUNet(net);
});

Deno.test("compareGradMapsAsync reads asynchronously and reports what compareGradMaps does", async () => {
  const e = new Map([["a", tf.tensor([1, 2, 3])], ["b", tf.tensor([0, 0, 4])]]);
  const a = new Map([["a", tf.tensor([1, 2, 3.3])], ["b", tf.tensor([0, 0.8, 4])]]);
  const sync = compareGrads(a, e);
  assertEquals(await compareGradMapsAsync(a, e), sync);
  assertEquals(sync.worstTensor, "b"); // 0.8 / 4 against 0.3 / 3
  assert(Math.abs(sync.worstTensorRelErr - 0.2) < 1e-6);
  assert(Math.abs(sync.globalRelErr - Math.sqrt((0.09 + 0.64) / 30)) < 1e-6);
  await assertRejects(
    () => compareGradMapsAsync(new Map([["a", a.get("a")!]]), e),
    Error,
    'gradient "b" missing',
  );
  tf.dispose([...e.values(), ...a.values()]);
});
