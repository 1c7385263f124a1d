/**
 * pipeline/cases/cases.ts: BraTS file names, and cases listed from small fake datasets (6×5×4 volumes
 * written with encodeNifti) in a local folder and on a real s3rver (tests/_s3rver.ts).
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import {
  type Case,
  type CaseListing,
  findCases,
  parseCaseFileName,
} from "../../pipeline/cases/cases.ts";
import { createNiftiHeader, encodeNifti } from "../../pipeline/nifti/mod.ts";
import { getObject, putObject } from "../../pipeline/storage/objects.ts";
import { startS3rver } from "../_s3rver.ts";

// ---------------------------------------------------------------------------------------------
// Fixtures

type Affine = number[][];

/** BraTS's own grid: 1 mm, x and y flipped. */
const LPS: Affine = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]];
/** An anisotropic grid, to tell spacing from shape. */
const ANISO: Affine = [[1, 0, 0, -3], [0, 1.5, 0, 4], [0, 0, 2, -5], [0, 0, 0, 1]];
const SHAPE = [6, 5, 4];

/** One image volume (int16) or segmentation (uint8), `.nii.gz` or `.nii` by its name. */
function volume(
  name: string,
  dims: number[] = SHAPE,
  affine: Affine = LPS,
  seg = false,
): Uint8Array {
  const n = dims.reduce((a, b) => a * b, 1);
  const like = createNiftiHeader(dims, affine, seg ? "uint8" : "int16");
  const data = seg
    ? Uint8Array.from({ length: n }, (_, i) => [0, 1, 2, 4][i % 4])
    : Int16Array.from({ length: n }, (_, i) => (i * 37) % 500);
  return encodeNifti(data, seg ? "uint8" : "int16", like, { gzip: name.endsWith(".gz"), name });
}

/** Relative path → file bytes. */
type Dataset = Map<string, Uint8Array>;

/** Adds one case's files, `{dir}{id}{sep}{suffix}{ext}` for each suffix. */
function addCase(
  ds: Dataset,
  dir: string,
  id: string,
  sep: "_" | "-",
  suffixes: string[],
  ext: ".nii" | ".nii.gz" = ".nii.gz",
  dims: number[] = SHAPE,
  affine: Affine = LPS,
): void {
  for (const s of suffixes) {
    const name = `${id}${sep}${s}${ext}`;
    ds.set(`${dir}${name}`, volume(name, dims, affine, s === "seg"));
  }
}

const OLD = ["flair", "t1", "t1ce", "t2"];
const NEW = ["t2f", "t1n", "t1c", "t2w"];

/** Good cases in every naming and layout, plus files a listing must ignore. */
function goodDataset(): Dataset {
  const ds: Dataset = new Map();
  // 2018–2020: one folder per case, .nii.gz; the second case has no segmentation.
  addCase(ds, "BraTS20_Training_001/", "BraTS20_Training_001", "_", [...OLD, "seg"]);
  addCase(ds, "BraTS20_Training_002/", "BraTS20_Training_002", "_", OLD);
  // 2021: flat, uncompressed, anisotropic.
  addCase(ds, "", "BraTS2021_00000", "_", [...OLD, "seg"], ".nii", SHAPE, ANISO);
  // 2023+: one folder per case, .nii.gz, another shape.
  addCase(ds, "BraTS-GLI-00000-000/", "BraTS-GLI-00000-000", "-", [...NEW, "seg"], ".nii.gz", [
    7,
    6,
    5,
  ]);
  // 2023+: flat, uncompressed.
  addCase(ds, "", "BraTS-MEN-00004-000", "-", [...NEW, "seg"], ".nii");
  // Not case files: notes, tables, checksums, sidecars, macOS resource forks.
  const text = new TextEncoder().encode("not a volume\n");
  for (
    const name of [
      "README.md",
      "name_mapping.csv",
      "survival_info.csv",
      "BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz.md5",
      "BraTS20_Training_001/BraTS20_Training_001_t1.json",
      "BraTS20_Training_001/BraTS20_Training_001_t1.txt",
      "BraTS20_Training_001/BraTS20_Training_001_dwi.nii.gz",
      "notes/BraTS20_Training_003_t1.nii.gz/readme.txt", // a folder named like a volume
      "__MACOSX/BraTS20_Training_001/._BraTS20_Training_001_flair.nii.gz",
      "._BraTS2021_00000_seg.nii",
    ]
  ) ds.set(name, text);
  return ds;
}

