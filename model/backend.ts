/**
 * Choosing the TensorFlow.js backend the model runs on, and saying why.
 *
 * Order of preference for `"auto"`: libtensorflow through `@tensorflow/tfjs-node-gpu` when it sees
 * a CUDA device, then WebGPU on a hardware adapter, then tfjs's cpu backend with the project's
 * native kernels. `@tensorflow/tfjs-node` (libtensorflow on the CPU) is skipped by `"auto"`: it
 * measured slower per training step than the native cpu path (BENCHMARKS.md), but `"tensorflow"`
 * asked for by name uses it. A software WebGPU adapter (Mesa's llvmpipe or lavapipe, SwiftShader)
 * is skipped by `"auto"` because it is slower than the cpu backend (about 0.2 against 0.8 GFLOP/s
 * for conv3d on a 2-core machine), but `"webgpu"` asked for by name accepts one: that is how the
 * tests check the WebGPU kernels without a GPU.
 *
 * The optional backends are imported lazily, so that nothing needs them to type-check or test.
 * The libtensorflow bindings are loaded from `.cache/tfjs-node`, where `deno task setup` builds
 * tfjs-node (model/tensorflow.ts), or else by a computed specifier mapped in deno.json's imports;
 * the wasm one by a computed specifier only. The webgpu package is imported only when WebGPU is
 * tried, because importing it registers a backend whose priority is above cpu's, which would
 * change what an unconfigured `tf.ready()` picks.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { selectBackend } from "./backend.ts";
 *
 * const lines: string[] = []; // the command line prints them on standard error
 * const choice = await selectBackend("auto", (msg) => lines.push(msg));
 * assert(lines.at(-1)!.startsWith(`backend: using ${choice.name} on ${choice.device}`));
 * ```
 * @module
 */
import * as tf from "./tf.ts";
import { disableNativeKernels, enableNativeKernels, nativeRequested } from "./native/mod.ts";
import { disableWebGpuKernels, enableWebGpuKernels } from "./webgpu/kernels.ts";
import {
  loadTfjsNode,
  prepareTfjsNodeLoad,
  TENSORFLOW_PACKAGES,
  tfjsNodeRoot,
} from "./tensorflow.ts";

/** A backend that can be asked for; `"auto"` picks the fastest that works here. */
export type BackendName = "auto" | "tensorflow" | "webgpu" | "wasm" | "cpu";

/** Every {@linkcode BackendName}, in the order `"auto"` tries the concrete ones. */
export const BACKEND_NAMES: readonly BackendName[] = Object.freeze(
  ["auto", "tensorflow", "webgpu", "wasm", "cpu"] as const,
);

/** What {@linkcode selectBackend} made active. */
export interface BackendChoice {
  /** The tfjs backend now active (`tf.getBackend()`): "tensorflow", "webgpu", "wasm" or "cpu". */
  name: string;
  /** Why this one: what was asked for and, for `"auto"`, why the faster ones were skipped. */
  reason: string;
  /** The device in words, e.g. `"webgpu: llvmpipe (LLVM 15.0.6, 256 bits) (software)"`. */
  device: string;
}

const WASM_PACKAGE = "@tensorflow/tfjs-backend-wasm";

/** Adapter descriptions of WebGPU implementations that run on the CPU. */
const SOFTWARE_ADAPTER =
  /llvmpipe|lavapipe|softpipe|swiftshader|software|basic render driver|\bwarp\b/i;
/** Mesa's Vulkan vendor id (VK_VENDOR_ID_MESA, 0x10005), which its software drivers report. */
const MESA_VENDOR_IDS = new Set(["65541", "0x10005"]);

