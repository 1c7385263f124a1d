/**
 * pipeline/report/report.ts: slices through the tumor as PNG (sizes, overlay colours, orientation) and the
 * HTML report on a local folder and on s3rver.
 * @module
 */
import { decode as decodePng } from "fast-png";
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import {
  type CaseSlicesInput,
  escapeHtml,
  renderCaseSlices,
  summarizeMetrics,
  writeReport,
} from "../../pipeline/report/report.ts";
import { renderCurves } from "../../pipeline/report/plot.ts";
import { getObject, listObjects } from "../../pipeline/storage/objects.ts";
import { startS3rver } from "../_s3rver.ts";

type Dims = [number, number, number];

/** An RGB image decoded from PNG bytes. */
function png(
  bytes: Uint8Array,
): { width: number; height: number; rgb: (x: number, y: number) => number[] } {
  const d = decodePng(bytes);
  assertEquals([d.channels, d.depth], [3, 8]);
  return {
    width: d.width,
    height: d.height,
    rgb: (x, y) => Array.from(d.data.subarray((y * d.width + x) * 3, (y * d.width + x) * 3 + 3)),
  };
}

/** The overlay class a pixel's colour reads as. */
function colourClass([r, g, b]: number[]): "grey" | "edema" | "necrosis" | "enhancing" | "?" {
  if (r === g && g === b) return "grey";
  if (g > r + 40 && g > b + 40) return "edema";
  if (r > g + 40 && r > b + 40) return "necrosis";
  if (r > b + 40 && g > b + 40 && Math.abs(r - g) < 10) return "enhancing";
  return "?";
}
const CLASS_OF_LABEL = ["grey", "necrosis", "edema", "enhancing", "enhancing"];

/**
 * A case on a `dims` grid: a brain ellipsoid with FLAIR 100..200, edema in a box around `at`,
 * necrosis and enhancing tumor inside it.
 */
function phantom(dims: Dims, at: Dims, enhancing: 3 | 4 = 4) {
  const [nx, ny, nz] = dims;
  const n = nx * ny * nz;
  const flair = new Float32Array(n);
  const truth = new Uint8Array(n);
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const r = ((x - nx / 2 + 0.5) / (nx / 2)) ** 2 + ((y - ny / 2 + 0.5) / (ny / 2)) ** 2 +
          ((z - nz / 2 + 0.5) / (nz / 2)) ** 2;
        if (r < 1) flair[i] = 100 + ((x * 7 + y * 13 + z * 29) % 100);
        const d = [x - at[0], y - at[1], z - at[2]].map(Math.abs);
        if (Math.max(...d) <= 3) truth[i] = 2;
        if (Math.max(...d) <= 1) truth[i] = enhancing;
        if (d[0] === 0 && d[1] === 0 && d[2] <= 1) truth[i] = 1;
      }
    }
  }
  return { flair, truth, dims };
}

const idx = (dims: Dims, x: number, y: number, z: number) => (z * dims[1] + y) * dims[0] + x;

/** Centroid (column, row) of the non-grey pixels of the first `panelWidth` columns. */
function colouredCentroid(image: ReturnType<typeof png>, panelWidth: number): [number, number] {
  let sx = 0, sy = 0, count = 0;
  for (let y = 0; y < image.height; y++) {
    for (let x = 0; x < panelWidth; x++) {
      if (colourClass(image.rgb(x, y)) !== "grey") sx += x, sy += y, count++;
    }
  }
  assert(count > 0, "no coloured pixels");
  return [sx / count / panelWidth, sy / count / image.height];
}

Deno.test("renderCaseSlices() makes PNGs of the expected sizes, aspect from the spacing", () => {
  const { flair, truth, dims } = phantom([24, 20, 16], [14, 8, 10]);
  const s = renderCaseSlices({ flair, dims, spacing: [1, 1, 2], truth, prediction: truth });
  // Longest side 16 × 2 mm = 32 mm drawn as 200 px: 6.25 px/mm; two panels 4 px apart.
  assertEquals([png(s.axial).width, png(s.axial).height], [2 * 150 + 4, 125]);
  assertEquals([png(s.coronal).width, png(s.coronal).height], [2 * 150 + 4, 200]);
  assertEquals([png(s.sagittal).width, png(s.sagittal).height], [2 * 125 + 4, 200]);
  assertEquals(s.panels, ["truth", "prediction"]);
  assertEquals(Array.from(s.axial.subarray(0, 8)), [137, 80, 78, 71, 13, 10, 26, 10]);
});

