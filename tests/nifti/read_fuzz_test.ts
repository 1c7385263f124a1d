/**
 * A seeded fuzzer of NIfTI headers: a few hundred mutations of valid files (NIfTI-1 and NIfTI-2,
 * plain and gzipped) — fields set to edge values, dims permuted, bytes and bits changed, files cut
 * or extended, gzip streams damaged. Every mutated file must be either read or refused with our
 * own error naming the file (never another exception), quickly (no hang), with the same verdict
 * from the in-memory decoder and the header-first reader; every file we accept must agree with
 * nibabel on dims, datatype, affine and statistics (skipped, with a message, without nibabel).
 *
 * Accepted files must also give finite voxel sizes, affine and float32 scaled voxels.
 *
 * A failure names the case's seed: `FUZZ_CASE=<seed> deno test … tests/nifti/read_fuzz_test.ts` reruns
 * that one case alone.
 * @module
 */
import { assert, assertEquals } from "@std/assert";
import { gzipSync } from "node:zlib";
import {
  createNiftiHeader,
  decodeNifti,
  encodeNifti,
  scaledData,
  volumeStats,
} from "../../pipeline/nifti/mod.ts";
import { readNifti } from "../../pipeline/nifti/object.ts";
import { seededRandom } from "../../pipeline/cases/random.ts";
import { HAS_NIBABEL, PYTHON } from "../_nifti_fixtures.ts";

const SEED = 20261203;
/** `FUZZ_CASES=5000` runs a deeper search (the suite runs 320, well under its 30 s budget). */
const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 320);
/** Small enough that a mutated dim cannot make a case slow. */
const MAX_BYTES = 16 * 2 ** 20;
/** A case taking longer than this is reported as a hang. */
const HANG_MS = 2000;

type FieldType = "i16" | "i32" | "i64" | "f32" | "f64" | "u8";
interface Field {
  name: string;
  at: number;
  type: FieldType;
}

/** The header fields this project reads, per version, with their offsets and types. */
function fieldsOf(version: 1 | 2): Field[] {
  const v1 = version === 1;
  const int: FieldType = v1 ? "i16" : "i64";
  const real: FieldType = v1 ? "f32" : "f64";
  const size = v1 ? 4 : 8;
  const f = (name: string, at: number, type: FieldType): Field => ({ name, at, type });
  const out: Field[] = [
    f("sizeof_hdr", 0, "i32"),
    f("datatype", v1 ? 70 : 12, "i16"),
    f("bitpix", v1 ? 72 : 14, "i16"),
    f("vox_offset", v1 ? 108 : 168, v1 ? "f32" : "i64"),
    f("scl_slope", v1 ? 112 : 176, real),
    f("scl_inter", v1 ? 116 : 184, real),
    f("qform_code", v1 ? 252 : 344, v1 ? "i16" : "i32"),
    f("sform_code", v1 ? 254 : 348, v1 ? "i16" : "i32"),
    f("xyzt_units", v1 ? 123 : 500, v1 ? "u8" : "i32"),
  ];
  for (let i = 0; i < 8; i++) out.push(f(`dim[${i}]`, (v1 ? 40 : 16) + i * (v1 ? 2 : 8), int));
  for (let i = 0; i < 8; i++) out.push(f(`pixdim[${i}]`, (v1 ? 76 : 104) + i * size, real));
  ["quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"].forEach((n, i) =>
    out.push(f(n, (v1 ? 256 : 352) + i * size, real))
  );
  for (let i = 0; i < 12; i++) out.push(f(`srow[${i}]`, (v1 ? 280 : 400) + i * size, real));
  return out;
}

const INTS = [0, 1, -1, 2, 3, 4, 5, 6, 7, 8, 16, 64, 127, 128, 255, 256, 512, 768, 32767, -32768];
const INT64S = [2 ** 31, 2 ** 53, -(2 ** 53), 2 ** 62];
const REALS = [
  0,
  -0,
  1,
  -1,
  0.5,
  2,
  1e-40,
  1e-30,
  1e30,
  3e38,
  -3e38,
  1e300,
  NaN,
  Infinity,
  -Infinity,
];

function write(view: DataView, field: Field, value: number, le: boolean): void {
  switch (field.type) {
    case "u8":
      return view.setUint8(field.at, value & 0xff);
    case "i16":
      return view.setInt16(field.at, value, le);
    case "i32":
      return view.setInt32(field.at, value, le);
    case "i64":
      return view.setBigInt64(field.at, BigInt(Math.trunc(value)), le);
    case "f32":
      return view.setFloat32(field.at, value, le);
    case "f64":
      return view.setFloat64(field.at, value, le);
  }
}