/**
 * Makes a tfjs backend active and returns what it is and why it was chosen.
 *
 * - `"auto"`: tfjs-node-gpu on a CUDA device, then a hardware WebGPU adapter, then cpu; every
 *   candidate skipped (tfjs-node always: slower than native cpu) is logged with its reason, and
 *   the reason returned names them all.
 * - `"tensorflow"`: tfjs-node-gpu or else tfjs-node; throws when neither loads.
 * - `"webgpu"`: any WebGPU adapter, software ones included; throws when there is none.
 * - `"wasm"`: `@tensorflow/tfjs-backend-wasm`, which the project does not map by default; throws
 *   naming the package when it cannot be imported.
 * - `"cpu"`: tfjs's JavaScript kernels, always available, with the native kernels of
 *   model/native (OpenBLAS sgemm, C depthwise conv3d and GroupNorm) on top unless the environment
 *   variable `REVUNET_NATIVE` is `0`; a part that cannot load is logged and left to tfjs.
 *
 * Also silences tfjs-backend-cpu's one-time "looks like you are running TensorFlow.js in Node.js"
 * banner, which Deno triggers because it defines `process`.
 *
 * @param requested The backend to use.
 * @param log Receives one line per decision (candidates skipped, the choice made).
 * @returns The active backend, the reason, and the device in words.
 * @throws {RangeError} When `requested` is not a {@linkcode BackendName}.
 * @throws {Error} When a backend asked for by name cannot be made active; the message says what is
 *   missing and how to get it.
 */
export async function selectBackend(
  requested: BackendName = "auto",
  log: (msg: string) => void = () => {},
): Promise<BackendChoice> {
  if (!(BACKEND_NAMES as readonly string[]).includes(requested)) {
    throw new RangeError(
      `Unknown backend "${requested}": expected one of ${BACKEND_NAMES.join(", ")}`,
    );
  }
  silenceCpuBanner();
  let choice: BackendChoice;
  switch (requested) {
    case "auto":
      choice = await selectAuto(log);
      break;
    case "tensorflow":
      choice = await useTensorflow(log);
      break;
    case "webgpu": {
      const probe = await probeWebGpu();
      if (!probe.ok) throw new Error(`Backend "webgpu" is not available: ${probe.why}`);
      choice = await useWebGpu(probe, "asked for webgpu");
      break;
    }
    case "wasm":
      choice = await useWasm();
      break;
    case "cpu":
      choice = await useCpu("asked for cpu", log);
      break;
  }
  log(`backend: using ${choice.name} on ${choice.device} (${choice.reason})`);
  return choice;
}

async function selectAuto(log: (msg: string) => void): Promise<BackendChoice> {
  const skipped: string[] = [];
  const skip = (what: string, why: string) => {
    skipped.push(`${what}: ${why}`);
    log(`backend: skipping ${what}: ${why}`);
  };
  // libtensorflow only when it runs on a CUDA GPU: on the CPU, tfjs-node measured 5× slower per
  // training step than the native cpu path (BENCHMARKS.md, "bench speed"), so "auto" skips it.
  try {
    const device = await activateTensorflow(TENSORFLOW_PACKAGES[0]);
    if (tf.getBackend() === "tensorflow" && device.includes("CUDA GPU")) {
      return { name: tf.getBackend(), reason: reasonAfter(skipped, `auto: ${device}`), device };
    }
    skip(TENSORFLOW_PACKAGES[0], "loaded, but no CUDA device is visible");
  } catch (e) {
    skip(TENSORFLOW_PACKAGES[0], oneLine(e));
  }
  skip(
    TENSORFLOW_PACKAGES[1],
    "libtensorflow on the CPU is slower than the native cpu path here (BENCHMARKS.md); ask for " +
      '"tensorflow" to use it',
  );
  const probe = await probeWebGpu();
  if (!probe.ok) {
    skip("webgpu", probe.why);
  } else if (probe.software) {
    skip(
      "webgpu",
      `only a software adapter (${probe.description}), slower than cpu; ask for "webgpu" to use it`,
    );
  } else {
    try {
      return await useWebGpu(probe, reasonAfter(skipped, "auto: a hardware WebGPU adapter"));
    } catch (e) {
      skip("webgpu", oneLine(e));
    }
  }
  return await useCpu(reasonAfter(skipped, "auto: cpu"), log);
}

function reasonAfter(skipped: string[], chosen: string): string {
  return skipped.length === 0 ? chosen : `${chosen}, because ${skipped.join("; ")}`;
}

// ---- tensorflow (libtensorflow through tfjs-node) -----------------------------------------------

