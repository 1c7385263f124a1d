/**
 * pipeline/synth/synth.ts: synthetic BraTS-like cases on small grids (48×56×40), built on
 * ch2bet when mricron-data is installed and on the procedural head always; checked for determinism,
 * naming and labels, tumor nesting and contrast, and read back by findCases, loadCase, nibabel and
 * from s3rver.
 * @module
 */
import { join } from "node:path";
import {
  assert,
  assertEquals,
  assertNotEquals,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { findCases, MODALITIES, type Modality } from "../../pipeline/cases/cases.ts";
import { decodeNifti } from "../../pipeline/nifti/mod.ts";
import { loadCase } from "../../pipeline/cases/preprocess.ts";
import { getObject } from "../../pipeline/storage/objects.ts";
import {
  CH2BET_PATH,
  loadSynthTemplate,
  proceduralTemplate,
  type SynthCase,
  synthCase,
  type SynthNaming,
  type SynthTemplate,
  writeSynthDataset,
} from "../../pipeline/synth/synth.ts";
import { HAS_NIBABEL, PYTHON } from "../_nifti_fixtures.ts";
import { startS3rver } from "../_s3rver.ts";
import { readTree, tempDir } from "../_synth_fixtures.ts";

const SMALL: [number, number, number] = [48, 56, 40];
const HAS_CH2BET = (() => {
  try {
    return Deno.statSync(CH2BET_PATH).isFile;
  } catch {
    return false;
  }
})();

const sameBytes = (a: Uint8Array, b: Uint8Array) =>
  a.length === b.length && a.every((v, i) => v === b[i]);

/** The templates to check: ch2bet where installed, and the procedural head everywhere. */
const templates: { name: string; load: () => Promise<SynthTemplate> }[] = [
  ...(HAS_CH2BET ? [{ name: "ch2bet", load: () => loadSynthTemplate(CH2BET_PATH) }] : []),
  { name: "procedural", load: () => loadSynthTemplate(null) },
];

function mean(values: ArrayLike<number>, mask: (i: number) => boolean): number {
  let sum = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    if (mask(i)) {
      sum += values[i];
      n++;
    }
  }
  return n ? sum / n : NaN;
}

/**
 * Voxels whose label breaks nesting: necrosis next to edema or background, enhancing next to
 * background (6-neighbourhood).
 */
function nestingViolations(c: SynthCase, enhancing: number): number[] {
  const [nx, ny, nz] = c.dims;
  const bad: number[] = [];
  for (let z = 0, i = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const l = c.seg[i];
        if (l !== 1 && l !== enhancing) continue;
        const neighbours = [
          x > 0 ? c.seg[i - 1] : 0,
          x < nx - 1 ? c.seg[i + 1] : 0,
          y > 0 ? c.seg[i - nx] : 0,
          y < ny - 1 ? c.seg[i + nx] : 0,
          z > 0 ? c.seg[i - nx * ny] : 0,
          z < nz - 1 ? c.seg[i + nx * ny] : 0,
        ];
        const ok = l === 1
          ? neighbours.every((m) => m === 1 || m === enhancing)
          : neighbours.every((m) => m !== 0);
        if (!ok) bad.push(i);
      }
    }
  }
  return bad;
}

// ---------------------------------------------------------------------------------------------
// One case in memory