Deno.test("renderCaseSlices() enlarges tiny volumes and keeps 1 px per voxel for BraTS grids", () => {
  const tiny = phantom([8, 8, 8], [4, 4, 4]);
  const s = renderCaseSlices({ ...tiny, truth: tiny.truth });
  assertEquals([png(s.axial).width, png(s.axial).height], [200, 200]);
  // A BraTS-sized grid is drawn at 1 px per voxel (240 × 240 axial, 240 × 155 coronal).
  const dims: Dims = [240, 240, 155];
  const flair = new Float32Array(240 * 240 * 155);
  flair[idx(dims, 120, 120, 77)] = 1;
  const big = renderCaseSlices({ flair, dims });
  assertEquals([png(big.axial).width, png(big.axial).height], [240, 240]);
  assertEquals([png(big.coronal).width, png(big.coronal).height], [240, 155]);
  assertEquals(big.panels, ["flair"]);
});

Deno.test("renderCaseSlices() cuts through the tumor where it is largest", () => {
  const at: Dims = [14, 8, 10];
  const { flair, truth, dims } = phantom([24, 20, 16], at);
  const s = renderCaseSlices({ flair, dims, truth });
  assertEquals(s.slice, at);
  assertEquals(s.centre, "truth");
  // Without a reference: the prediction; without either: the brain's centre.
  const pred = phantom([24, 20, 16], [6, 12, 5]).truth;
  const p = renderCaseSlices({ flair, dims, prediction: pred });
  assertEquals([p.slice, p.centre, p.panels], [[6, 12, 5], "prediction", ["prediction"]]);
  const none = renderCaseSlices({ flair, dims, truth: new Uint8Array(flair.length) });
  assertEquals(none.centre, "brain");
  assertEquals(none.slice, [11, 9, 7]);
});

Deno.test("renderCaseSlices() overlays BraTS colours exactly where the labels are", () => {
  for (const enhancing of [4, 3] as const) {
    const { flair, truth, dims } = phantom([24, 20, 16], [14, 8, 10], enhancing);
    // The prediction misses the necrosis and the enhancing tumor: all edema.
    const prediction = truth.map((l) => (l ? 2 : 0));
    const s = renderCaseSlices({ flair, dims, truth, prediction, enhancingLabel: enhancing });
    const image = png(s.axial);
    // 24 mm drawn as 200 px: two 200 × 167 panels.
    const w = 200;
    const h = 167;
    assertEquals([image.width, image.height], [2 * w + 4, h]);
    const seen = new Set<string>();
    // Identity affine: voxel x runs to the patient's right, drawn right to left; y to anterior,
    // drawn bottom to top.
    for (let row = 0; row < h; row++) {
      for (let col = 0; col < w; col++) {
        const x = dims[0] - 1 - Math.floor(((col + 0.5) / w) * dims[0]);
        const y = dims[1] - 1 - Math.floor(((row + 0.5) / h) * dims[1]);
        const i = idx(dims, x, y, s.slice[2]);
        const truthClass = colourClass(image.rgb(col, row));
        const predClass = colourClass(image.rgb(w + 4 + col, row));
        assertEquals(truthClass, CLASS_OF_LABEL[truth[i]], `truth panel at voxel ${x},${y}`);
        assertEquals(predClass, CLASS_OF_LABEL[prediction[i]], `prediction panel at ${x},${y}`);
        seen.add(truthClass);
      }
    }
    assertEquals([...seen].sort(), ["edema", "enhancing", "grey", "necrosis"]);
    // The gap between the panels is grey.
    assertEquals(colourClass(image.rgb(w + 1, 60)), "grey");
  }
});

Deno.test("renderCaseSlices() windows FLAIR to its percentiles: background black, brain grey", () => {
  const { flair, dims } = phantom([24, 20, 16], [14, 8, 10]);
  const image = png(renderCaseSlices({ flair, dims }).axial);
  assertEquals(image.rgb(0, 0), [0, 0, 0]); // outside the brain
  const [v] = image.rgb(75, 62);
  assert(v > 0 && v <= 255);
  // Scaling intensities does not change the picture.
  const scaled = flair.map((f) => f * 10 - 3 * (f !== 0 ? 1 : 0));
  assertEquals(png(renderCaseSlices({ flair: scaled, dims }).axial).rgb(75, 62), [v, v, v]);
});

