/**
 * The `setup` step that makes the `--backend tensorflow` (tfjs-node) backend available where a
 * CPU libtensorflow can be had without its download: from the `tensorflow_cpu` wheel of a Python
 * package index that `pip` reaches (these machines have a local one).
 *
 * Steps, each skipped when its result is there: install `@tensorflow/tfjs-node` with npm, install
 * scripts off, into `.cache/tfjs-node` (see model/tensorflow.ts); `pip download` the wheel; unpack
 * `libtensorflow_cc.so.2`, `libtensorflow_framework.so.2` and the C API headers into the package's
 * `deps/`, with the `libtensorflow.so*` names its addon links against; build the addon from source
 * with node-pre-gyp against the system's Node headers; link its `@tensorflow/tfjs(-core)` to the
 * project's copies. A stamp file records a finished build, so a second run takes well under a
 * second. Where any step cannot run, one line says the tensorflow backend is unavailable and why;
 * nothing else depends on it.
 * @module
 */
import { TFJS_NODE_VERSION, tfjsNodePackageDir, tfjsNodeRoot } from "../../../model/tensorflow.ts";

/** The wheel whose libtensorflow the binding is built against. */
export const TENSORFLOW_WHEEL = { name: "tensorflow_cpu", version: "2.21.0" } as const;

/** What the wheel contributes, by path inside it. */
const LIBS = ["libtensorflow_cc.so.2", "libtensorflow_framework.so.2"];
const HEADER_DIRS = ["tensorflow/c/", "tensorflow/core/platform/", "tsl/", "xla/tsl/"];

/** The packages that must be the project's own instances, not tfjs-node's copies. */
const SHARED_TFJS = ["tfjs", "tfjs-core"];

/** The outcome of {@linkcode setupTensorflow}. */
export interface TensorflowSetup {
  ok: boolean;
  /** What was done or found, or why the backend is unavailable. */
  detail: string;
}

const STAMP = ".revunet-built";

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