for (const t of templates) {
  Deno.test(`synthCase() on ${t.name}: labels nest, tumor in the brain, 1-10% of it`, async () => {
    const template = await t.load();
    let twoLesions = 0;
    for (let seed = 1; seed <= 8; seed++) {
      const enhancing = seed % 2 ? 4 : 3;
      const c = synthCase(template, { seed, dims: SMALL, enhancingLabel: enhancing });
      const what = `${t.name} seed ${seed}`;
      const labels = new Set(c.seg);
      for (const l of labels) assert([0, 1, 2, enhancing].includes(l), `${what}: label ${l}`);
      assert(labels.has(2) && labels.has(enhancing), `${what}: labels ${[...labels]}`);
      assertEquals(nestingViolations(c, enhancing).length, 0, `${what}: nesting`);
      let wt = 0;
      for (let i = 0; i < c.seg.length; i++) {
        const inBrain = c.images.flair[i] !== 0;
        // Every modality has the same brain: nonzero exactly where FLAIR is.
        for (const m of MODALITIES) assertEquals(c.images[m][i] !== 0, inBrain, `${what}: ${m}`);
        assertEquals(c.tissue[i] !== 0, inBrain, `${what}: tissue at ${i}`);
        if (c.seg[i]) {
          assert(inBrain, `${what}: tumor voxel ${i} outside the brain`);
          wt++;
        }
      }
      const percent = (100 * wt) / c.brainVoxels;
      assert(percent > 0.5 && percent < 15, `${what}: whole tumor ${percent.toFixed(2)}% of brain`);
      // The brain fits the grid: nothing on its outer faces.
      const [nx, ny, nz] = c.dims;
      for (let i = 0; i < c.seg.length; i++) {
        const x = i % nx, y = Math.floor(i / nx) % ny, z = Math.floor(i / (nx * ny));
        if (x === 0 || y === 0 || z === 0 || x === nx - 1 || y === ny - 1 || z === nz - 1) {
          assertEquals(c.images.t1[i], 0, `${what}: brain on the grid's border at ${[x, y, z]}`);
        }
      }
      if (c.lesions.length === 2) twoLesions++;
      // Lesions may overlap, so their voxels add up to at least the whole tumor.
      const lesionVoxels = c.lesions.reduce((s, l) => s + l.edema + l.enhancing + l.necrosis, 0);
      assert(lesionVoxels >= wt, `${what}: lesions ${lesionVoxels} voxels, whole tumor ${wt}`);
    }
    assert(twoLesions < 8, "some cases have a single lesion");
  });

  Deno.test(`synthCase() on ${t.name}: tissue and tumor contrasts are visible`, async () => {
    const template = await t.load();
    for (let seed = 11; seed <= 15; seed++) {
      const c = synthCase(template, { seed, dims: SMALL });
      const what = `${t.name} seed ${seed}`;
      const healthy = (k: number) => (i: number) => c.seg[i] === 0 && c.tissue[i] === k;
      const normal = (i: number) => c.seg[i] === 0 && c.tissue[i] !== 0;
      const label = (l: number) => (i: number) => c.seg[i] === l;
      const m = (mod: Modality, mask: (i: number) => boolean) => mean(c.images[mod], mask);
      // T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF darker than GM.
      assert(m("t1", healthy(3)) > m("t1", healthy(2)), `${what}: T1 WM > GM`);
      assert(m("t1", healthy(2)) > m("t1", healthy(1)), `${what}: T1 GM > CSF`);
      assert(m("t2", healthy(1)) > m("t2", healthy(2)), `${what}: T2 CSF > GM`);
      assert(m("t2", healthy(2)) > m("t2", healthy(3)), `${what}: T2 GM > WM`);
      assert(m("flair", healthy(1)) < m("flair", healthy(2)), `${what}: FLAIR CSF < GM`);
      // Edema bright on FLAIR and T2; enhancing bright on T1ce; necrosis dark on T1ce.
      assert(m("flair", label(2)) > 1.3 * m("flair", normal), `${what}: FLAIR edema`);
      const parenchyma = (i: number) => c.seg[i] === 0 && c.tissue[i] >= 2;
      assert(m("t2", label(2)) > 1.3 * m("t2", parenchyma), `${what}: T2 edema`);
      assert(m("t1ce", label(4)) > 1.3 * m("t1ce", normal), `${what}: T1ce enhancing`);
      if (c.lesions.some((l) => l.necrosis > 0)) {
        assert(m("t1ce", label(1)) < m("t1ce", normal), `${what}: T1ce necrosis`);
        assert(m("t1ce", label(1)) < 0.5 * m("t1ce", label(4)), `${what}: T1ce necrosis vs rim`);
      }
    }
  });
}

