/**
 * Run as a script: reads each NIfTI path given with readNifti() and prints one JSON line per file,
 * `{"path", "error", "kind", "peakBytes"}`, where peakBytes is how far the process's peak resident
 * memory (VmHWM) rose above its resident memory before the read. Linux only: the peak is reset
 * through /proc/self/clear_refs before each file.
 * @module
 */
import { readNifti } from "../pipeline/nifti/object.ts";

function status(field: string): number {
  const text = Deno.readTextFileSync("/proc/self/status");
  return Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(text)![1]) * 1024;
}

for (const path of Deno.args) {
  Deno.writeTextFileSync("/proc/self/clear_refs", "5"); // VmHWM := VmRSS
  const before = status("VmRSS");
  let error: string | undefined;
  let kind: string | undefined;
  try {
    await readNifti(path);
  } catch (e) {
    error = (e as Error).message;
    kind = (e as Error).constructor.name;
  }
  console.log(JSON.stringify({ path, error, kind, peakBytes: status("VmHWM") - before }));
}
