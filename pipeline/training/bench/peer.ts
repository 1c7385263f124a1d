/**
 * The speed benchmark's peer: the reference network in PyTorch (./peer_torch.py), run as a
 * subprocess with the same crop, steps and threads.
 * @module
 */
import { envVar } from "../../../model/env.ts";

/** The Python that has Debian's python3-torch (the PATH python3 may be a pyenv without it). */
export const PEER_PYTHON = "/usr/bin/python3";

/** The environment variable naming another Python for the peer (e.g. a venv with CUDA torch). */
export const PEER_PYTHON_ENV = "REVUNET_PEER_PYTHON";

/** The peer's script, beside this module. */
export const PEER_SCRIPT: URL = new URL("./peer_torch.py", import.meta.url);

/** The peer's script as the repository names it, for messages. */
const PEER_SCRIPT_NAME = "pipeline/training/bench/peer_torch.py";

/**
 * The Python the peer runs with: `$REVUNET_PEER_PYTHON` when set and not empty, else
 * {@linkcode PEER_PYTHON}.
 */
export function peerPython(): string {
  return envVar(PEER_PYTHON_ENV)?.trim() || PEER_PYTHON;
}

/** What the peer is asked to run. */
export interface PeerArgs {
  crop: number;
  steps: number;
  warmup: number;
  threads: number;
  /** torch's device: "cpu", "cuda" or "auto". */
  device: string;
}

/** The peer's result, or null with the reason there is none. */
export async function runPeer(
  args: PeerArgs,
  log: (msg: string) => void = () => {},
): Promise<{ peer: Record<string, unknown> | null; reason?: string }> {
  const script = PEER_SCRIPT.protocol === "file:" ? decodeURIComponent(PEER_SCRIPT.pathname) : "";
  const argv = [
    script,
    "--crop",
    String(args.crop),
    "--steps",
    String(args.steps),
    "--warmup",
    String(args.warmup),
    "--threads",
    String(args.threads),
    "--device",
    args.device,
  ];
  const python = peerPython();
  log(`peer: ${python} ${argv.join(" ")}`);
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(python, {
      args: argv,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    return { peer: null, reason: `cannot run ${python}: ${(e as Error).message}` };
  }
  const dec = new TextDecoder();
  const lines = dec.decode(out.stdout).split("\n").filter((l) => l.trim() !== "");
  let parsed: Record<string, unknown> | null = null;
  try {
    parsed = lines.length > 0 ? JSON.parse(lines[lines.length - 1]) : null;
  } catch {
    parsed = null;
  }
  if (parsed && typeof parsed.error === "string") {
    return { peer: null, reason: `${parsed.error} (install it with \`deno task setup --peer\`)` };
  }
  if (!out.success || !parsed) {
    const err = dec.decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    return { peer: null, reason: `${PEER_SCRIPT_NAME} failed (exit ${out.code}): ${err}` };
  }
  return { peer: parsed };
}