/** A valid file to mutate. */
interface Base {
  label: string;
  version: 1 | 2;
  bytes: Uint8Array;
}

/** A 15° rotation about (1, 2, 2)/3 as quatern_b, c, d, with qoffset; sform a shear. */
const QUATERN = [1, 2, 2].map((c) => (c / 3) * Math.sin((15 * Math.PI) / 360));
const SHEAR = [[1.1, 0.2, 0, -50], [0.1, -0.9, 0.3, 60], [0, 0.05, 2.2, -70], [0, 0, 0, 1]];

/** A NIfTI-1 file with both a qform (code 1) and an sform (code 2), so mutations can reach each. */
function nifti1(datatype: "int16" | "float32"): Uint8Array {
  const like = createNiftiHeader([7, 6, 5], SHEAR, datatype);
  const data = datatype === "int16"
    ? Int16Array.from({ length: 210 }, (_, i) => (i * 131) % 2000 - 300)
    : Float32Array.from({ length: 210 }, (_, i) => Math.sin(i) * 100);
  const bytes = encodeNifti(data, datatype, like, { gzip: false });
  const view = new DataView(bytes.buffer);
  view.setInt16(252, 1, true);
  QUATERN.forEach((q, i) => view.setFloat32(256 + 4 * i, q, true));
  [-90.5, 12.25, 30].forEach((o, i) => view.setFloat32(268 + 4 * i, o, true));
  [1.5, 2, 2.5].forEach((p, i) => view.setFloat32(80 + 4 * i, p, true));
  return bytes;
}

/** The same volume as a NIfTI-2 file (540-byte header, int64 dims, float64 reals, data at 544). */
function nifti2(from: Uint8Array): Uint8Array {
  const src = new DataView(from.buffer, from.byteOffset, from.byteLength);
  const dataBytes = from.length - 352;
  const out = new Uint8Array(544 + dataBytes);
  const dst = new DataView(out.buffer);
  dst.setInt32(0, 540, true);
  out.set([0x6e, 0x2b, 0x32, 0, 13, 10, 26, 10], 4);
  dst.setInt16(12, src.getInt16(70, true), true);
  dst.setInt16(14, src.getInt16(72, true), true);
  for (let i = 0; i < 8; i++) {
    dst.setBigInt64(16 + 8 * i, BigInt(src.getInt16(40 + 2 * i, true)), true);
    dst.setFloat64(104 + 8 * i, src.getFloat32(76 + 4 * i, true), true);
  }
  dst.setBigInt64(168, 544n, true);
  dst.setFloat64(176, src.getFloat32(112, true), true);
  dst.setFloat64(184, src.getFloat32(116, true), true);
  dst.setInt32(344, src.getInt16(252, true), true);
  dst.setInt32(348, src.getInt16(254, true), true);
  for (let i = 0; i < 18; i++) dst.setFloat64(352 + 8 * i, src.getFloat32(256 + 4 * i, true), true);
  dst.setInt32(500, src.getUint8(123), true);
  out.set(from.subarray(352), 544);
  return out;
}

function bases(): Base[] {
  const int16 = nifti1("int16");
  const float32 = nifti1("float32");
  return [
    { label: "v1-int16", version: 1, bytes: int16 },
    { label: "v1-float32", version: 1, bytes: float32 },
    { label: "v2-int16", version: 2, bytes: nifti2(int16) },
  ];
}

/** One mutated file: what was done, and the bytes. */
interface Mutant {
  seed: number;
  name: string;
  steps: string[];
  bytes: Uint8Array;
}