/** The cases {@linkcode goodDataset} holds, with URIs under `root` (ending in "/"). */
function expectedGoodCases(root: string): Case[] {
  const uris = (dir: string, id: string, sep: string, suffixes: string[], ext: string) =>
    suffixes.map((s) => `${root}${dir}${id}${sep}${s}${ext}`);
  const images = (list: string[]) => ({ flair: list[0], t1: list[1], t1ce: list[2], t2: list[3] });
  const c20 = uris(
    "BraTS20_Training_001/",
    "BraTS20_Training_001",
    "_",
    [...OLD, "seg"],
    ".nii.gz",
  );
  const c20b = uris("BraTS20_Training_002/", "BraTS20_Training_002", "_", OLD, ".nii.gz");
  const c21 = uris("", "BraTS2021_00000", "_", [...OLD, "seg"], ".nii");
  const c23 = uris("BraTS-GLI-00000-000/", "BraTS-GLI-00000-000", "-", [...NEW, "seg"], ".nii.gz");
  const c23b = uris("", "BraTS-MEN-00004-000", "-", [...NEW, "seg"], ".nii");
  return [
    {
      id: "BraTS-GLI-00000-000",
      naming: "brats2023",
      enhancingLabel: 3,
      images: images(c23),
      seg: c23[4],
      shape: [7, 6, 5],
      spacing: [1, 1, 1],
    },
    {
      id: "BraTS-MEN-00004-000",
      naming: "brats2023",
      enhancingLabel: 3,
      images: images(c23b),
      seg: c23b[4],
      shape: SHAPE,
      spacing: [1, 1, 1],
    },
    {
      id: "BraTS2021_00000",
      naming: "brats2021",
      enhancingLabel: 4,
      images: images(c21),
      seg: c21[4],
      shape: SHAPE,
      spacing: [1, 1.5, 2],
    },
    {
      id: "BraTS20_Training_001",
      naming: "brats2021",
      enhancingLabel: 4,
      images: images(c20),
      seg: c20[4],
      shape: SHAPE,
      spacing: [1, 1, 1],
    },
    {
      id: "BraTS20_Training_002",
      naming: "brats2021",
      enhancingLabel: 4,
      images: images(c20b),
      shape: SHAPE,
      spacing: [1, 1, 1],
    },
  ];
}

/** Cases each wrong in one way, beside one good case. */
function problemDataset(): Dataset {
  const ds: Dataset = new Map();
  addCase(ds, "good/", "BraTS20_Training_001", "_", [...OLD, "seg"]);
  // No t2.
  addCase(ds, "missing/", "BraTS20_Training_010", "_", ["flair", "t1", "t1ce", "seg"]);
  // No t1c (t1ce) in the 2023 naming.
  addCase(ds, "missing/", "BraTS-GLI-00009-000", "-", ["t2f", "t1n", "t2w", "seg"], ".nii");
  // t1ce on another grid size.
  addCase(ds, "dims/", "BraTS20_Training_011", "_", ["flair", "t1", "t2", "seg"]);
  addCase(ds, "dims/", "BraTS20_Training_011", "_", ["t1ce"], ".nii.gz", [6, 5, 3]);
  // seg on another grid size.
  addCase(ds, "dims/", "BraTS20_Training_016", "_", OLD);
  addCase(ds, "dims/", "BraTS20_Training_016", "_", ["seg"], ".nii.gz", [5, 6, 4]);
  // t2 shifted by half a voxel: same dims, another affine.
  const shifted = LPS.map((row) => [...row]);
  shifted[0][3] += 0.5;
  addCase(ds, "affine/", "BraTS20_Training_012", "_", ["flair", "t1", "t1ce", "seg"]);
  addCase(ds, "affine/", "BraTS20_Training_012", "_", ["t2"], ".nii.gz", SHAPE, shifted);
  // flair both gzipped and not.
  addCase(ds, "dup/", "BraTS20_Training_013", "_", [...OLD, "seg"]);
  addCase(ds, "dup/", "BraTS20_Training_013", "_", ["flair"], ".nii");
  // A t1 that is not NIfTI at all, and a seg cut short inside its gzip stream.
  addCase(ds, "broken/", "BraTS20_Training_014", "_", ["flair", "t1ce", "t2", "seg"]);
  ds.set("broken/BraTS20_Training_014_t1.nii.gz", new TextEncoder().encode("<html>403</html>"));
  addCase(ds, "broken/", "BraTS20_Training_015", "_", OLD);
  ds.set("broken/BraTS20_Training_015_seg.nii.gz", volume("x.nii.gz").subarray(0, 30));
  return ds;
}

