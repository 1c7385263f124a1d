/** Tests of pipeline/demo: the demo's stages as a plain function, without the command line. */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { DEMO_MARKER, DEMO_STAGES, runDemo } from "../../pipeline/demo/mod.ts";
import { joinUri, listObjects } from "../../pipeline/storage/mod.ts";

Deno.test("runDemo() runs synth, train, segment, evaluate and report and records its summary", async () => {
  const out = await Deno.makeTempDir({ prefix: "revunet-demo-" });
  try {
    const lines: string[] = [];
    const summary = await runDemo({
      out,
      cases: 3,
      dims: [32, 32, 32],
      epochs: 1,
      stepsPerEpoch: 2,
      crop: 16,
      seed: 0,
      backend: "cpu",
      log: (m) => lines.push(m),
    });
    // The summary returned is the one recorded last, in the marker file.
    const recorded = JSON.parse(await Deno.readTextFile(joinUri(out, DEMO_MARKER)));
    assertEquals(recorded, summary);
    assertEquals(summary.cases.length, 3);
    assertEquals(summary.train.steps, 2);
    assertEquals(summary.train.crop, 16);
    assertEquals(summary.held_out.length, 2);
    assertEquals(summary.segmentations.length, 2);
    // Every stage wrote under its own folder, and nothing else was written.
    const tops = new Set((await listObjects(out)).map((o) => o.key.split("/")[0]));
    assertEquals([...tops].sort(), [...DEMO_STAGES, DEMO_MARKER].sort());
    // One log line per finished stage, in order; training's progress is the caller's (none here).
    assertEquals(lines.length, 4);
    assertStringIncludes(lines[0], "3 synthetic cases (32×32×32");
    assertStringIncludes(lines[1], `segmented ${summary.held_out.slice().sort().join(", ")}`);
    assertStringIncludes(lines[2], "held-out Dice WT");
    assertEquals(lines[3], `report: ${summary.report}`);
    for (const r of ["WT", "TC", "ET"]) {
      const d = (summary.evaluation.mean_dice as Record<string, number | null>)[r];
      assert(d === null || (d >= 0 && d <= 1), `${r} Dice ${d}`);
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
