/**
 * deploy/device/: the GPU-machine kit, checked without a GPU, the network or a packed .device/.
 * The scripts parse, run.sh records what is missing instead of failing silently, summary.py reads
 * back what run.sh records (the bench's peer honouring REVUNET_PEER_PYTHON:
 * tests/training/bench/peer_test.ts).
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { ROOT, runCommand } from "../_cli.ts";

const DEVICE = join(ROOT, "deploy", "device");

const run = runCommand;

Deno.test("deploy/device: pack.sh and run.sh parse (bash -n)", async () => {
  for (const script of ["pack.sh", "run.sh"]) {
    const r = await run("bash", ["-n", join(DEVICE, script)]);
    assertEquals(r.code, 0, `${script}: ${r.stderr}`);
  }
});

Deno.test("deploy/device: .device/ is git-ignored", async () => {
  const ignore = await Deno.readTextFile(join(ROOT, ".gitignore"));
  assert(ignore.split("\n").some((l) => l.trim() === "/.device/"), ".gitignore lacks /.device/");
});

Deno.test("deploy/device: run.sh without OUT refuses; with an empty kit it records why", async () => {
  const noOut = await run("bash", [join(DEVICE, "run.sh")], { PATH: Deno.env.get("PATH") ?? "" });
  assertEquals(noOut.code, 2);
  assertStringIncludes(noOut.stderr, "OUT");

  const tmp = await Deno.makeTempDir({ prefix: "device_kit_test_" });
  try {
    const out = join(tmp, "out");
    const r = await run("bash", [join(DEVICE, "run.sh")], {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      OUT: out,
      DEVICE_KIT: join(tmp, "empty-kit"),
      DEVICE_WORK: join(tmp, "work"),
      DEVICE_INSTALL_DEBS: "0",
      DEVICE_CROPS: "32",
      DEVICE_FULL_CROPS: "32",
      DEVICE_PEER_CROPS: "",
      REVUNET_PEER_PYTHON: "/nonexistent/revunet/python3",
    });
    assertEquals(r.code, 0, r.stdout + r.stderr);
    const log = await Deno.readTextFile(join(out, "device.log"));
    assertStringIncludes(log, "deno = NOT AVAILABLE");
    const summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
    assertStringIncludes(summary.facts.deno, "NOT AVAILABLE");
    const steps = summary.steps as { name: string; status: string; note: string }[];
    for (const name of ["probe", "bench-webgpu-32", "kernels-webgpu", "bench-webgpu-32-full"]) {
      const step = steps.find((s) => s.name === name);
      assertEquals(step?.status, "skipped", JSON.stringify(steps));
      assertStringIncludes(step?.note ?? "", "deno not available");
    }
    // Only the two files that are always there: nothing else was produced.
    const files = [];
    for await (const e of Deno.readDir(out)) files.push(e.name);
    assertEquals(files.sort(), ["device.log", "summary.json"]);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("deploy/device: summary.py embeds each step's JSON and pulls out the figures", async () => {
  const work = await Deno.makeTempDir({ prefix: "device_kit_summary_" });
  try {
    const bench = {
      backend: "webgpu",
      device: "webgpu: NVIDIA H200 (hardware)",
      crop: 32,
      train_step_ms: 12.5,
      infer_ms: 4.25,
      case_seconds: 30.5,
      case: { measured: true, windows: 1764, sizes: [{ dims: [240, 240, 155], seconds: 30.5 }] },
      peer: { device: "cuda: NVIDIA H200", train_step_ms: 10, infer_ms: 3 },
      ratio: { train: 0.8, infer: 0.7 },
    };
    await Deno.writeTextFile(join(work, "b.json"), JSON.stringify(bench) + "\n");
    await Deno.writeTextFile(
      join(work, "p.jsonl"),
      `${JSON.stringify({ grad_rel_err: 1e-7, device: "cuda", param_count: 479955 })}\n` +
        `${JSON.stringify({ crop: 128, train_step_ms: 50, infer_ms: 9, device: "cuda" })}\n`,
    );
    const kernels = {
      backend: "webgpu",
      device: "webgpu: NVIDIA H200 (hardware)",
      crop: 128,
      kernels: [
        { kernel: "depthwise_conv3d", shape: [1, 128, 128, 128, 32], ms: 1.5, ms_baseline: 3 },
        { kernel: "group_norm_act", shape: [1, 128, 128, 128, 32], ms: 0.5 },
      ],
    };
    await Deno.writeTextFile(join(work, "k.json"), JSON.stringify(kernels) + "\n");
    await Deno.writeTextFile(join(work, "facts.tsv"), "gpu\tNVIDIA H200, 580.1, 143771 MiB\n");
    await Deno.writeTextFile(
      join(work, "steps.tsv"),
      `bench-webgpu-32\tok\t0\t41.2\t${join(work, "b.json")}\t\n` +
        `peer-cuda-128\tok\t0\t9.0\t${join(work, "p.jsonl")}\t\n` +
        `kernels-webgpu\tok\t0\t20.0\t${join(work, "k.json")}\t\n` +
        `bench-webgpu-64-full\ttimeout\t124\t300.0\t-\tkilled after 300 s\n`,
    );
    const r = await run("python3", [join(DEVICE, "summary.py"), work]);
    assertEquals(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout);
    assertEquals(s.facts.gpu, "NVIDIA H200, 580.1, 143771 MiB");
    assertEquals(s.steps.length, 4);
    assertEquals(s.steps[3].status, "timeout");
    assertEquals(s.steps[3].exit_code, 124);
    assertEquals(s.steps[0].result.train_step_ms, 12.5);
    const h = s.highlights;
    assertEquals(h[0].case_measured, true);
    assertEquals(h[0].peer_device, "cuda: NVIDIA H200");
    assertEquals(h[1].grad_rel_err, 1e-7);
    assertEquals(h[2].crop, 128);
    assertEquals(h[3].kernels_ms, [
      ["depthwise_conv3d", [1, 128, 128, 128, 32], 1.5, 3],
      ["group_norm_act", [1, 128, 128, 128, 32], 0.5, null],
    ]);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