async function writeLocal(root: string, ds: Dataset): Promise<void> {
  for (const [rel, bytes] of ds) {
    const path = join(root, rel);
    await Deno.mkdir(join(path, ".."), { recursive: true });
    await Deno.writeFile(path, bytes);
  }
}

async function writeS3(prefix: string, ds: Dataset): Promise<void> {
  await Promise.all([...ds].map(([rel, bytes]) => putObject(`${prefix}${rel}`, bytes)));
}

/** A temporary folder removed when disposed: `await using tmp = await tempDir()`. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "cases-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Checks {@linkcode problemDataset}'s listing: one good case, each problem named. */
function checkProblems(listing: CaseListing, root: string): void {
  assertEquals(listing.cases.map((c) => c.id), ["BraTS20_Training_001"]);
  assertEquals(listing.cases[0].images.t1, `${root}good/BraTS20_Training_001_t1.nii.gz`);
  const byId = new Map(listing.problems.map((p) => [p.id, p.error]));
  assertEquals([...byId.keys()], [
    "BraTS-GLI-00009-000",
    "BraTS20_Training_010",
    "BraTS20_Training_011",
    "BraTS20_Training_012",
    "BraTS20_Training_013",
    "BraTS20_Training_014",
    "BraTS20_Training_015",
    "BraTS20_Training_016",
  ]);
  const expect = (id: string, ...parts: string[]) => {
    const error = byId.get(id)!;
    assertStringIncludes(error, `"${id}"`);
    for (const part of parts) assertStringIncludes(error, part);
  };
  expect("BraTS20_Training_010", "missing modality t2", "BraTS20_Training_010_t2.nii.gz)");
  expect("BraTS-GLI-00009-000", "missing modality t1ce", "BraTS-GLI-00009-000-t1c.nii)");
  expect("BraTS20_Training_011", "t1ce", "dims [6,5,3]", "[6,5,4]");
  expect("BraTS20_Training_016", "seg", "dims [5,6,4]");
  expect("BraTS20_Training_012", "affine of t2", "differs", "0.500");
  expect(
    "BraTS20_Training_013",
    "more than one file for flair",
    `${root}dup/BraTS20_Training_013_flair.nii,`,
    `${root}dup/BraTS20_Training_013_flair.nii.gz`,
  );
  expect("BraTS20_Training_014", `${root}broken/BraTS20_Training_014_t1.nii.gz`);
  expect("BraTS20_Training_015", `${root}broken/BraTS20_Training_015_seg.nii.gz`, "truncated");
  // Only the file at fault is named, not its case's other files.
  assert(!byId.get("BraTS20_Training_014")!.includes("_flair"), byId.get("BraTS20_Training_014"));
}

// ---------------------------------------------------------------------------------------------
// File names

Deno.test("parseCaseFileName() reads the 2018–2021 naming, t1 apart from t1ce", () => {
  assertEquals(parseCaseFileName("BraTS20_Training_001_flair.nii.gz"), {
    id: "BraTS20_Training_001",
    naming: "brats2021",
    part: "flair",
  });
  assertEquals(parseCaseFileName("BraTS20_Training_001_t1.nii.gz")?.part, "t1");
  assertEquals(parseCaseFileName("BraTS20_Training_001_t1ce.nii.gz")?.part, "t1ce");
  assertEquals(parseCaseFileName("BraTS20_Training_001_t1ce.nii")?.part, "t1ce");
  assertEquals(parseCaseFileName("BraTS20_Training_001_t2.nii")?.part, "t2");
  assertEquals(parseCaseFileName("BraTS20_Training_001_seg.nii.gz")?.part, "seg");
  assertEquals(parseCaseFileName("BraTS2021_00000_t1ce.nii.gz"), {
    id: "BraTS2021_00000",
    naming: "brats2021",
    part: "t1ce",
  });
  // Ids with underscores and dashes, and an id that ends like a modality.
  assertEquals(parseCaseFileName("Brats18_2013_0_1_t1.nii.gz")?.id, "Brats18_2013_0_1");
  assertEquals(parseCaseFileName("my-site_case-7_t2.nii.gz")?.id, "my-site_case-7");
  assertEquals(parseCaseFileName("case_t1_t1ce.nii.gz"), {
    id: "case_t1",
    naming: "brats2021",
    part: "t1ce",
  });
  assertEquals(parseCaseFileName("case_t1ce_t1.nii.gz"), {
    id: "case_t1ce",
    naming: "brats2021",
    part: "t1",
  });
});

