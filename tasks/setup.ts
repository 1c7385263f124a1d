/**
 * `setup`: the optional system packages and the `--backend tensorflow` binding, installed by
 * pipeline/training/environment (root and apt-get; elsewhere it says what it would install).
 * @module
 */
import {
  installPackages,
  optionalPackages,
  PEER_PACKAGES,
  setupTensorflow,
  SYSTEM_PACKAGES,
} from "../pipeline/training/mod.ts";
import { defineCommand } from "./_cli.ts";

export const setupCommand = defineCommand({
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
  async run(flags) {
    const quiet = flags.bool("quiet");
    const packages = await installPackages(optionalPackages(flags.bool("peer")), {
      quiet,
      log: (m) => console.error(m),
    });
    if (packages.allInstalled && !quiet) {
      console.log("setup: all optional system packages are installed");
    }
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
});