Deno.test("renderCaseSlices() follows the affine: radiological convention, anterior up", () => {
  const dims: Dims = [24, 20, 16];
  // A tumor at small voxel x, small y, large z.
  const at: Dims = [5, 5, 12];
  const { flair, truth } = phantom(dims, at);
  const views = (affine?: number[][]) => {
    const s = renderCaseSlices({ flair, dims, truth, affine });
    return {
      axial: colouredCentroid(png(s.axial), png(s.axial).width),
      coronal: colouredCentroid(png(s.coronal), png(s.coronal).width),
      sagittal: colouredCentroid(png(s.sagittal), png(s.sagittal).width),
    };
  };
  const brats = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]];
  // BraTS affine: small x is the patient's right (image left), small y anterior (image top),
  // large z superior (image top).
  const b = views(brats);
  assert(b.axial[0] < 0.5 && b.axial[1] < 0.5, `axial ${b.axial}`);
  assert(b.coronal[0] < 0.5 && b.coronal[1] < 0.5, `coronal ${b.coronal}`);
  assert(b.sagittal[0] < 0.5 && b.sagittal[1] < 0.5, `sagittal ${b.sagittal}`);
  // Identity (RAS): small x is the patient's left (image right), small y posterior (bottom).
  const r = views();
  assert(r.axial[0] > 0.5 && r.axial[1] > 0.5, `axial ${r.axial}`);
  assert(r.coronal[0] > 0.5 && r.coronal[1] < 0.5, `coronal ${r.coronal}`);
  assert(r.sagittal[0] > 0.5 && r.sagittal[1] < 0.5, `sagittal ${r.sagittal}`);
  // Voxel axes permuted (x along S, y along R, z along A): the same anatomy reads the same way.
  const perm = [[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]];
  const pd: Dims = [16, 24, 20];
  const pf = new Float32Array(flair.length);
  const pt = new Uint8Array(flair.length);
  for (let z = 0; z < dims[2]; z++) {
    for (let y = 0; y < dims[1]; y++) {
      for (let x = 0; x < dims[0]; x++) {
        // RAS voxel (x, y, z) is permuted voxel (z, x, y).
        pf[idx(pd, z, x, y)] = flair[idx(dims, x, y, z)];
        pt[idx(pd, z, x, y)] = truth[idx(dims, x, y, z)];
      }
    }
  }
  const ps = renderCaseSlices({ flair: pf, dims: pd, truth: pt, affine: perm });
  const rs = renderCaseSlices({ flair, dims, truth });
  assertEquals(ps.axial, rs.axial);
  assertEquals(ps.coronal, rs.coronal);
  assertEquals(ps.sagittal, rs.sagittal);
});

Deno.test("renderCaseSlices() rejects volumes off the grid and unknown labels", () => {
  const { flair, truth, dims } = phantom([8, 8, 8], [4, 4, 4]);
  assertThrows(
    () => renderCaseSlices({ flair: flair.subarray(1), dims }),
    RangeError,
    "FLAIR has 511 voxels",
  );
  assertThrows(
    () => renderCaseSlices({ flair, dims, prediction: truth.subarray(1) }),
    RangeError,
    "the prediction has 511 voxels",
  );
  const bad = truth.slice();
  bad[idx(dims, 4, 4, 4)] = 3;
  assertThrows(
    () => renderCaseSlices({ flair, dims, truth: bad, enhancingLabel: 4 }),
    RangeError,
    `the reference voxel ${idx(dims, 4, 4, 4)} has label 3; expected 0, 1, 2 or 4`,
  );
  bad[0] = 7;
  assertThrows(() => renderCaseSlices({ flair, dims, truth: bad }), RangeError, "label 7");
});

// ---------------------------------------------------------------------------------------------
// The HTML report

function sampleReport() {
  const { flair, truth, dims } = phantom([16, 16, 12], [9, 7, 6]);
  const input: CaseSlicesInput = { flair, dims, truth, prediction: truth };
  return {
    title: "Validation <run 1>",
    notes: ["model: s3://models/a&b"],
    cases: [
      {
        id: `Case<&>"1'`,
        slices: renderCaseSlices(input),
        metrics: {
          WT: { dice: 0.9, hd95: 3.5 },
          TC: { dice: 0.8, hd95: 4 },
          ET: { dice: 0.7, hd95: 12.25 },
        },
      },
      {
        id: "BraTS20_Training_002",
        slices: renderCaseSlices({ ...input, prediction: undefined }),
        metrics: {
          WT: { dice: 0.7, hd95: 5.5 },
          TC: { dice: 0.6, hd95: 6 },
          ET: { dice: NaN, hd95: 373.13 },
        },
      },
      { id: "BraTS20_Training_003" },
    ],
    curvesSvg: renderCurves([{
      title: "loss",
      xLabel: "epoch",
      yLabel: "loss",
      series: [{ name: "train", color: "#1f77b4", points: [[1, 0.9], [2, 0.5]] }],
    }]),
  };
}