Deno.test("parseCaseFileName() maps the 2023+ suffixes onto the model's modalities", () => {
  const parts = ["t2f", "t1n", "t1c", "t2w", "seg"].map((s) =>
    parseCaseFileName(`BraTS-GLI-00000-000-${s}.nii.gz`)
  );
  assertEquals(parts.map((p) => p?.part), ["flair", "t1", "t1ce", "t2", "seg"]);
  assertEquals(parts.map((p) => p?.id), Array(5).fill("BraTS-GLI-00000-000"));
  assertEquals(parts.map((p) => p?.naming), Array(5).fill("brats2023"));
  assertEquals(parseCaseFileName("BraTS-MEN-00004-000-t1c.nii"), {
    id: "BraTS-MEN-00004-000",
    naming: "brats2023",
    part: "t1ce",
  });
  assertEquals(parseCaseFileName("site_a-case_1-t2w.nii.gz")?.id, "site_a-case_1");
});

Deno.test("parseCaseFileName() ignores names that are not BraTS volumes", () => {
  for (
    const name of [
      "README.md",
      "name_mapping.csv",
      "BraTS20_Training_001_flair.nii.gz.md5",
      "BraTS20_Training_001_flair.json",
      "BraTS20_Training_001_flair.nii.bz2",
      "BraTS20_Training_001_dwi.nii.gz",
      "BraTS20_Training_001_t1c.nii.gz", // 2023 suffix in the 2021 naming
      "BraTS-GLI-00000-000-t1ce.nii.gz", // 2021 suffix in the 2023 naming
      "BraTS-GLI-00000-000-flair.nii.gz",
      "BraTS20_Training_001_T1.nii.gz",
      "BraTS20_Training_001-t1.nii.gz",
      "_t1.nii.gz", // no id
      "-t2w.nii.gz",
      "t1.nii.gz",
      "BraTS20_Training_001_t1.nii.gz/",
      "._BraTS20_Training_001_t1.nii.gz", // macOS resource fork
      ".BraTS-GLI-00000-000-t2f.nii.gz",
    ]
  ) assertEquals(parseCaseFileName(name), undefined, name);
});

// ---------------------------------------------------------------------------------------------
// Local folders

Deno.test("findCases() lists every naming and layout in a local folder, with shape and spacing", async () => {
  await using tmp = await tempDir();
  await writeLocal(tmp.path, goodDataset());
  const listing = await findCases(tmp.path);
  assertEquals(listing.problems, []);
  assertEquals(listing.cases, expectedGoodCases(`${tmp.path}/`));
  // A trailing slash and a file:// URL find the same cases.
  assertEquals((await findCases(`${tmp.path}/`)).cases.map((c) => c.id), [
    "BraTS-GLI-00000-000",
    "BraTS-MEN-00004-000",
    "BraTS2021_00000",
    "BraTS20_Training_001",
    "BraTS20_Training_002",
  ]);
  const viaUrl = await findCases(`file://${tmp.path}`);
  assertEquals(viaUrl.cases.length, 5);
  assert(viaUrl.cases[0].images.flair.startsWith("file://"), viaUrl.cases[0].images.flair);
});

Deno.test("findCases() lists one case folder, and an empty or missing folder as empty", async () => {
  await using tmp = await tempDir();
  await writeLocal(tmp.path, goodDataset());
  const one = await findCases(join(tmp.path, "BraTS-GLI-00000-000"));
  assertEquals(one.cases.map((c) => [c.id, c.enhancingLabel]), [["BraTS-GLI-00000-000", 3]]);
  await Deno.mkdir(join(tmp.path, "empty"));
  assertEquals(await findCases(join(tmp.path, "empty")), { cases: [], problems: [] });
  assertEquals(await findCases(join(tmp.path, "nowhere")), { cases: [], problems: [] });
});

