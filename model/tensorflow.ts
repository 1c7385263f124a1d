/**
 * Loading `@tensorflow/tfjs-node` (libtensorflow on the CPU) or `@tensorflow/tfjs-node-gpu` (CUDA)
 * into Deno, for the `"tensorflow"` backend of {@link ./backend.ts}.
 *
 * Neither package is in deno.json's imports: their install script downloads libtensorflow, which
 * these machines cannot, and mapping them would put their dependencies in every lockfile.
 * Instead `deno task setup` installs tfjs-node with npm, scripts off, into the project-local
 * folder {@linkcode tfjsNodeRoot} (`.cache/tfjs-node`), puts a libtensorflow taken from a local
 * Python wheel under its `deps/`, builds its addon from source, and links its `@tensorflow/tfjs`
 * and `@tensorflow/tfjs-core` to the copies Deno resolved for the project. That last step is what
 * makes it work: the binding registers its backend and kernels with the tfjs-core it requires,
 * and only with the project's own instance does `tf.setBackend("tensorflow")` find them.
 *
 * The package is loaded with `require` (it is CommonJS outside Deno's npm resolution) and only
 * when the tensorflow backend is asked for, so nothing else pays its second of start-up or its
 * 800 MB of mapped library.
 * @module
 */
import * as tf from "./tf.ts";
import { envVar } from "./env.ts";

/** The libtensorflow bindings, GPU build first; both register the tfjs backend "tensorflow". */
export const TENSORFLOW_PACKAGES = ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node"] as const;

/** The version of tfjs-node set-up installs: the same as the project's tfjs. */
export const TFJS_NODE_VERSION = "4.22.0";

/**
 * The folder whose `node_modules/` holds tfjs-node(-gpu): `REVUNET_TFJS_NODE_DIR` when set, else
 * `.cache/tfjs-node` in the project.
 */
export function tfjsNodeRoot(): string {
  const fromEnv = envVar("REVUNET_TFJS_NODE_DIR");
  if (fromEnv) return fromEnv.replace(/\/+$/, "");
  return decodeURIComponent(new URL("../.cache/tfjs-node", import.meta.url).pathname);
}

/** The folder of one binding package under {@linkcode tfjsNodeRoot}. */
export function tfjsNodePackageDir(pkg: string): string {
  return `${tfjsNodeRoot()}/node_modules/${pkg}`;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Requires one binding package from {@linkcode tfjsNodeRoot} and checks that it registered its
 * backend with the project's tfjs.
 *
 * @throws {Error} When the package is not there (the message says to run `deno task setup`), its
 *   addon was not built, libtensorflow fails to load, or it resolved another copy of tfjs.
 */
export async function loadTfjsNode(pkg: string): Promise<void> {
  const dir = tfjsNodePackageDir(pkg);
  if (!exists(`${dir}/package.json`)) {
    throw new Error(`not installed in ${tfjsNodeRoot()} (deno task setup builds tfjs-node there)`);
  }
  await prepareTfjsNodeLoad();
  const { createRequire } = await import("node:module");
  const required = createRequire(import.meta.url)(dir) as { engine?: () => unknown };
  if (required.engine?.() !== tf.engine()) {
    throw new Error(
      `${pkg} in ${tfjsNodeRoot()} uses another copy of @tensorflow/tfjs than the project's; ` +
        `run deno task setup again to relink it`,
    );
  }
}

/**
 * What any way of loading a binding needs first: refuses when Mesa's LLVM is mapped (libtensorflow
 * crashes after it), polyfills `util.isNullOrUndefined` and quiets libtensorflow's start-up log.
 *
 * @throws {Error} When an LLVM library is already mapped into this process.
 */
export async function prepareTfjsNodeLoad(): Promise<void> {
  const llvm = loadedLlvm();
  if (llvm) {
    // Seen here: a segmentation fault inside libtensorflow's start-up once Mesa's Vulkan driver
    // (which WebGPU loads on request of an adapter) has mapped its LLVM; the other order works.
    throw new Error(
      `not loaded: this process already mapped ${llvm} (Mesa's Vulkan driver, loaded when a ` +
        `WebGPU adapter was requested), and libtensorflow crashes when loaded after it; load ` +
        `the tensorflow backend first, or in its own process`,
    );
  }
  const { default: util } = await import("node:util");
  // tfjs-node calls util.isNullOrUndefined, which Node deprecated and Deno's node:util lacks.
  const u = util as unknown as Record<string, unknown>;
  if (typeof u.isNullOrUndefined !== "function") {
    u.isNullOrUndefined = (v: unknown) => v === null || v === undefined;
  }
  // libtensorflow logs oneDNN and CPU-feature notices at start-up unless told otherwise.
  if (envVar("TF_CPP_MIN_LOG_LEVEL") === undefined) {
    try {
      Deno.env.set("TF_CPP_MIN_LOG_LEVEL", "2");
    } catch {
      // No env permission: the notices are cosmetic.
    }
  }
}

/** The file name of an LLVM library this process has mapped (Linux), or undefined. */
export function loadedLlvm(): string | undefined {
  let maps: string;
  try {
    maps = Deno.readTextFileSync("/proc/self/maps");
  } catch {
    return undefined; // not Linux, or no read permission: nothing to tell
  }
  return maps.match(/\/(libLLVM[^\s/]*\.so[^\s/]*)\s*$/m)?.[1];
}
