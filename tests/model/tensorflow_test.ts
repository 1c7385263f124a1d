/**
 * The tensorflow backend (libtensorflow through tfjs-node, built by `deno task setup` in
 * .cache/tfjs-node): the reference network's gradients against the cpu backend's, and training
 * steps with Adam and SGD. The checks run in a child process (tests/_tensorflow_check.ts): the
 * WebGPU tests map Mesa's Vulkan driver into the test process, and libtensorflow crashes when
 * loaded after it. Where the binding is not built the tests are skipped, and the reason is
 * printed and shown in the test names.
 * @module
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { tfjsNodePackageDir } from "../../model/tensorflow.ts";
import { setupTensorflow } from "../../pipeline/training/mod.ts";

const built = (() => {
  try {
    Deno.statSync(`${tfjsNodePackageDir("@tensorflow/tfjs-node")}/.revunet-built`);
    return true;
  } catch {
    return false;
  }
})();
const SKIP = built
  ? ""
  : " (skipped: tfjs-node not built; deno task setup builds it where pip has tensorflow_cpu)";
if (!built) console.warn(`tensorflow_test: tensorflow backend tests skipped:${SKIP.slice(10, -1)}`);

/** Runs one check in its own process and returns its JSON result. */
async function check(what: string, edge = 16): Promise<Record<string, unknown>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--lock=tests/deno.lock", "tests/_tensorflow_check.ts", what, String(edge)],
    cwd: new URL("../..", import.meta.url),
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout).trim();
  const stderr = new TextDecoder().decode(out.stderr).trim();
  assert(
    out.success,
    `_tensorflow_check ${what} failed (exit ${out.code}):\n${stderr.slice(-2000)}`,
  );
  return JSON.parse(stdout.split("\n").at(-1)!);
}

interface Cmp {
  globalRelErr: number;
  worstTensorRelErr: number;
  worstTensor: string;
}

Deno.test({
  name: `tensorflow matches cpu: reference network (479,955 weights) at 16³, reversible and ` +
    `standard gradients and dx, rel. L2 <= 1e-5${SKIP}`,
  ignore: !built,
  fn: async () => {
    const r = await check("grads");
    assertStringIncludes(String(r.device), "libtensorflow");
    // 2 methods × (loss + dx + 268 weights)
    assertEquals(r.count, 540);
    for (const method of ["reversible", "standard"]) {
      const c = r[method] as Cmp;
      assert(
        c.globalRelErr <= 1e-5,
        `${method}: rel. L2 ${c.globalRelErr} (worst ${c.worstTensor})`,
      );
      assert(c.worstTensorRelErr <= 1e-4, `${method}: ${c.worstTensor} ${c.worstTensorRelErr}`);
    }
    assertEquals(r.leaked, 0, "tensors left after the gradients were disposed");
    console.log(
      `tensorflow vs cpu gradients: rel. L2 ${
        (r.reversible as Cmp).globalRelErr.toExponential(2)
      } ` +
        `(reversible), ${(r.standard as Cmp).globalRelErr.toExponential(2)} (standard)`,
    );
  },
});

Deno.test({
  name: `tensorflow trains: two Adam and two SGD steps of the reference network at 16³ move ` +
    `the weights as cpu does${SKIP}`,
  ignore: !built,
  fn: async () => {
    const r = await check("train");
    console.log(`tensorflow vs cpu updates: ${JSON.stringify(r)}`.slice(0, 600));
    for (const kind of ["adam", "sgd"]) {
      const k = r[kind] as Cmp & {
        moved: number;
        cpuLosses: number[];
        tensorflowLosses: number[];
        leaked: number;
      };
      assert(k.moved > 0, `${kind}: the weights did not move`);
      // Rel. L2 of (weights after − before), tensorflow against cpu. Adam's looser bound: it
      // divides each gradient by its own root mean square, so where a gradient is near zero
      // (float32 noise apart) the update is a ratio of two tiny numbers.
      const bound = kind === "adam" ? 5e-3 : 1e-4;
      assert(
        k.globalRelErr <= bound,
        `${kind}: update differs by ${k.globalRelErr} (${k.worstTensor})`,
      );
      for (let i = 0; i < 2; i++) {
        const [a, b] = [k.tensorflowLosses[i], k.cpuLosses[i]];
        assert(
          Number.isFinite(a) && Math.abs(a - b) <= 1e-5 * Math.abs(b),
          `${kind} loss ${a} vs ${b}`,
        );
      }
      assertEquals(k.leaked, 0, `${kind}: tensors left by a training step`);
    }
  },
});

Deno.test("setupTensorflow says why the backend is unavailable, and builds nothing, without npm", async () => {
  const root = await Deno.makeTempDir();
  const saved = { path: Deno.env.get("PATH"), dir: Deno.env.get("REVUNET_TFJS_NODE_DIR") };
  try {
    Deno.env.set("REVUNET_TFJS_NODE_DIR", root);
    Deno.env.set("PATH", root); // no npm, pip or python here
    const r = await setupTensorflow();
    assertEquals(r.ok, false);
    assertStringIncludes(r.detail, "npm");
    assert(
      ![...Deno.readDirSync(root)].some((e) => e.name === "node_modules"),
      "a partial install was left",
    );
  } finally {
    Deno.env.set("PATH", saved.path ?? "");
    if (saved.dir === undefined) Deno.env.delete("REVUNET_TFJS_NODE_DIR");
    else Deno.env.set("REVUNET_TFJS_NODE_DIR", saved.dir);
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test({
  name: `setupTensorflow is idempotent: a second run finds the build and takes under 2 s${SKIP}`,
  ignore: !built,
  fn: async () => {
    const t0 = performance.now();
    const r = await setupTensorflow();
    const ms = performance.now() - t0;
    assert(r.ok, r.detail);
    assertStringIncludes(r.detail, "already built");
    assert(ms < 2000, `${ms} ms`);
  },
});

Deno.test("setupTensorflow links an npm-installed tfjs-node-gpu to the project's tfjs, building nothing", async () => {
  const root = await Deno.makeTempDir();
  const saved = Deno.env.get("REVUNET_TFJS_NODE_DIR");
  try {
    const gpu = `${root}/node_modules/@tensorflow/tfjs-node-gpu`;
    await Deno.mkdir(gpu, { recursive: true });
    await Deno.writeTextFile(`${gpu}/package.json`, '{"name":"@tensorflow/tfjs-node-gpu"}');
    // npm's own copy of tfjs-core, which the link must replace.
    await Deno.mkdir(`${root}/node_modules/@tensorflow/tfjs-core`, { recursive: true });
    Deno.env.set("REVUNET_TFJS_NODE_DIR", root);
    const r = await setupTensorflow();
    assert(r.ok, r.detail);
    assertStringIncludes(r.detail, "tfjs-node-gpu found");
    for (const name of ["tfjs", "tfjs-core"]) {
      const target = await Deno.readLink(`${root}/node_modules/@tensorflow/${name}`);
      assertStringIncludes(target, `node_modules/.deno/@tensorflow+${name}@4.22.0/`);
    }
    assert(
      !(await exists(`${root}/node_modules/@tensorflow/tfjs-node`)),
      "a CPU build was started",
    );
  } finally {
    if (saved === undefined) Deno.env.delete("REVUNET_TFJS_NODE_DIR");
    else Deno.env.set("REVUNET_TFJS_NODE_DIR", saved);
    await Deno.remove(root, { recursive: true });
  }
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}