Deno.test("findCases() reports each broken case by name and still lists the good ones", async () => {
  await using tmp = await tempDir();
  await writeLocal(tmp.path, problemDataset());
  checkProblems(await findCases(tmp.path), `${tmp.path}/`);
  // A tolerance wider than the half-voxel shift accepts case 012.
  const lenient = await findCases(tmp.path, { affineTolerance: 0.6, concurrency: 1 });
  assertEquals(lenient.cases.map((c) => c.id), ["BraTS20_Training_001", "BraTS20_Training_012"]);
});

Deno.test("findCases({ checkHeaders: false }) lists cases without reading volumes", async () => {
  await using tmp = await tempDir();
  await writeLocal(tmp.path, problemDataset());
  const listing = await findCases(tmp.path, { checkHeaders: false });
  // Dims, affines and contents go unchecked; missing and duplicate files are still problems.
  assertEquals(listing.cases.map((c) => c.id), [
    "BraTS20_Training_001",
    "BraTS20_Training_011",
    "BraTS20_Training_012",
    "BraTS20_Training_014",
    "BraTS20_Training_015",
    "BraTS20_Training_016",
  ]);
  assertEquals(listing.problems.map((p) => p.id), [
    "BraTS-GLI-00009-000",
    "BraTS20_Training_010",
    "BraTS20_Training_013",
  ]);
  for (const c of listing.cases) {
    assertEquals([c.shape, c.spacing], [undefined, undefined]);
    assert(!("shape" in c) && !("spacing" in c), JSON.stringify(c));
  }
});

// ---------------------------------------------------------------------------------------------
// S3

Deno.test("findCases() on s3:// lists the same cases, reading headers by range requests", async () => {
  await using s3 = await startS3rver({ buckets: ["brats"] });
  await writeS3("s3://brats/data/", goodDataset());
  // A case whose volumes are far larger than a header read, to see what reading headers fetches.
  const big = [48, 48, 32];
  const bigDs: Dataset = new Map();
  for (const s of [...OLD, "seg"]) {
    const name = `BraTS20_Training_099_${s}.nii.gz`;
    const n = big.reduce((a, b) => a * b, 1);
    let x = 2463534242;
    const noise = Float32Array.from({ length: n }, () => { // xorshift: incompressible
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) / 2 ** 32;
    });
    bigDs.set(name, encodeNifti(noise, "float32", createNiftiHeader(big, LPS), { name }));
  }
  // And a case whose flair is a large file that is not NIfTI: its first bytes are enough to say so.
  addCase(bigDs, "", "BraTS20_Training_098", "_", ["t1", "t1ce", "t2"]);
  bigDs.set("BraTS20_Training_098_flair.nii.gz", new Uint8Array(100_000).fill(0x41));
  await writeS3("s3://brats/big/", bigDs);
  const bigSize = bigDs.get("BraTS20_Training_099_flair.nii.gz")!.length;
  assert(bigSize > 200_000, `${bigSize}`);

  for (const prefix of ["s3://brats/data/", "s3://brats/data"]) {
    const listing = await findCases(prefix);
    assertEquals(listing.problems, []);
    assertEquals(listing.cases, expectedGoodCases("s3://brats/data/"));
  }

  s3.requests.length = 0;
  const listing = await findCases("s3://brats/big");
  assertEquals(listing.problems.map((p) => p.id), ["BraTS20_Training_098"]);
  assertStringIncludes(listing.problems[0].error, "BraTS20_Training_098_flair.nii.gz");
  assertEquals(listing.cases.map((c) => [c.id, c.shape, c.spacing]), [
    ["BraTS20_Training_099", big, [1, 1, 1]],
  ]);
  // One GET per file, each answered 206 Partial Content: no file was downloaded whole.
  const gets = s3.requests.filter((r) => r.method === "GET" && r.path.startsWith("/brats/big/"));
  assertEquals(
    gets.map((r) => r.path).sort(),
    [...bigDs.keys()].map((k) => `/brats/big/${k}`).sort(),
  );
  assertEquals(gets.map((r) => r.status), Array(bigDs.size).fill(206));
  // Whereas a whole read is answered 200, so the status tells them apart.
  await getObject(listing.cases[0].images.t2);
  assertEquals(s3.requests.at(-1)?.status, 200);
});

Deno.test("findCases() on s3:// reports broken cases by URI and lists the good ones", async () => {
  await using _s3 = await startS3rver({ buckets: ["brats"] });
  await writeS3("s3://brats/bad/", problemDataset());
  checkProblems(await findCases("s3://brats/bad/", { concurrency: 3 }), "s3://brats/bad/");
});
