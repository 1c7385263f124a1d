/**
 * pipeline/report/progress.ts: the progress line writes through the writer it is given (the
 * command line gives standard error), redrawn in place on a terminal, plain lines elsewhere.
 * @module
 */
import { assertEquals } from "@std/assert";
import { formatDuration, Progress } from "../../pipeline/report/mod.ts";

Deno.test("Progress writes plain lines through `write`: the first, the last, and log lines", () => {
  const out: string[] = [];
  const p = new Progress({ write: (t) => out.push(t) });
  p.update("segment", 1, 4, "case a", 30);
  p.update("segment", 2, 4, "case b", 20); // within 30 s of the last plain line: not written
  p.update("segment", 4, 4, "case d", 0);
  p.log("done");
  assertEquals(out, [
    "segment [#####...............] case a ETA 30s\n",
    "segment [####################] case d ETA 0s\n",
    "done\n",
  ]);
});

Deno.test("Progress on a terminal redraws one line and clears it before a log line", () => {
  const out: string[] = [];
  const p = new Progress({ tty: true, write: (t) => out.push(t) });
  p.update("train", 0, 2, "step 0", Infinity);
  p.update("train", 1, 2, "step 1", 3725);
  p.log("epoch 1");
  p.log("epoch 2");
  assertEquals(out, [
    "\r\x1b[Ktrain [....................] step 0 ETA ?",
    "\r\x1b[Ktrain [##########..........] step 1 ETA 1h02m",
    "\r\x1b[Kepoch 1\n",
    "epoch 2\n",
  ]);
});

Deno.test("Progress with quiet writes nothing; formatDuration() of 0 s, 245 s, 3725 s", () => {
  const out: string[] = [];
  const p = new Progress({ quiet: true, tty: true, write: (t) => out.push(t) });
  p.update("x", 1, 1, "", 0);
  p.log("hidden");
  assertEquals(out, []);
  assertEquals([formatDuration(0), formatDuration(245), formatDuration(3725)], [
    "0s",
    "4m05s",
    "1h02m",
  ]);
});