Deno.test("synthCase() is deterministic for a seed and differs between seeds", async () => {
  const template = await loadSynthTemplate();
  const a = synthCase(template, { seed: 3, dims: SMALL });
  const b = synthCase(template, { seed: 3, dims: SMALL });
  const c = synthCase(template, { seed: 4, dims: SMALL });
  for (const m of MODALITIES) {
    assertEquals(a.images[m], b.images[m]);
    assertNotEquals(a.images[m], c.images[m]);
  }
  assertEquals(a.seg, b.seg);
  assertNotEquals(a.seg, c.seg);
});

Deno.test("synthCase() on the default 240×240×155 grid keeps the brain near 1 mm", async () => {
  const template = await loadSynthTemplate();
  const c = synthCase(template, { seed: 1 });
  assertEquals(c.dims, [240, 240, 155]);
  assertEquals(c.affine, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]]);
  // An adult brain is 1.1-1.8 litres; scaled by 0.93-1.04 per axis.
  assert(
    c.brainVoxels > 0.9e6 && c.brainVoxels < 2e6,
    `${c.brainVoxels} brain voxels (${template.source})`,
  );
});

Deno.test("proceduralTemplate() has three ordered tissue classes and a whole brain", () => {
  const t = proceduralTemplate();
  const [csf, gm, wm] = t.classMeans;
  assert(csf > 0 && csf < gm && gm < wm, `class means ${t.classMeans}`);
  // About 130×165×120 mm, like an adult brain.
  for (const [k, e] of t.extent.entries()) assert(e > 100 && e < 190, `extent[${k}] ${e}`);
});

// ---------------------------------------------------------------------------------------------
// Datasets

Deno.test("writeSynthDataset() writes the same bytes for a seed, others for another", async () => {
  await using a = await tempDir();
  await using b = await tempDir();
  await using c = await tempDir();
  await using one = await tempDir();
  const options = { cases: 2, seed: 7, dims: SMALL };
  await writeSynthDataset(a.path, options);
  await writeSynthDataset(b.path, options);
  await writeSynthDataset(c.path, { ...options, seed: 8 });
  await writeSynthDataset(one.path, { ...options, cases: 1 });
  const [ta, tb, tc, t1] = await Promise.all([a, b, c, one].map((d) => readTree(d.path)));
  assertEquals(ta.size, 10);
  assertEquals([...ta.keys()].sort(), [...tb.keys()].sort());
  for (const [name, bytes] of ta) {
    assert(sameBytes(bytes, tb.get(name)!), `${name} differs between two runs with seed 7`);
    assert(!sameBytes(bytes, tc.get(name)!), `${name} is the same for seeds 7 and 8`);
  }
  // Case k does not depend on how many cases are written.
  assertEquals(t1.size, 5);
  for (const [name, bytes] of t1) assert(sameBytes(bytes, ta.get(name)!), name);
  // The two cases of a dataset differ.
  const flair = (k: number) => ta.get(`BraTS2021_0000${k}/BraTS2021_0000${k}_flair.nii.gz`)!;
  assert(!sameBytes(flair(0), flair(1)));
});

const NAMINGS: { naming: SynthNaming; id: string; file: string; enhancing: 3 | 4 }[] = [
  {
    naming: "brats2020",
    id: "BraTS20_Training_001",
    file: "BraTS20_Training_001/BraTS20_Training_001_t1ce.nii.gz",
    enhancing: 4,
  },
  {
    naming: "brats2021",
    id: "BraTS2021_00000",
    file: "BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz",
    enhancing: 4,
  },
  {
    naming: "brats2023",
    id: "BraTS-GLI-00000-000",
    file: "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz",
    enhancing: 3,
  },
];