async function useTensorflow(log: (msg: string) => void): Promise<BackendChoice> {
  const failures: string[] = [];
  for (const pkg of TENSORFLOW_PACKAGES) {
    try {
      const device = await activateTensorflow(pkg);
      const reason = failures.length === 0
        ? `asked for tensorflow: ${pkg}`
        : `asked for tensorflow: ${pkg}, because ${failures.join("; ")}`;
      return { name: tf.getBackend(), reason, device };
    } catch (e) {
      failures.push(`${pkg}: ${oneLine(e)}`);
      log(`backend: ${pkg} unavailable: ${oneLine(e)}`);
    }
  }
  const why = failures.join("; ");
  throw new Error(
    `Backend "tensorflow" is not available (${why}). \`deno task setup\` builds ` +
      `@tensorflow/tfjs-node in ${tfjsNodeRoot()} where pip reaches a tensorflow_cpu 2.21.0 ` +
      `wheel; @tensorflow/tfjs-node-gpu installed there by npm needs a CUDA GPU with CUDA 11.2 ` +
      `and cuDNN 8.1 (see README, "Backends")`,
  );
}

/** The libtensorflow binding this process loaded, if any. */
let tensorflowPackage: string | undefined;

/** Imports one libtensorflow binding and makes "tensorflow" active; returns the device. */
async function activateTensorflow(pkg: string): Promise<string> {
  if (tensorflowPackage !== undefined && tensorflowPackage !== pkg) {
    throw new Error(`not loaded: ${tensorflowPackage} already is (one binding per process)`);
  }
  if (tensorflowPackage === undefined) {
    try {
      await loadTfjsNode(pkg);
    } catch (local) {
      // Not built here: a binding mapped in deno.json's imports, if any, is the other way in.
      try {
        await prepareTfjsNodeLoad();
        await importOptional(pkg);
      } catch {
        throw local;
      }
    }
    tensorflowPackage = pkg;
  }
  // The binding registers "tensorflow" with the copy of tfjs-core it resolved; a different version
  // than the project's would register it somewhere this engine never looks.
  if (!tf.findBackendFactory("tensorflow")) {
    throw new Error(
      `${pkg} loaded but registered no "tensorflow" backend with this tfjs (${tf.version_core}); ` +
        `pin it to the same version`,
    );
  }
  if (!(await tf.setBackend("tensorflow"))) {
    throw new Error(`${pkg} loaded but its backend failed to initialize (see the warning above)`);
  }
  // Optional fields of tfjs-node's NodeJSKernelBackend, read defensively.
  const b = tf.backend() as unknown as {
    isUsingGpuDevice?: boolean;
    binding?: { TF_Version?: string };
  };
  const lib = b.binding?.TF_Version ? `libtensorflow ${b.binding.TF_Version}` : "libtensorflow";
  const where = b.isUsingGpuDevice === undefined
    ? ""
    : b.isUsingGpuDevice
    ? ", CUDA GPU"
    : ", CPU (no CUDA device visible)";
  return `tensorflow: ${lib} via ${pkg}${where}`;
}

// ---- webgpu -------------------------------------------------------------------------------------

/** The parts of the WebGPU API used here, so this file type-checks with or without its types. */
interface GpuAdapterInfoLike {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}
interface GpuAdapterLike {
  info?: GpuAdapterInfoLike;
  isFallbackAdapter?: boolean;
}
interface GpuLike {
  requestAdapter(options?: { powerPreference?: string }): Promise<GpuAdapterLike | null>;
}

type WebGpuProbe =
  | { ok: true; software: boolean; description: string }
  | { ok: false; why: string };

/**
 * Asks for the adapter tfjs's webgpu backend will ask for (same options) and says what it is.
 * Never throws.
 */
async function probeWebGpu(): Promise<WebGpuProbe> {
  const gpu = (globalThis.navigator as unknown as { gpu?: GpuLike } | undefined)?.gpu;
  if (!gpu) {
    return { ok: false, why: "navigator.gpu is missing (run Deno with --unstable-webgpu)" };
  }
  quietWaylandProbe();
  let adapter: GpuAdapterLike | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    return { ok: false, why: `requesting an adapter failed: ${oneLine(e)}` };
  }
  if (!adapter) {
    return {
      ok: false,
      why: "no WebGPU adapter found (no GPU driver; on Debian without a GPU, mesa-vulkan-drivers " +
        "gives the software llvmpipe adapter)",
    };
  }
  const info = adapter.info ?? {};
  const description = [info.description, info.vendor && `vendor ${info.vendor}`, info.architecture]
    .filter((s) => s).join(", ") || "unnamed adapter";
  const software = info.isFallbackAdapter === true || adapter.isFallbackAdapter === true ||
    SOFTWARE_ADAPTER.test(`${info.description ?? ""} ${info.device ?? ""}`) ||
    MESA_VENDOR_IDS.has((info.vendor ?? "").toLowerCase());
  return { ok: true, software, description };
}

