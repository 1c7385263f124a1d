/**
 * pipeline/training/environment/packages.ts: the optional packages `setup` installs (without running
 * apt-get: only packages already installed are asked for).
 * @module
 */
import { assert, assertEquals } from "@std/assert";
import {
  installPackages,
  optionalPackages,
  PEER_PACKAGES,
  SYSTEM_PACKAGES,
} from "../../../pipeline/training/mod.ts";

/** Whether dpkg says `pkg` is installed (false without dpkg). */
function dpkgInstalled(pkg: string): boolean {
  try {
    const out = new Deno.Command("dpkg-query", {
      args: ["-W", "-f=${Status}", pkg],
      stdout: "piped",
      stderr: "null",
    }).outputSync();
    return out.success && new TextDecoder().decode(out.stdout).includes("install ok installed");
  } catch {
    return false;
  }
}

Deno.test("optionalPackages(): the system packages, and PyTorch only for the peer", () => {
  assertEquals(optionalPackages(), Object.keys(SYSTEM_PACKAGES));
  assertEquals(optionalPackages(true), [
    ...Object.keys(SYSTEM_PACKAGES),
    ...Object.keys(PEER_PACKAGES),
  ]);
  assert(optionalPackages(true).includes("python3-torch"));
});

const present = Object.keys(SYSTEM_PACKAGES).filter(dpkgInstalled);

Deno.test({
  name: `installPackages() of installed packages does nothing and says nothing${
    present.length ? "" : " (skipped: none of the optional packages is installed)"
  }`,
  ignore: present.length === 0,
  async fn() {
    const said: string[] = [];
    const r = await installPackages(present, { quiet: true, log: (m) => said.push(m) });
    assertEquals(r, { allInstalled: true, missing: [] });
    assertEquals(said, []);
  },
});