for (const n of NAMINGS) {
  const name = `writeSynthDataset() in ${n.naming} naming: findCases and loadCase read it`;
  Deno.test(`${name}, ET label ${n.enhancing}`, async () => {
    await using tmp = await tempDir();
    const summary = await writeSynthDataset(tmp.path, {
      cases: 2,
      seed: 2,
      dims: SMALL,
      naming: n.naming,
    });
    assertEquals(summary.enhancingLabel, n.enhancing);
    assertEquals(summary.cases[0].id, n.id);
    assertEquals(summary.cases[0].files.t1ce, join(tmp.path, n.file));
    const { cases, problems } = await findCases(tmp.path);
    assertEquals(problems, []);
    assertEquals(cases.map((c) => c.id), summary.cases.map((c) => c.id));
    for (const [k, c] of cases.entries()) {
      assertEquals(c.enhancingLabel, n.enhancing);
      assertEquals(c.naming, n.naming === "brats2023" ? "brats2023" : "brats2021");
      assertEquals(c.shape, SMALL);
      assertEquals(c.spacing, [1, 1, 1]);
      assert(c.seg, `${c.id} has a segmentation`);
      const seg = decodeNifti(await getObject(c.seg), c.seg);
      assertEquals(seg.header.datatype, "uint8");
      const labels = new Set(seg.data);
      assert(labels.has(n.enhancing) && labels.has(2), `${c.id}: labels ${[...labels]}`);
      assert(!labels.has(n.enhancing === 4 ? 3 : 4), `${c.id}: labels ${[...labels]}`);
      const image = decodeNifti(await getObject(c.images.flair), c.images.flair);
      assertEquals(image.header.datatype, "int16");
      assertEquals(image.header.sclSlope, 1);
      assertEquals(image.header.affine, [[-1, 0, 0, 0], [0, -1, 0, 55], [0, 0, 1, 0], [
        0,
        0,
        0,
        1,
      ]]);
      // preprocess reads it: z-scored channels and region targets that match the summary.
      const loaded = await loadCase(c);
      assertEquals(loaded.dims, SMALL);
      assertEquals(loaded.image.length, 48 * 56 * 40 * 4);
      assert(loaded.target);
      const regions = [0, 0, 0];
      for (let i = 0; i < loaded.target.length; i++) regions[i % 3] += loaded.target[i];
      const v = summary.cases[k].voxels;
      assertEquals(regions, [v.WT, v.TC, v.ET]);
      assert(v.ET > 0 && v.ET <= v.TC && v.TC < v.WT && v.WT < v.brain, JSON.stringify(v));
    }
  });
}

