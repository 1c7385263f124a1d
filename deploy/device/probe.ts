/**
 * What WebGPU adapter Deno sees, for deploy/device/run.sh: one JSON line on stdout.
 *
 * First the raw adapter (navigator.gpu.requestAdapter, as model/backend.ts asks for it: info,
 * a few limits, whether it is a fallback adapter), which needs nothing from npm; then, unless
 * `--raw` is given, the project's own choice, selectBackend("webgpu") from model/backend.ts (tfjs
 * and its webgpu package, with the WGSL kernels), and one small op on it read back
 * asynchronously. Each part is caught separately, so the line says how far it got.
 *
 *     deno run -A --unstable-webgpu deploy/device/probe.ts [--raw]
 * @module
 */

interface AdapterInfoLike {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}
interface AdapterLike {
  info?: AdapterInfoLike;
  isFallbackAdapter?: boolean;
  limits?: Record<string, number>;
  features?: Iterable<string>;
}
interface GpuLike {
  requestAdapter(options?: { powerPreference?: string }): Promise<AdapterLike | null>;
}

const LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
];

function message(e: unknown): string {
  return e instanceof Error ? e.message.split("\n")[0] : String(e);
}

async function rawAdapter(): Promise<Record<string, unknown>> {
  const gpu = (globalThis.navigator as unknown as { gpu?: GpuLike } | undefined)?.gpu;
  if (!gpu) return { ok: false, why: "navigator.gpu is missing (run with --unstable-webgpu)" };
  if (Deno.build.os === "linux" && !Deno.env.get("XDG_RUNTIME_DIR")) {
    Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("TMPDIR") || "/tmp");
  }
  let adapter: AdapterLike | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    return { ok: false, why: `requestAdapter threw: ${message(e)}` };
  }
  if (!adapter) return { ok: false, why: "requestAdapter returned null (no Vulkan driver found)" };
  const info = adapter.info ?? {};
  const limits: Record<string, number> = {};
  for (const name of LIMITS) {
    const v = adapter.limits?.[name];
    if (typeof v === "number") limits[name] = v;
  }
  return {
    ok: true,
    vendor: info.vendor ?? null,
    architecture: info.architecture ?? null,
    device: info.device ?? null,
    description: info.description ?? null,
    fallback: info.isFallbackAdapter ?? adapter.isFallbackAdapter ?? null,
    features: adapter.features ? [...adapter.features].sort() : [],
    limits,
  };
}

async function projectChoice(): Promise<Record<string, unknown>> {
  try {
    const { selectBackend } = await import("../../model/backend.ts");
    const tf = await import("../../model/tf.ts");
    const choice = await selectBackend("webgpu");
    const sum = tf.tidy(() => tf.sum(tf.mul(tf.range(0, 1000, 1, "float32"), 2)));
    const value = (await sum.data())[0];
    sum.dispose();
    return {
      ok: true,
      name: choice.name,
      device: choice.device,
      reason: choice.reason,
      // 2·(0 + 1 + ... + 999) = 999000: the op ran and read back.
      check: { op: "sum(2·range(1000))", value, expected: 999000, ok: value === 999000 },
    };
  } catch (e) {
    return { ok: false, why: message(e) };
  }
}

if (import.meta.main) {
  const started = performance.now();
  const adapter = await rawAdapter();
  const project = Deno.args.includes("--raw") ? null : await projectChoice();
  console.log(JSON.stringify({
    deno: Deno.version.deno,
    adapter,
    project,
    seconds: Number(((performance.now() - started) / 1000).toFixed(3)),
  }));
}
