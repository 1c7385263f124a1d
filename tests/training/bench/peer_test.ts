/**
 * pipeline/training/bench/peer.ts: the PyTorch peer. Its script lies beside the engine, its Python
 * is REVUNET_PEER_PYTHON when set, and (when Debian's python3-torch is installed) its network has
 * our parameter count and output shape.
 * @module
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { countParams, REFERENCE_CONFIG, resolveConfig } from "../../../model/mod.ts";
import {
  PEER_PYTHON,
  PEER_PYTHON_ENV,
  PEER_SCRIPT,
  peerPython,
  runPeer,
} from "../../../pipeline/training/mod.ts";
import { runCommand } from "../../_cli.ts";

const HAS_TORCH: boolean = (() => {
  try {
    return new Deno.Command(PEER_PYTHON, {
      args: ["-c", "import torch"],
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } catch {
    return false;
  }
})();

const run = runCommand;

/** Sets or removes an environment variable for the length of `fn`. */
async function withEnv<T>(name: string, value: string | undefined, fn: () => Promise<T> | T) {
  const before = Deno.env.get(name);
  if (value === undefined) Deno.env.delete(name);
  else Deno.env.set(name, value);
  try {
    return await fn();
  } finally {
    if (before === undefined) Deno.env.delete(name);
    else Deno.env.set(name, before);
  }
}

Deno.test({
  name: "peer_torch.py --check: the PyTorch network has our 479,955 parameters and output shape",
  ignore: !HAS_TORCH,
  async fn() {
    const r = await run(PEER_PYTHON, [
      "pipeline/training/bench/peer_torch.py",
      "--check",
      "--device",
      "cpu",
    ]);
    assertEquals(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout.trim().split("\n").pop()!);
    assertEquals(j.param_count, countParams(resolveConfig(REFERENCE_CONFIG)));
    assertEquals(j.param_count, 479955);
    assertEquals(j.input_shape, [1, 4, 16, 16, 16]);
    assertEquals(j.output_shape, [1, 3, 16, 16, 16]);
    // Its reversible backward (inputs recomputed from outputs) against ordinary autograd.
    assert(j.grad_rel_err < 1e-4, `grad_rel_err ${j.grad_rel_err}`);
  },
});

Deno.test("bench speed: the PyTorch peer's script lies beside the engine that runs it", async () => {
  assert(PEER_SCRIPT.pathname.endsWith("/pipeline/training/bench/peer_torch.py"), PEER_SCRIPT.href);
  assert((await Deno.stat(PEER_SCRIPT)).isFile, `${PEER_SCRIPT.href} is missing`);
});

Deno.test("bench speed: the peer's Python is REVUNET_PEER_PYTHON when set, else the default", async () => {
  assertEquals(PEER_PYTHON_ENV, "REVUNET_PEER_PYTHON");
  await withEnv(PEER_PYTHON_ENV, undefined, () => assertEquals(peerPython(), PEER_PYTHON));
  await withEnv(PEER_PYTHON_ENV, "", () => assertEquals(peerPython(), PEER_PYTHON));
  await withEnv(PEER_PYTHON_ENV, "/opt/venv/bin/python3", () => {
    assertEquals(peerPython(), "/opt/venv/bin/python3");
  });
  const missing = "/nonexistent/revunet/python3";
  const r = await withEnv(
    PEER_PYTHON_ENV,
    missing,
    () => runPeer({ crop: 16, steps: 1, warmup: 0, threads: 1, device: "cpu" }),
  );
  assertEquals(r.peer, null);
  assertStringIncludes(r.reason ?? "", `cannot run ${missing}`);
});
