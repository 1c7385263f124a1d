/**
 * `setup`: installs the optional system packages the project uses when they are present.
 *
 * None is required to run the pipeline; each adds something: python3-nibabel an independent NIfTI
 * reader for cross-checks, mricron-data a real skull-stripped brain for synthetic cases,
 * mesa-vulkan-drivers a software Vulkan adapter so the WebGPU backend can be tested without a GPU,
 * gcc and OpenBLAS the native CPU kernels. `--peer` adds PyTorch, the speed benchmark's peer.
 * Then it builds the `--backend tensorflow` binding (tfjs-node) where pip reaches a
 * `tensorflow_cpu` wheel (tasks/setup_tensorflow.ts), or says once that it is unavailable.
 * Installing needs root and apt-get; elsewhere the command says what it would install and succeeds.
 * @module
 */
import { type Command, parseFlags } from "./_cli.ts";
import { setupTensorflow } from "./setup_tensorflow.ts";

/** Debian packages and why each is wanted. */
export const SYSTEM_PACKAGES: Record<string, string> = {
  "python3-nibabel": "independent NIfTI reader for cross-checks in the tests",
  "mricron-data": "real skull-stripped brain (ch2bet) for synthetic BraTS cases",
  "mesa-vulkan-drivers": "software Vulkan adapter for the WebGPU backend without a GPU",
  "gcc": "compiles the native CPU kernels (model/native) on first use",
  "libopenblas0-pthread": "OpenBLAS sgemm for the pointwise convolutions on the cpu backend",
};

/** Packages only the speed benchmark's PyTorch peer needs (`setup --peer`, `bench speed`). */
export const PEER_PACKAGES: Record<string, string> = {
  "python3-torch": "PyTorch on CPU, the peer that `bench speed` measures against",
};

async function installed(pkg: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("dpkg-query", {
      args: ["-W", "-f=${Status}", pkg],
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success && new TextDecoder().decode(out.stdout).includes("install ok installed");
  } catch {
    return false;
  }
}

async function run(cmd: string, args: string[], quiet: boolean): Promise<boolean> {
  const out = await new Deno.Command(cmd, {
    args,
    stdout: quiet ? "null" : "inherit",
    stderr: quiet ? "piped" : "inherit",
    env: { DEBIAN_FRONTEND: "noninteractive" },
  }).output();
  if (!out.success && quiet) {
    console.error(new TextDecoder().decode(out.stderr).trim().split("\n").slice(-5).join("\n"));
  }
  return out.success;
}

/** Installs the missing optional packages; returns the ones still missing afterwards. */
export function setup(quiet = false, peer = false): Promise<string[]> {
  return installPackages(
    [...Object.keys(SYSTEM_PACKAGES), ...(peer ? Object.keys(PEER_PACKAGES) : [])],
    quiet,
  );
}

/** Installs those of `packages` that are missing; returns the ones still missing afterwards. */
export async function installPackages(packages: string[], quiet = false): Promise<string[]> {
  const missing: string[] = [];
  for (const pkg of packages) {
    if (!(await installed(pkg))) missing.push(pkg);
  }
  if (missing.length === 0) {
    if (!quiet) console.log("setup: all optional system packages are installed");
    return [];
  }
  const isRoot = Deno.uid?.() === 0;
  const hasApt = await run("sh", ["-c", "command -v apt-get"], true).catch(() => false);
  if (!isRoot || !hasApt) {
    console.error(
      `setup: not installing ${missing.join(", ")} (needs root and apt-get); ` +
        "the features that use them are skipped",
    );
    return missing;
  }
  console.error(`setup: installing ${missing.join(", ")} with apt-get`);
  const ok = (await run("apt-get", ["update", "-qq"], quiet)) &&
    (await run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...missing], quiet));
  if (!ok) console.error("setup: apt-get failed; the features that use these packages are skipped");
  const still: string[] = [];
  for (const pkg of missing) if (!(await installed(pkg))) still.push(pkg);
  return still;
}

export const setupCommand: Command = {
  name: "setup",
  summary:
    "Install optional system packages; build the tensorflow backend where a wheel is at hand",
  help: `Usage: deno task setup [--quiet] [--peer]

Installs, with apt-get when run as root, the optional Debian packages the project uses:
${Object.entries(SYSTEM_PACKAGES).map(([p, why]) => `  ${p.padEnd(20)} ${why}`).join("\n")}
With --peer also:
${Object.entries(PEER_PACKAGES).map(([p, why]) => `  ${p.padEnd(20)} ${why}`).join("\n")}
Then, where pip reaches a tensorflow_cpu 2.21.0 wheel, builds the --backend tensorflow binding
(@tensorflow/tfjs-node 4.22.0 in .cache/tfjs-node, about a minute the first time, under a
second after). Nothing is required: without them the pipeline runs (on slower kernels) and the
tests that need them are skipped.

Options:
  --quiet   print only what is installed or fails
  --peer    also install PyTorch for the speed benchmark's peer run

Example:
  deno task setup`,
  async run(args) {
    const { values } = parseFlags("setup", args, {
      quiet: { type: "boolean" },
      peer: { type: "boolean" },
    });
    const quiet = values.quiet ?? false;
    await setup(quiet, values.peer ?? false);
    const tfSetup = await setupTensorflow(quiet ? () => {} : (m) => console.error(m));
    if (!tfSetup.ok) {
      console.error(
        `setup: the tensorflow backend (--backend tensorflow) is unavailable: ${tfSetup.detail}; ` +
          "everything else works as before",
      );
    } else if (!quiet || !tfSetup.detail.startsWith("already")) {
      console.error(`setup: tensorflow backend ready (tfjs-node ${tfSetup.detail})`);
    }
  },
};