/** Whether the webgpu backend runs on a software adapter (llvmpipe, SwiftShader, a fallback). */
let softwareAdapter = false;

/** Whether the active webgpu backend's adapter is a software one (false before any is chosen). */
export function webGpuAdapterIsSoftware(): boolean {
  return softwareAdapter;
}

/** Errors the WebGPU device reported that nothing caught, oldest first, since the last check. */
const webGpuErrors: string[] = [];
/** Devices already listened to. */
const watched = new WeakSet<object>();
/** Who hears of each WebGPU device error as it happens (the command line prints it). */
let webGpuErrorListener: ((message: string) => void) | undefined;

/**
 * Sets who hears of each error the WebGPU device reports, as it happens (the command line prints
 * `error: WebGPU: <message>`); `undefined` stops it. {@linkcode checkWebGpuErrors} throws them
 * either way.
 */
export function onWebGpuError(listener: ((message: string) => void) | undefined): void {
  webGpuErrorListener = listener;
}

/**
 * Throws when the WebGPU device has reported an error since the last call (and forgets them).
 * tfjs-webgpu never asks the device whether a dispatch was valid, and an invalid one writes
 * nothing, so a refused kernel would read back as zeros; the training step, the sliding window
 * and the command line call this so that such a run fails instead of going on with them.
 */
export function checkWebGpuErrors(): void {
  if (webGpuErrors.length === 0) return;
  const errors = webGpuErrors.splice(0);
  throw new Error(
    `the WebGPU device reported ${errors.length} error${errors.length === 1 ? "" : "s"}, so ` +
      `results computed since are wrong; the first: ${errors[0]}`,
  );
}

/** Records the uncaptured errors of the webgpu backend's device (once per device). */
function watchWebGpuErrors(): void {
  const device = (tf.backend() as unknown as { device?: EventTarget }).device;
  if (!device || watched.has(device) || typeof device.addEventListener !== "function") return;
  watched.add(device);
  device.addEventListener("uncapturederror", (event) => {
    const error = (event as Event & { error?: { message?: string } }).error;
    const message = error?.message?.trim() || "an error without a message";
    webGpuErrors.push(message);
    webGpuErrorListener?.(message);
  });
}

async function useWebGpu(
  probe: { software: boolean; description: string },
  reason: string,
): Promise<BackendChoice> {
  await import("@tensorflow/tfjs-backend-webgpu");
  if (!tf.findBackendFactory("webgpu")) {
    throw new Error(
      `Backend "webgpu": @tensorflow/tfjs-backend-webgpu registered no backend (it found no ` +
        `navigator.gpu when first imported)`,
    );
  }
  if (!(await tf.setBackend("webgpu"))) {
    throw new Error(
      `Backend "webgpu": tfjs could not initialize it on ${probe.description} (see the warning above)`,
    );
  }
  watchWebGpuErrors();
  softwareAdapter = probe.software;
  const kind = probe.software ? "software" : "hardware";
  // The project's WGSL kernels, unless REVUNET_NATIVE=0 asks for tfjs's own kernels only.
  const own = nativeRequested();
  if (own) enableWebGpuKernels();
  else disableWebGpuKernels();
  const kernels = own ? ", WGSL depthwise conv3d and GroupNorm" : ", tfjs kernels only";
  return {
    name: tf.getBackend(),
    reason,
    device: `webgpu: ${probe.description} (${kind})${kernels}`,
  };
}

/**
 * Requesting an adapter makes the Vulkan drivers look for a Wayland display, and libwayland prints
 * "error: XDG_RUNTIME_DIR is invalid or not set in the environment." twice when that variable is
 * unset (as under CI and in containers), although compute needs no display. Pointing it at the
 * temporary directory silences that; nothing is written there.
 */
