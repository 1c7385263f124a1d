import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { randomBatch, randomNet } from "../_model_fixtures.ts";
import {
  decodeSafetensors,
  deserializeOptimizer,
  deserializeUNet,
  disposeUNet,
  encodeSafetensors,
  Optimizer,
  serializeOptimizer,
  serializeUNet,
  trainStep,
} from "../../model/mod.ts";

Deno.test("safetensors round trip keeps names, shapes, order, values and metadata", () => {
  const tensors = new Map([
    ["b", { shape: [2, 3], values: Float32Array.from([1, -2, 3.5, 4, 5, 6]) }],
    ["a", { shape: [1], values: Float32Array.from([Math.PI]) }],
  ]);
  const bytes = encodeSafetensors(tensors, { config: "{}" });
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assertEquals((8 + headerLen) % 8, 0);
  const back = decodeSafetensors(bytes, "x.safetensors");
  assertEquals([...back.tensors.keys()], ["b", "a"]);
  assertEquals(back.tensors.get("b"), tensors.get("b"));
  assertEquals(back.tensors.get("a")!.values[0], Math.fround(Math.PI));
  assertEquals(back.metadata, { config: "{}" });
});

Deno.test("decodeSafetensors names the file and the problem for broken input", () => {
  assertThrows(
    () => decodeSafetensors(new Uint8Array(3), "m.safetensors"),
    SyntaxError,
    '"m.safetensors"',
  );
  const bytes = encodeSafetensors(new Map([["w", { shape: [4], values: new Float32Array(4) }]]));
  assertThrows(
    () => decodeSafetensors(bytes.subarray(0, bytes.length - 4), "t.st"),
    SyntaxError,
    "data offsets",
  );
  const bad = bytes.slice();
  bad[9] = 0x7b; // break the JSON
  bad[8] = 0x7d;
  assertThrows(() => decodeSafetensors(bad, "j.st"), SyntaxError, "not JSON");
});

Deno.test("a serialized network reloads with its configuration and identical predictions", () => {
  const net = randomNet({ levels: 2, baseChannels: 8, blocksPerLevel: 1 }, 8);
  const bytes = serializeUNet(net, { note: "test" });
  const { net: back, metadata } = deserializeUNet(bytes, "model.safetensors");
  assertEquals(back.config, net.config);
  assertEquals(metadata.note, "test");
  for (const [k, w] of net.named) assertEquals(back.named.get(k)!.dataSync(), w.dataSync(), k);
  disposeUNet(net);
  disposeUNet(back);
});

Deno.test("a model file with a foreign configuration or missing weight is refused by name", () => {
  const net = randomNet({ levels: 2, baseChannels: 8, blocksPerLevel: 1 }, 8);
  const named = new Map(
    [...net.named].map(([k, t]) => [k, { shape: t.shape, values: t.dataSync() as Float32Array }]),
  );
  named.delete("head/bias");
  const meta = {
    format: "revunet-deno",
    version: "1",
    kind: "model",
    config: JSON.stringify(net.config),
  };
  assertThrows(
    () => deserializeUNet(encodeSafetensors(named, meta), "m1"),
    RangeError,
    'lack "head/bias"',
  );
  const wrong = { ...meta, config: JSON.stringify({ ...net.config, levels: "x" }) };
  assertThrows(() => deserializeUNet(encodeSafetensors(named, wrong), "m2"), RangeError, '"m2"');
  assertThrows(
    () => deserializeUNet(encodeSafetensors(named, {}), "m3"),
    SyntaxError,
    "not a RevUNet-Deno model",
  );
  disposeUNet(net);
});

Deno.test("optimizer state round trip: resuming gives the same next step bit for bit", () => {
  const a = randomNet({ levels: 2, baseChannels: 8, blocksPerLevel: 1 }, 9);
  const { x, target } = randomBatch(a, 8);
  const optA = new Optimizer({ kind: "adam", weightDecay: 1e-4 });
  trainStep(a, optA, x, target, 1e-2);
  trainStep(a, optA, x, target, 1e-2);
  // Snapshot model and optimizer, continue both copies one step, compare.
  const { net: b } = deserializeUNet(serializeUNet(a), "m");
  const optB = deserializeOptimizer(serializeOptimizer(optA), "o");
  assertEquals(optB.step, 2);
  trainStep(a, optA, x, target, 1e-2);
  trainStep(b, optB, x, target, 1e-2);
  for (const [k, w] of a.named) {
    assert(
      w.dataSync().every((v, i) => v === b.named.get(k)!.dataSync()[i]),
      `weight ${k} differs after resuming`,
    );
  }
  optA.dispose();
  optB.dispose();
  tf.dispose([x, target]);
  disposeUNet(a);
  disposeUNet(b);
});
