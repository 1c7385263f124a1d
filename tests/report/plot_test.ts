/**
 * pipeline/report/plot.ts: the training curves' SVG.
 * @module
 */
import { assert } from "@std/assert";
import { renderCurves } from "../../pipeline/report/plot.ts";

Deno.test("renderCurves makes an SVG", () => {
  const svg = renderCurves([{
    title: "t",
    xLabel: "x",
    yLabel: "y",
    series: [{ name: "a<b", color: "#000", points: [[1, 2], [2, NaN], [3, 1]] }],
  }]);
  assert(svg.startsWith("<svg") && svg.includes("a&lt;b") && svg.includes("<path"));
});