async function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
): Promise<{ ok: boolean; tail: string }> {
  try {
    const out = await new Deno.Command(cmd, {
      args,
      cwd: opts.cwd,
      env: opts.env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    const lines = text.trim().split("\n").filter((l) => /err|fail|not found|no such/i.test(l));
    return { ok: out.success, tail: lines.slice(-3).join(" | ") || text.trim().slice(-300) };
  } catch (e) {
    return { ok: false, tail: `${cmd}: ${(e as Error).message}` };
  }
}

/** The project's copy of a tfjs package in Deno's node_modules, or undefined when missing. */
function projectCopy(name: string): string | undefined {
  const root = decodeURIComponent(
    new URL("../../../node_modules/.deno/", import.meta.url).pathname,
  );
  const dir = `${root}@tensorflow+${name}@${TFJS_NODE_VERSION}/node_modules/@tensorflow/${name}`;
  return exists(`${dir}/package.json`) ? dir : undefined;
}

/**
 * Points `@tensorflow/tfjs` and `@tensorflow/tfjs-core` under the binding's folder at the
 * project's copies (idempotent). Returns an error message, or undefined when done.
 */
export function linkProjectTfjs(root = tfjsNodeRoot()): string | undefined {
  for (const name of SHARED_TFJS) {
    const target = projectCopy(name);
    if (!target) {
      return `the project's @tensorflow/${name}@${TFJS_NODE_VERSION} is not in node_modules/.deno ` +
        `(run a deno task once so that Deno installs it)`;
    }
    const link = `${root}/node_modules/@tensorflow/${name}`;
    try {
      if (exists(link) && Deno.readLinkSync(link) === target) continue;
    } catch {
      // Not a link: npm's own copy, replaced below.
    }
    if (exists(link)) Deno.removeSync(link, { recursive: true });
    Deno.symlinkSync(target, link);
  }
  return undefined;
}

/** Python that can read the wheel (the one pip runs on). */
async function python(): Promise<string | undefined> {
  for (const p of ["python3", "python"]) {
    if ((await run(p, ["-c", "import zipfile"])).ok) return p;
  }
  return undefined;
}

/** A step's failure: why the backend is unavailable. */
type Failure = string | undefined;

/** Installs `@tensorflow/tfjs-node` with npm, scripts off, into `root` (when not there yet). */
async function installTfjsNode(
  root: string,
  pkgDir: string,
  log: (msg: string) => void,
): Promise<Failure> {
  if (exists(`${pkgDir}/package.json`)) return undefined;
  Deno.mkdirSync(root, { recursive: true });
  if (!exists(`${root}/package.json`)) {
    Deno.writeTextFileSync(
      `${root}/package.json`,
      JSON.stringify({ private: true, description: "revunet: tfjs-node, built by setup" }) + "\n",
    );
  }
  log(`setup: installing @tensorflow/tfjs-node@${TFJS_NODE_VERSION} into ${root} (no scripts)`);
  const npm = await run("npm", [
    "install",
    "--ignore-scripts",
    "--no-audit",
    "--no-fund",
    "--no-save",
    `@tensorflow/tfjs-node@${TFJS_NODE_VERSION}`,
  ], { cwd: root });
  return npm.ok ? undefined : `npm install of @tensorflow/tfjs-node failed: ${npm.tail}`;
}

/** Unpacks only the two libraries and the C API headers: the wheel unpacks to over 1 GB. */
const UNPACK_SCRIPT = `
import os, sys, zipfile
whl, deps, libs, heads = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(",")
with zipfile.ZipFile(whl) as z:
    for m in z.namelist():
        if not m.startswith("tensorflow/") or m.endswith("/"): continue
        rel = m[len("tensorflow/"):]
        if rel in libs: dest = os.path.join(deps, "lib", rel)
        elif rel.startswith("include/") and any(rel[8:].startswith(h) for h in heads):
            dest = os.path.join(deps, rel)
        else: continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(m) as src, open(dest + ".part", "wb") as out:
            while True:
                b = src.read(1 << 22)
                if not b: break
                out.write(b)
        os.replace(dest + ".part", dest)
`;

/**
 * Fetches the wheel with pip and unpacks its libtensorflow into `deps` with the names the addon
 * links against (when not there yet).
 */
async function unpackWheel(
  root: string,
  deps: string,
  log: (msg: string) => void,
): Promise<Failure> {
  if (exists(`${deps}/lib/libtensorflow_cc.so.2`)) return undefined;
  const wheelDir = `${root}/wheel`;
  const spec = `${TENSORFLOW_WHEEL.name}==${TENSORFLOW_WHEEL.version}`;
  log(`setup: fetching ${spec} from the Python package index pip is configured with`);
  const pip = await run("pip", ["download", "--no-deps", "-q", spec, "-d", wheelDir]);
  const wheels = exists(wheelDir)
    ? [...Deno.readDirSync(wheelDir)].map((e) => e.name).filter((n) =>
      n.startsWith(`${TENSORFLOW_WHEEL.name}-${TENSORFLOW_WHEEL.version}-`) && n.endsWith(".whl")
    )
    : [];
  if (!pip.ok || wheels.length === 0) {
    return `no ${spec} wheel from pip (${pip.tail || "no wheel"})`;
  }
  const py = await python();
  if (!py) return "no python3 to unpack the wheel with";
  const unpack = await run(py, [
    "-c",
    UNPACK_SCRIPT,
    `${wheelDir}/${wheels[0]}`,
    deps,
    LIBS.join(","),
    HEADER_DIRS.join(","),
  ]);
  if (!unpack.ok) return `unpacking ${wheels[0]} failed: ${unpack.tail}`;
  Deno.removeSync(wheelDir, { recursive: true });
  // The addon links -ltensorflow and -ltensorflow_framework; the wheel's C API library is
  // libtensorflow_cc (its SONAME, which the addon records, is libtensorflow_cc.so.2).
  for (
    const [name, target] of [
      ["libtensorflow.so.2", "libtensorflow_cc.so.2"],
      ["libtensorflow.so", "libtensorflow.so.2"],
      ["libtensorflow_framework.so", "libtensorflow_framework.so.2"],
    ]
  ) {
    const link = `${deps}/lib/${name}`;
    if (exists(link)) Deno.removeSync(link);
    Deno.symlinkSync(target, link);
  }
  return undefined;
}

/** Builds the addon from source with node-pre-gyp against the system's Node headers. */
async function buildAddon(
  root: string,
  pkgDir: string,
  log: (msg: string) => void,
): Promise<Failure> {
  log("setup: building the tfjs-node addon against it (node-pre-gyp, from source)");
  const env: Record<string, string> = {};
  // node-gyp would download Node's headers; Debian's nodejs ships them under /usr/include/node.
  if (exists("/usr/include/node/node_api.h")) env.npm_config_nodedir = "/usr";
  const preGyp = `${root}/node_modules/.bin/node-pre-gyp`;
  const build = await run(preGyp, ["install", "--build-from-source"], { cwd: pkgDir, env });
  return build.ok ? undefined : `building the tfjs-node addon failed: ${build.tail}`;
}

/**
 * Builds the tfjs-node binding against the local libtensorflow wheel (see the module doc).
 *
 * @param log Receives a line per step done (not for steps skipped as already done).
 * @returns Whether the backend is ready, and what was done or why not.
 */
export async function setupTensorflow(log: (msg: string) => void = () => {}): Promise<
  TensorflowSetup
> {
  const root = tfjsNodeRoot();
  const pkgDir = tfjsNodePackageDir("@tensorflow/tfjs-node");
  const stamp = `${pkgDir}/${STAMP}`;
  const unavailable = (why: string): TensorflowSetup => ({ ok: false, detail: why });
  // tfjs-node-gpu, installed by hand with npm on a CUDA machine (README, "Backends"), downloads
  // its own libtensorflow: it needs only the links, and no CPU build (one binding per process).
  if (exists(`${tfjsNodePackageDir("@tensorflow/tfjs-node-gpu")}/package.json`)) {
    const err = linkProjectTfjs(root);
    return err ? unavailable(err) : {
      ok: true,
      detail: `@tensorflow/tfjs-node-gpu found in ${root}, linked to the project's tfjs`,
    };
  }
  if (exists(stamp)) {
    const err = linkProjectTfjs(root);
    return err ? unavailable(err) : { ok: true, detail: `already built in ${root}` };
  }
  const started = performance.now();
  const failure = (await installTfjsNode(root, pkgDir, log)) ??
    (await unpackWheel(root, `${pkgDir}/deps`, log)) ??
    (await buildAddon(root, pkgDir, log)) ??
    linkProjectTfjs(root);
  if (failure) return unavailable(failure);
  Deno.writeTextFileSync(stamp, `${TENSORFLOW_WHEEL.name}-${TENSORFLOW_WHEEL.version}\n`);
  const s = ((performance.now() - started) / 1000).toFixed(0);
  return {
    ok: true,
    detail: `built against ${TENSORFLOW_WHEEL.name} ${TENSORFLOW_WHEEL.version} in ${s} s`,
  };
}
