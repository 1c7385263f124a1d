/**
 * `bench speed` and `bench kernels` as a user runs them (a subprocess of main.ts, tiny crop and
 * case, no peer), with their usage errors, and bench and plan on webgpu when an adapter is there
 * (the engine's own tests: tests/training/bench/).
 * @module
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { depthwiseShapes } from "../../pipeline/training/mod.ts";
import { runCommand } from "../_cli.ts";

const run = runCommand;

const positive = (v: unknown) => typeof v === "number" && Number.isFinite(v) && v > 0;

Deno.test("bench speed --json at crop 8 prints one JSON object with positive finite timings", async () => {
  const r = await run(Deno.execPath(), [
    "run",
    "-A",
    "main.ts",
    "bench",
    "speed",
    "--json",
    "--crop",
    "8",
    "--steps",
    "1",
    "--case-sizes",
    "8x8x8,8x8x16",
    "--no-peer",
  ]);
  const show = `exit ${r.code}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;
  assertEquals(r.code, 0, show);
  const lines = r.stdout.split("\n").filter((l) => l !== "");
  assertEquals(lines.length, 1, show);
  const j = JSON.parse(lines[0]);
  assertEquals(j.param_count, 479955);
  assertEquals(j.crop, 8);
  assertEquals(j.backend, "cpu");
  assert(typeof j.device === "string" && j.device.length > 0, show);
  for (const k of ["train_step_ms", "train_voxels_per_s", "infer_voxels_per_s", "case_seconds"]) {
    assert(positive(j[k]), `${k} = ${j[k]}\n${show}`);
  }
  assertEquals(j.case.sizes.length, 2, show);
  assertEquals(j.case.sizes.map((c: { windows: number }) => c.windows), [1, 3]);
  for (const c of j.case.sizes) assert(positive(c.seconds) && positive(c.voxels_per_s), show);
  assertEquals(j.case.measured, false); // 240x240x155 not asked for: extrapolated
  assertEquals(j.peer, null);
  assertEquals(j.ratio, null);
  assert(typeof j.peer_reason === "string", show);
});

Deno.test("bench speed rejects a crop that is not a multiple of 8 and memory-only flags", async () => {
  const bad = await run(Deno.execPath(), [
    "run",
    "-A",
    "main.ts",
    "bench",
    "speed",
    "--crop",
    "12",
  ]);
  assertEquals(bad.code, 2, bad.stderr);
  const mixed = await run(Deno.execPath(), [
    "run",
    "-A",
    "main.ts",
    "bench",
    "speed",
    "--budget",
    "4",
  ]);
  assertEquals(mixed.code, 2, mixed.stderr);
  assert(mixed.stderr.includes("--budget"), mixed.stderr);
});

/** Whether this process sees a WebGPU adapter (the tests run with --unstable-webgpu). */
async function webGpuAdapter(): Promise<string | null> {
  const gpu = (navigator as unknown as { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
  if (!gpu) return "navigator.gpu is missing";
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
  return (await gpu.requestAdapter()) ? null : "no WebGPU adapter (install mesa-vulkan-drivers)";
}
const noWebGpu = await webGpuAdapter();

// The bench's reads must all be asynchronous there: tfjs-webgpu's synchronous read needs a canvas.
Deno.test({
  name: `bench speed, bench kernels and plan run on webgpu${
    noWebGpu ? ` (skipped: ${noWebGpu})` : ""
  }`,
  ignore: noWebGpu !== null,
  fn: async () => {
    // main.ts on webgpu: `deno run -A --unstable-webgpu main.ts <words>`.
    const onWebGpu = (words: string) =>
      run(Deno.execPath(), ["run", "-A", "--unstable-webgpu", "main.ts", ...words.split(" ")]);
    const speed = await onWebGpu(
      "bench speed --json --backend webgpu --crop 8 --steps 1 --case-sizes 8x8x8 --no-peer",
    );
    assertEquals(speed.code, 0, speed.stderr);
    const j = JSON.parse(speed.stdout);
    assertEquals(j.backend, "webgpu");
    for (const k of ["train_step_ms", "train_voxels_per_s", "infer_voxels_per_s"]) {
      assert(positive(j[k]), `${k} = ${j[k]}`);
    }
    const kernels = await onWebGpu("bench kernels --json --backend webgpu --crop 8 --steps 1");
    assertEquals(kernels.code, 0, kernels.stderr);
    const k = JSON.parse(kernels.stdout);
    assertEquals(k.backend, "webgpu");
    assertEquals(k.kernels.length, 5 * depthwiseShapes(8).length + 2);
    for (const row of k.kernels) {
      assert(positive(row.ms), `${row.kernel}: ${row.ms}`);
      // The depthwise kernels against their untiled programs, the convolutions' filter gradient
      // by taps against tfjs's kernel; GroupNorm has nothing to compare with.
      const compared = !row.kernel.startsWith("group_norm");
      assertEquals(positive(row.ms_baseline), compared, row.kernel);
      if (compared) assert(positive(row.ratio), row.kernel);
    }
    assertEquals(
      k.kernels.slice(-2).map((r: { kernel: string; baseline: string }) => [r.kernel, r.baseline]),
      [
        ["conv3d_filter_grad_stem", "tfjs Conv3DBackpropFilterV2"],
        ["conv3d_filter_grad_down", "tfjs Conv3DBackpropFilterV2"],
      ],
    );
    // plan measures training steps, whose loss it must read asynchronously there too.
    const plan = await onWebGpu(
      "plan --backend webgpu --budget 1 --measure-crops 8,16 --config " +
        '{"levels":2,"baseChannels":4,"blocksPerLevel":1}',
    );
    assertEquals(plan.code, 0, plan.stderr);
    const p = JSON.parse(plan.stdout);
    assert(p.reversible.max_crop > p.standard.max_crop, plan.stdout);
  },
});

Deno.test("bench kernels --json times every kernel at every level; misplaced flags are usage errors", async () => {
  const out = await run(Deno.execPath(), [
    "run",
    "-A",
    "main.ts",
    "bench",
    "kernels",
    "--json",
    "--crop",
    "8",
    "--steps",
    "1",
  ]);
  if (out.code !== 0 && /has none of the project's kernels/.test(out.stderr)) {
    // No gcc or OpenBLAS: the error must say what is missing, and nothing else may fail.
    assertEquals(out.code, 1, out.stderr);
  } else {
    assertEquals(out.code, 0, out.stderr);
    const result = JSON.parse(out.stdout);
    assertEquals(result.crop, 8);
    assertEquals(result.kernels.length, 5 * depthwiseShapes(8).length + 2);
    for (const k of result.kernels) {
      assert(Number.isFinite(k.ms) && k.ms > 0, `${k.kernel} [${k.shape}]: ${k.ms} ms`);
    }
    assertEquals(
      result.kernels.map((k: { kernel: string }) => k.kernel).slice(0, 5),
      [
        "depthwise_conv3d",
        "depthwise_conv3d_input_grad",
        "depthwise_conv3d_filter_grad",
        "group_norm_act",
        "group_norm_act_grad",
      ],
    );
  }
  const bad = await run(Deno.execPath(), [
    "run",
    "-A",
    "main.ts",
    "bench",
    "kernels",
    "--budget",
    "2",
  ]);
  assertEquals(bad.code, 2, bad.stderr);
  assert(bad.stderr.includes("--budget belongs to bench memory"), bad.stderr);
});

Deno.test("bench speed without --json: the summary for people, then the same result as JSON", async () => {
  const r = await run(Deno.execPath(), [
    "run",
    "-A",
    "main.ts",
    "bench",
    "speed",
    "--crop",
    "8",
    "--steps",
    "1",
    "--case-sizes",
    "8x8x8",
    "--no-peer",
  ]);
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split("\n");
  const j = JSON.parse(lines.at(-1)!);
  assertEquals(lines[0], "speed: reference network (479,955 parameters), batch 1, crop 8^3");
  assertEquals(lines[1], `  backend cpu on ${j.device}`);
  assert(lines[4].startsWith("  case 8x8x8       "), lines[4]);
  assertStringIncludes(lines[4], "(1 windows of 8^3, ");
  assertStringIncludes(lines[5], `(240x240x155, ${j.case.windows} windows, overlap 0.5, no TTA)`);
  assert(lines[5].endsWith(" (extrapolated)"), lines[5]);
  assertEquals(lines[6], "  peer: none (not asked for (--no-peer))");
  assertEquals(lines.length, 8, r.stdout);
  // Progress went to stderr, prefixed with the command.
  assert(r.stderr.split("\n").filter((l) => l).every((l) => l.startsWith("bench: ")), r.stderr);
});