/** Mutates one of `bases` with 1 to 3 steps drawn from `seed`. */
function mutate(seed: number, all: Base[]): Mutant {
  const rand = seededRandom(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const base = pick(all);
  let bytes = new Uint8Array(base.bytes);
  const headerSize = base.version === 1 ? 348 : 540;
  const fields = fieldsOf(base.version);
  const steps: string[] = [];
  const count = 1 + Math.floor(rand() * 3);
  for (let s = 0; s < count; s++) {
    const view = new DataView(bytes.buffer);
    const le = view.getInt32(0, true) === 348 || view.getInt32(0, true) === 540;
    // Cutting or extending the file comes last, so later steps always find a whole header.
    const r = s < count - 1 ? rand() * 0.84 : rand();
    if (r < 0.45) {
      const field = pick(fields);
      const isInt = field.type !== "f32" && field.type !== "f64";
      const value = isInt
        ? (field.type === "i64" && rand() < 0.2 ? pick(INT64S) : pick(INTS))
        : (rand() < 0.8 ? pick(REALS) : (rand() - 0.5) * 10 ** Math.floor(rand() * 8 - 3));
      write(view, field, value, le);
      steps.push(`${field.name}=${value}`);
    } else if (r < 0.5) {
      // Scalings, some of which overflow float32 on this data (|raw| up to 1691).
      const [slope, inter] = pick([
        [3e38, 0],
        [1e36, 0],
        [-1e37, 5],
        [2, 3e38],
        [1e-3, -2],
        [
          0,
          5,
        ],
        [NaN, 1],
        [1, Infinity],
        [0.5, -3],
      ]);
      write(view, fields.find((f) => f.name === "scl_slope")!, slope, le);
      write(view, fields.find((f) => f.name === "scl_inter")!, inter, le);
      steps.push(`scl_slope=${slope}, scl_inter=${inter}`);
    } else if (r < 0.6) {
      // Dims that keep 210 voxels, so the data size still matches: a different grid nibabel reads.
      const dims = pick([[6, 7, 5], [5, 6, 7], [210, 1, 1], [1, 1, 210], [35, 6, 1], [7, 30, 1]]);
      const fourD = rand() < 0.3;
      const dimField = fields.filter((f) => f.name.startsWith("dim["));
      write(view, dimField[0], fourD ? 4 : 3, le);
      dims.forEach((d, i) => write(view, dimField[i + 1], d, le));
      if (fourD) write(view, dimField[4], 1, le);
      steps.push(`dims=${dims}${fourD ? ",1" : ""}`);
    } else if (r < 0.72) {
      const at = Math.floor(rand() * headerSize);
      const value = Math.floor(rand() * 256);
      bytes[at] = value;
      steps.push(`byte[${at}]=${value}`);
    } else if (r < 0.84) {
      const at = Math.floor(rand() * headerSize);
      const bit = Math.floor(rand() * 8);
      bytes[at] ^= 1 << bit;
      steps.push(`bit ${bit} of byte ${at}`);
    } else if (r < 0.92) {
      const length = Math.floor(rand() * bytes.length);
      bytes = bytes.slice(0, length);
      steps.push(`cut to ${length} bytes`);
    } else {
      const extra = 1 + Math.floor(rand() * 64);
      const longer = new Uint8Array(bytes.length + extra);
      longer.set(bytes);
      bytes = longer;
      steps.push(`${extra} bytes appended`);
    }
  }
  let name = `${base.label}-${seed}.nii`;
  if (rand() < 0.4) {
    bytes = new Uint8Array(gzipSync(bytes));
    name += ".gz";
    steps.push("gzipped");
    if (rand() < 0.15) {
      const at = Math.floor(rand() * bytes.length);
      bytes[at] ^= 0xff;
      steps.push(`gzip byte ${at} flipped`);
    }
  }
  return { seed, name, steps, bytes };
}

/** What one case came to. */
interface Verdict {
  accepted: boolean;
  /** The error's class and message when refused. */
  error?: string;
}

/** An error is ours when it is a SyntaxError, RangeError or TypeError naming the file. */
function ours(e: unknown, path: string): boolean {
  return (e instanceof SyntaxError || e instanceof RangeError || e instanceof TypeError) &&
    (e.message.startsWith(`Cannot read NIfTI "${path}": `) ||
      e.message.startsWith(`Cannot read NIfTI header of "${path}": `));
}

const NIBABEL_SCRIPT = String.raw`
import json, sys, warnings, logging
import numpy as np
import nibabel as nib
warnings.simplefilter('ignore')
logging.getLogger('nibabel').setLevel(logging.CRITICAL)
out = []
for path in sys.argv[1:]:
    try:
        img = nib.load(path)
        data = img.get_fdata()
        out.append(dict(dims=[int(d) for d in img.shape], datatype=img.get_data_dtype().name,
                        affine=img.affine.tolist(), min=float(data.min()), max=float(data.max()),
                        mean=float(data.mean())))
    except Exception as e:
        out.append(dict(error=type(e).__name__ + ': ' + str(e)))
print(json.dumps(out))
`;

interface NibabelRead {
  dims?: number[];
  datatype?: string;
  affine?: number[][];
  min?: number;
  max?: number;
  mean?: number;
  error?: string;
}

function close(a: number, b: number, relative: number): boolean {
  return Math.abs(a - b) <= relative * Math.max(1, Math.abs(a), Math.abs(b));
}

Deno.test(`NIfTI header fuzzer: ${CASES} seeded mutations are read or refused by name, in time, as nibabel reads them`, async () => {
  const only = Deno.env.get("FUZZ_CASE");
  const all = bases();
  for (const b of all) decodeNifti(b.bytes, b.label); // the bases themselves are valid
  const seeds = only ? [Number(only)] : Array.from({ length: CASES }, (_, i) => SEED + i);
  const dir = await Deno.makeTempDir({ prefix: "nifti_fuzz_" });
  const problems: string[] = [];
  const accepted: { mutant: Mutant; path: string; image: ReturnType<typeof decodeNifti> }[] = [];
  let refused = 0;
  let slowest = 0;
  try {
    for (const seed of seeds) {
      const mutant = mutate(seed, all);
      const path = `${dir}/${mutant.name}`;
      const what = `case ${seed} (${mutant.steps.join("; ")})`;
      await Deno.writeFile(path, mutant.bytes);

      const started = performance.now();
      let memory: Verdict;
      let image: ReturnType<typeof decodeNifti> | undefined;
      try {
        image = decodeNifti(mutant.bytes, path, { maxBytes: MAX_BYTES });
        memory = { accepted: true };
        // What the pipeline relies on in every file it accepts.
        const { pixdim, affine } = image.header;
        if (!pixdim.every((p) => Number.isFinite(p)) || !affine.flat().every(Number.isFinite)) {
          problems.push(`${what}: accepted with pixdim ${pixdim}, affine ${affine}`);
        }
        if (!scaledData(image).every(Number.isFinite)) {
          problems.push(`${what}: accepted, but its scaled voxels are not all finite in float32`);
        }
      } catch (e) {
        if (!ours(e, path)) problems.push(`${what}: decodeNifti crashed: ${e}`);
        memory = { accepted: false, error: (e as Error).constructor.name };
      }
      let stored: Verdict;
      try {
        const read = await readNifti(path, { maxBytes: MAX_BYTES });
        if (image && read.data.some((v, i) => !Object.is(v, image!.data[i]))) {
          problems.push(`${what}: readNifti and decodeNifti read different voxels`);
        }
        stored = { accepted: true };
      } catch (e) {
        if (!ours(e, path)) problems.push(`${what}: readNifti crashed: ${e}`);
        stored = { accepted: false, error: (e as Error).constructor.name };
      }
      const ms = performance.now() - started;
      slowest = Math.max(slowest, ms);
      if (ms > HANG_MS) problems.push(`${what}: took ${ms.toFixed(0)} ms`);
      if (memory.accepted !== stored.accepted || memory.error !== stored.error) {
        problems.push(
          `${what}: decodeNifti ${memory.error ?? "accepts"}, readNifti ${
            stored.error ?? "accepts"
          }`,
        );
      }
      if (image && memory.accepted) accepted.push({ mutant, path, image });
      else refused++;
    }
    console.log(
      `fuzzer: ${seeds.length} cases, ${accepted.length} accepted, ${refused} refused, ` +
        `slowest ${slowest.toFixed(1)} ms`,
    );
    assert(only || accepted.length >= 50, `only ${accepted.length} accepted: too few to compare`);
    assert(only || refused >= 50, `only ${refused} refused: the mutations are too mild`);

    if (!HAS_NIBABEL) {
      console.log(
        "fuzzer: nibabel comparison IGNORED: nibabel not found (apt install python3-nibabel, " +
          "or `deno task setup` as root)",
      );
    } else if (accepted.length > 0) {
      const run = await new Deno.Command(PYTHON, {
        args: ["-c", NIBABEL_SCRIPT, ...accepted.map((a) => a.path)],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert(run.success, new TextDecoder().decode(run.stderr));
      const reads: NibabelRead[] = JSON.parse(new TextDecoder().decode(run.stdout));
      assertEquals(reads.length, accepted.length);
      reads.forEach((nib, k) => {
        const { mutant, image } = accepted[k];
        const what = `case ${mutant.seed} (${mutant.steps.join("; ")})`;
        if (nib.error) return problems.push(`${what}: we accept it, nibabel: ${nib.error}`);
        const { header } = image;
        if (header.dims.join() !== nib.dims!.join()) {
          problems.push(`${what}: dims ${header.dims} vs nibabel ${nib.dims}`);
        }
        if (header.datatype !== nib.datatype) {
          problems.push(`${what}: datatype ${header.datatype} vs nibabel ${nib.datatype}`);
        }
        const affineOk = header.affine.every((row, r) =>
          row.every((v, c) => close(v, nib.affine![r][c], 1e-6))
        );
        if (!affineOk) {
          problems.push(
            `${what}: affine ${JSON.stringify(header.affine)} vs nibabel ${
              JSON.stringify(nib.affine)
            }`,
          );
        }
        const stats = volumeStats(image);
        for (const key of ["min", "max", "mean"] as const) {
          // nibabel may scale in float32; 1e-6 relative covers its rounding, not a wrong value.
          if (!close(stats[key], nib[key]!, 1e-6)) {
            problems.push(`${what}: ${key} ${stats[key]} vs nibabel ${nib[key]}`);
          }
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assertEquals(problems, [], `${problems.length} problems:\n${problems.join("\n")}`);
});