Deno.test({
  name: "writeSynthDataset() files read the same in nibabel",
  ignore: !HAS_NIBABEL,
  fn: async () => {
    await using tmp = await tempDir();
    const summary = await writeSynthDataset(tmp.path, { cases: 1, seed: 9, dims: SMALL });
    const files = summary.cases[0].files;
    const parts = [...MODALITIES, "seg" as const];
    const script = `
import json, sys
import numpy as np
import nibabel as nib
out = []
for path in sys.argv[1:]:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    out.append(dict(shape=list(img.shape), dtype=img.get_data_dtype().name,
                    affine=img.affine.tolist(), zooms=[float(z) for z in img.header.get_zooms()],
                    slope=img.dataobj.slope, inter=img.dataobj.inter,
                    total=int(data.astype(np.int64).sum()), nonzero=int((data != 0).sum())))
print(json.dumps(out))
`;
    const run = await new Deno.Command(PYTHON, {
      args: ["-c", script, ...parts.map((p) => files[p])],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(run.success, new TextDecoder().decode(run.stderr));
    const seen = JSON.parse(new TextDecoder().decode(run.stdout));
    for (const [k, p] of parts.entries()) {
      const ours = decodeNifti(await Deno.readFile(files[p]), files[p]);
      let total = 0;
      let nonzero = 0;
      for (const v of ours.data) {
        total += v;
        if (v !== 0) nonzero++;
      }
      assertEquals(seen[k], {
        shape: SMALL,
        dtype: p === "seg" ? "uint8" : "int16",
        affine: [[-1, 0, 0, 0], [0, -1, 0, 55], [0, 0, 1, 0], [0, 0, 0, 1]],
        zooms: [1, 1, 1],
        slope: 1,
        inter: 0,
        total,
        nonzero,
      }, p);
    }
  },
});

Deno.test("writeSynthDataset() writes to s3:// the bytes it writes locally", async () => {
  await using tmp = await tempDir();
  await using s3 = await startS3rver({ buckets: ["synth"] });
  const options = { cases: 1, seed: 5, dims: SMALL, naming: "brats2023" as const };
  const summary = await writeSynthDataset("s3://synth/data/", options);
  await writeSynthDataset(tmp.path, options);
  assertEquals(
    summary.cases[0].files.seg,
    "s3://synth/data/BraTS-GLI-00000-000/BraTS-GLI-00000-000-seg.nii.gz",
  );
  const puts = s3.requests.filter((r) => r.method === "PUT" && r.status === 200);
  assertEquals(puts.length, 5);
  const { cases, problems } = await findCases("s3://synth/data");
  assertEquals(problems, []);
  assertEquals(cases.length, 1);
  assertEquals(cases[0].enhancingLabel, 3);
  const local = await readTree(tmp.path);
  for (const [name, bytes] of local) {
    assert(sameBytes(await getObject(`s3://synth/data/${name}`), bytes), name);
  }
});

Deno.test("writeSynthDataset() uses ch2bet if installed, else the procedural head", async () => {
  await using a = await tempDir();
  await using b = await tempDir();
  const byDefault = await writeSynthDataset(a.path, { cases: 1, seed: 1, dims: SMALL });
  const procedural = await writeSynthDataset(b.path, {
    cases: 1,
    seed: 1,
    dims: SMALL,
    template: null,
  });
  assertEquals(procedural.template, "procedural");
  if (HAS_CH2BET) {
    assertStringIncludes(byDefault.template, "ch2bet");
    assertStringIncludes(byDefault.template, CH2BET_PATH);
    const flair = (dir: string) =>
      Deno.readFile(join(dir, "BraTS2021_00000/BraTS2021_00000_flair.nii.gz"));
    assert(!sameBytes(await flair(a.path), await flair(b.path)), "ch2bet and procedural differ");
  } else {
    assertEquals(byDefault.template, "procedural");
  }
});

Deno.test({
  name: "writeSynthDataset() takes a template path: ch2bet by name gives the default's bytes",
  ignore: !HAS_CH2BET,
  fn: async () => {
    await using a = await tempDir();
    await using b = await tempDir();
    await writeSynthDataset(a.path, { cases: 1, seed: 6, dims: SMALL });
    await writeSynthDataset(b.path, { cases: 1, seed: 6, dims: SMALL, template: CH2BET_PATH });
    const [ta, tb] = await Promise.all([readTree(a.path), readTree(b.path)]);
    for (const [name, bytes] of ta) assert(sameBytes(bytes, tb.get(name)!), name);
  },
});

Deno.test("writeSynthDataset() refuses bad options before writing anything", async () => {
  await using tmp = await tempDir();
  const out = join(tmp.path, "out");
  const bad: [Parameters<typeof writeSynthDataset>[1], string][] = [
    [{ cases: 0, seed: 1 }, "cases must be an integer >= 1, got 0"],
    [{ cases: 1, seed: -1 }, "seed must be an integer"],
    [{ cases: 1, seed: 1, dims: [48, 56, 8] }, "dims must be 3 integers in 32..1024"],
    [{ cases: 1, seed: 1, naming: "brats2019" as SynthNaming }, 'got "brats2019"'],
  ];
  for (const [options, message] of bad) {
    const e = await assertRejects(() => writeSynthDataset(out, options), RangeError);
    assertStringIncludes(e.message, message);
  }
  const badUri = await assertRejects(() => writeSynthDataset("s3:///data", { cases: 1, seed: 1 }));
  assertStringIncludes(badUri.message, "no bucket");
  const missing = join(tmp.path, "no-such-template.nii.gz");
  const e = await assertRejects(() =>
    writeSynthDataset(out, { cases: 1, seed: 1, dims: SMALL, template: missing })
  );
  assertStringIncludes(e.message, missing);
  assertEquals(await readTree(tmp.path), new Map());
});
