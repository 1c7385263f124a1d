/**
 * The optional Debian packages the project uses when they are present, installed with apt-get
 * when run as root.
 *
 * None is required to run the pipeline; each adds something: python3-nibabel an independent NIfTI
 * reader for cross-checks, mricron-data a real skull-stripped brain for synthetic cases,
 * mesa-vulkan-drivers a software Vulkan adapter so the WebGPU backend can be tested without a GPU,
 * gcc and OpenBLAS the native CPU kernels; PyTorch is the speed benchmark's peer.
 * @module
 */

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

/** Options of {@linkcode installPackages}. */
export interface InstallOptions {
  /** Hide apt-get's output; a failed command's last lines go to `log`. @default false */
  quiet?: boolean;
  /** What is installed, skipped or failed, one message each. */
  log?: (message: string) => void;
}

/** What {@linkcode installPackages} found and left. */
export interface InstallOutcome {
  /** Every package asked for was installed already: nothing was done. */
  allInstalled: boolean;
  /** The packages still missing afterwards. */
  missing: string[];
}

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

async function run(
  cmd: string,
  args: string[],
  quiet: boolean,
  log: (message: string) => void,
): Promise<boolean> {
  const out = await new Deno.Command(cmd, {
    args,
    stdout: quiet ? "null" : "inherit",
    stderr: quiet ? "piped" : "inherit",
    env: { DEBIAN_FRONTEND: "noninteractive" },
  }).output();
  if (!out.success && quiet) {
    log(new TextDecoder().decode(out.stderr).trim().split("\n").slice(-5).join("\n"));
  }
  return out.success;
}

/** The optional packages, with PyTorch when `peer`. */
export function optionalPackages(peer = false): string[] {
  return [...Object.keys(SYSTEM_PACKAGES), ...(peer ? Object.keys(PEER_PACKAGES) : [])];
}

/** Installs those of `packages` that are missing; says which are still missing afterwards. */
export async function installPackages(
  packages: string[],
  options: InstallOptions = {},
): Promise<InstallOutcome> {
  const { quiet = false, log = () => {} } = options;
  const missing: string[] = [];
  for (const pkg of packages) {
    if (!(await installed(pkg))) missing.push(pkg);
  }
  if (missing.length === 0) return { allInstalled: true, missing: [] };
  const isRoot = Deno.uid?.() === 0;
  const hasApt = await run("sh", ["-c", "command -v apt-get"], true, log).catch(() => false);
  if (!isRoot || !hasApt) {
    log(
      `setup: not installing ${missing.join(", ")} (needs root and apt-get); ` +
        "the features that use them are skipped",
    );
    return { allInstalled: false, missing };
  }
  log(`setup: installing ${missing.join(", ")} with apt-get`);
  const ok = (await run("apt-get", ["update", "-qq"], quiet, log)) &&
    (await run(
      "apt-get",
      ["install", "-y", "-qq", "--no-install-recommends", ...missing],
      quiet,
      log,
    ));
  if (!ok) log("setup: apt-get failed; the features that use these packages are skipped");
  const still: string[] = [];
  for (const pkg of missing) if (!(await installed(pkg))) still.push(pkg);
  return { allInstalled: false, missing: still };
}
