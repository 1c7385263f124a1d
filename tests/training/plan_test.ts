import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import * as tf from "../../model/tf.ts";
import {
  cropModel,
  disableNativeKernels,
  enableNativeKernels,
  fitCrops,
  measureStepPeak,
  predictPeak,
  REFERENCE_CONFIG,
  resolveConfig,
  reversibleLowerBound,
} from "../../model/mod.ts";
import {
  autoCrop,
  autoCropSetting,
  planCrop,
  planNetworkConfig,
  SettingsError,
} from "../../pipeline/training/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/mod.ts";

await tf.setBackend("cpu");
const SMALL = { levels: 2, baseChannels: 8, blocksPerLevel: 2 };

Deno.test("step peak memory is linear in voxels: crops 8 and 16 predict crop 24 within 2%", async () => {
  const cfg = resolveConfig(SMALL);
  const model = await cropModel(cfg, [8, 16]);
  const measured = await measureStepPeak(cfg, 24);
  const predicted = predictPeak(model, 24);
  assert(
    Math.abs(predicted - measured) / measured < 0.02,
    `predicted ${predicted}, measured ${measured}`,
  );
});

Deno.test("plan: the reversible network fits a larger crop than its standard twin in the same budget", async () => {
  const plan = await planCrop({ budget: 64 * 1024 ** 2, config: SMALL, measureCrops: [8, 16] });
  assertEquals(plan.crop_multiple, 2);
  assert(plan.reversible.max_crop > plan.standard.max_crop, JSON.stringify(plan));
  assert(plan.reversible.bytes_per_voxel < plan.standard.bytes_per_voxel);
  assert(plan.reversible.peak_bytes_at_max_crop! <= 64 * 1024 ** 2);
  // The reversible step can never beat its analytic lower bound.
  const measured = plan.reversible.measured.find((m) => m.crop === 16)!.peakBytes;
  assert(measured >= reversibleLowerBound(resolveConfig(SMALL), 16), `${measured}`);
  await assertRejects(
    () => planCrop({ budget: 1e9, config: { levels: 4 }, measureCrops: [12, 16] }),
    RangeError,
    "multiple of 8",
  );
});

const probe = enableNativeKernels();
disableNativeKernels();
const NATIVE = probe.layers && probe.matMul;

Deno.test({
  name: "reference network: the reversible step fitted at fitCrops() predicts 64³ within 1%, " +
    `and stays within 1.5× its analytic lower bound${
      NATIVE ? "" : ` (skipped: ${probe.notes.join("; ")})`
    }`,
  ignore: !NATIVE,
  async fn() {
    enableNativeKernels();
    try {
      const cfg = resolveConfig(REFERENCE_CONFIG);
      const crops = fitCrops(cfg);
      assertEquals(crops, [32, 48]);
      assertEquals(fitCrops(resolveConfig({ ...cfg, reversible: false })), [16, 24]);
      const model = await cropModel(cfg, crops);
      const measured = await measureStepPeak(cfg, 64);
      const predicted = predictPeak(model, 64);
      assert(
        Math.abs(predicted - measured) / measured < 0.01,
        `predicted ${predicted}, measured ${measured}`,
      );
      const ratio = measured / reversibleLowerBound(cfg, 64);
      assert(ratio >= 1 && ratio <= 1.5, `peak / lower bound at 64³ = ${ratio}`);
    } finally {
      disableNativeKernels();
    }
  },
});

Deno.test("planNetworkConfig: --config JSON checked, --data's channels and regions shape the network", async () => {
  assertEquals(await planNetworkConfig(undefined, undefined), {});
  assertEquals(await planNetworkConfig('{"baseChannels":8}', undefined), { baseChannels: 8 });
  const refused = async (json: string, data?: string) => {
    const e = await assertRejects(() => planNetworkConfig(json, data), SettingsError);
    assertEquals(e.flag, "--config");
    return e.message;
  };
  assertStringIncludes(await refused("notjson"), "--config is not JSON: ");
  assertEquals(await refused("[1]"), "--config must be a JSON object of network fields, got [1]");
  assertEquals(await refused("null"), "--config must be a JSON object of network fields, got null");
  assertStringIncludes(await refused('{"baseChannels":-1}'), "--config: Network configuration: ");

  const dir = await Deno.makeTempDir({ prefix: "revunet-plan-" });
  try {
    await writePhantomDataset(dir, { cases: 1, dims: [16, 16, 16], seed: 1 });
    assertEquals(await planNetworkConfig('{"baseChannels":8}', dir), {
      baseChannels: 8,
      inChannels: 4,
      outChannels: 3,
    });
    assertEquals(
      await refused('{"outChannels":1}', dir),
      `--config outChannels 1 disagrees with --data ${dir}, which has 3`,
    );
    await assertRejects(() => planNetworkConfig(undefined, `${dir}/none`), Error, `${dir}/none`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("autoCropSetting: a new run gets autoCrop's crop for its network and batch; a resumed one none", async () => {
  const config = resolveConfig(SMALL);
  const budget = 64 * 1024 ** 2;
  const chosen = await autoCropSetting({ config, batch: 2 }, budget, "cpu", false);
  const expected = await autoCrop(config, 2, budget, "cpu");
  assertEquals(chosen, { crop: expected.crop, note: `--crop auto: ${expected.summary}` });
  assertEquals(await autoCropSetting({ config }, budget, "cpu", true), {
    note: "--crop auto with --resume: the run keeps the crop it started with",
  });
  const e = await assertRejects(
    () => autoCropSetting({ config }, 1024, "cpu", false),
    SettingsError,
  );
  assertEquals(e.flag, "--budget");
  assertStringIncludes(e.message, "is too small");
});