function quietWaylandProbe(): void {
  try {
    if (Deno.build.os === "linux" && !Deno.env.get("XDG_RUNTIME_DIR")) {
      Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("TMPDIR") || "/tmp");
    }
  } catch {
    // No env permission: the messages are cosmetic.
  }
}

// ---- wasm and cpu -------------------------------------------------------------------------------

async function useWasm(): Promise<BackendChoice> {
  try {
    await importOptional(WASM_PACKAGE);
  } catch (e) {
    throw new Error(
      `Backend "wasm" is not available: ${oneLine(e)}; add ` +
        `"${WASM_PACKAGE}": "npm:${WASM_PACKAGE}@${tf.version_core}" to deno.json's imports`,
    );
  }
  if (!(await tf.setBackend("wasm"))) {
    throw new Error(
      `Backend "wasm": ${WASM_PACKAGE} loaded but failed to initialize (see the warning above; ` +
        `its .wasm files may need setWasmPaths)`,
    );
  }
  const simd = await flag("WASM_HAS_SIMD_SUPPORT");
  const threads = await flag("WASM_HAS_MULTITHREAD_SUPPORT");
  return {
    name: tf.getBackend(),
    reason: "asked for wasm",
    device: `wasm (SIMD ${simd ? "on" : "off"}, threads ${threads ? "on" : "off"})`,
  };
}

async function useCpu(reason: string, log: (msg: string) => void): Promise<BackendChoice> {
  if (!(await tf.setBackend("cpu"))) {
    throw new Error(`Backend "cpu" failed to initialize (see the warning above)`);
  }
  const cores = globalThis.navigator?.hardwareConcurrency;
  const here = cores ? ` (${cores} cores here)` : "";
  if (!nativeRequested()) {
    disableNativeKernels();
    log("backend: native cpu kernels off (REVUNET_NATIVE=0)");
    return {
      name: tf.getBackend(),
      reason,
      device: `cpu: tfjs JavaScript kernels, 1 thread${here}`,
    };
  }
  const native = enableNativeKernels({ log: (m) => log(`backend: ${m}`) });
  const parts = [
    ...(native.matMul ? ["OpenBLAS sgemm"] : []),
    ...(native.layers ? ["native depthwise conv3d and GroupNorm"] : []),
  ];
  const device = parts.length === 0
    ? `cpu: tfjs JavaScript kernels, 1 thread${here}`
    : `cpu: tfjs JavaScript kernels with ${parts.join(" and ")} on ${native.threads} ` +
      `thread${native.threads === 1 ? "" : "s"}${here}`;
  return { name: tf.getBackend(), reason, device };
}

/**
 * tfjs-backend-cpu prints a banner recommending tfjs-node on its first tensor write whenever tfjs
 * thinks it runs in Node.js, which includes Deno. Marking the instance as used skips it; the
 * backend is created here if it was not yet (cheap), so the banner stays away even when cpu is
 * first used later.
 */
function silenceCpuBanner(): void {
  const cpu = tf.findBackend("cpu") as unknown as { firstUse?: boolean } | null;
  if (cpu && "firstUse" in cpu) cpu.firstUse = false;
}

// ---- helpers ------------------------------------------------------------------------------------

/**
 * Imports an optional package by a computed bare specifier: Deno's type checker and module graph
 * never see it, and an unmapped name fails at once instead of installing anything.
 */
async function importOptional(pkg: string): Promise<unknown> {
  try {
    return await import(pkg);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ERR_MODULE_NOT_FOUND" && oneLine(e).includes(`"${pkg}"`)) {
      throw new Error("not installed (not in deno.json's imports)");
    }
    throw e;
  }
}

async function flag(name: string): Promise<boolean> {
  try {
    return Boolean(await tf.env().getAsync(name));
  } catch {
    return false;
  }
}

/** The first line of an error's message, at most 240 characters. */
function oneLine(e: unknown): string {
  const text = (e instanceof Error ? e.message : String(e)).split("\n")[0].trim();
  return text.length > 240 ? `${text.slice(0, 237)}...` : text;
}