function checkHtml(html: string, report: ReturnType<typeof sampleReport>) {
  assertStringIncludes(html, "<title>Validation &lt;run 1&gt;</title>");
  assertStringIncludes(html, "model: s3://models/a&amp;b");
  assertStringIncludes(html, "Case&lt;&amp;&gt;&quot;1&#39;");
  assert(!html.includes("Case<"), "a case id is not escaped");
  assertStringIncludes(html, "BraTS20_Training_002");
  assertStringIncludes(html, "BraTS20_Training_003");
  // Per case values, and the summary: WT dice 0.8 ± 0.1, ET dice of the one finite value.
  for (const v of ["0.900", "3.500", "12.25", "373.13", "0.800 ± 0.100", "0.700 ± 0.000"]) {
    assertStringIncludes(html, v);
  }
  assertStringIncludes(html, report.curvesSvg.trim().split("\n")[0]);
  assertStringIncludes(html, "edema (label 2)");
  assert(!/<script|<link|\ssrc="https?:|url\(/i.test(html), "an external resource or a script");
}

Deno.test("summarizeMetrics() gives mean ± population std over finite values", () => {
  const s = summarizeMetrics(sampleReport().cases);
  assertEquals(s.WT?.dice.n, 2);
  assert(Math.abs(s.WT!.dice.mean - 0.8) < 1e-12 && Math.abs(s.WT!.dice.std - 0.1) < 1e-12);
  assertEquals(s.ET?.dice, { mean: 0.7, std: 0, n: 1 });
});

Deno.test("escapeHtml() escapes the five special characters", () => {
  assertEquals(
    escapeHtml(`<a href="x">'&'</a>`),
    "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;",
  );
});

Deno.test("writeReport() writes one self-contained index.html to a local folder", async () => {
  const dir = await Deno.makeTempDir({ prefix: "report-test-" });
  try {
    const report = sampleReport();
    const uri = await writeReport(dir, report);
    assertEquals(uri, `${dir}/report/index.html`);
    assertEquals((await listObjects(dir)).map((o) => o.key), ["report/index.html"]);
    const html = await Deno.readTextFile(uri);
    checkHtml(html, report);
    // The embedded images are the rendered PNGs; two cases have three each.
    const embedded = [...html.matchAll(/src="data:image\/png;base64,([^"]+)"/g)].map((m) =>
      Uint8Array.from(atob(m[1]), (c) => c.charCodeAt(0))
    );
    assertEquals(embedded.length, 6);
    assertEquals(embedded[0], report.cases[0].slices!.axial);
    assertEquals(embedded[5], report.cases[1].slices!.sagittal);
    assert(html.length < 200_000, `report is ${html.length} characters`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeReport() can write the PNGs beside index.html, with safe names", async () => {
  const dir = await Deno.makeTempDir({ prefix: "report-test-" });
  try {
    const report = sampleReport();
    const uri = await writeReport(dir, report, { images: "files" });
    const keys = (await listObjects(`${dir}/report`)).map((o) => o.key);
    assertEquals(keys, [
      "BraTS20_Training_002_axial.png",
      "BraTS20_Training_002_coronal.png",
      "BraTS20_Training_002_sagittal.png",
      "Case_1_axial.png",
      "Case_1_coronal.png",
      "Case_1_sagittal.png",
      "index.html",
    ]);
    assertEquals(
      await Deno.readFile(`${dir}/report/Case_1_axial.png`),
      report.cases[0].slices!.axial,
    );
    const html = await Deno.readTextFile(uri);
    checkHtml(html, report);
    assertStringIncludes(html, 'src="Case_1_coronal.png"');
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeReport() refuses curves that are not a script-free SVG", async () => {
  await assertRejects(
    () =>
      writeReport("/nonexistent", {
        ...sampleReport(),
        curvesSvg: "<svg><script>x</script></svg>",
      }),
    TypeError,
    "curvesSvg",
  );
});

Deno.test("writeReport() writes to S3 (s3rver)", async () => {
  await using s3 = await startS3rver({ buckets: ["reports"] });
  const report = sampleReport();
  const uri = await writeReport("s3://reports/run-1", report);
  assertEquals(uri, "s3://reports/run-1/report/index.html");
  checkHtml(new TextDecoder().decode(await getObject(uri)), report);
  await writeReport("s3://reports/run-2/", report, { images: "files" });
  assertEquals(
    await getObject("s3://reports/run-2/report/BraTS20_Training_002_axial.png"),
    report.cases[1].slices!.axial,
  );
  assert(s3.requests.every((r) => r.status < 400));
});
