/**
 * NIfTI fixtures written, and files read, by nibabel (Debian's python3-nibabel under
 * /usr/bin/python3): an implementation independent of pipeline/nifti.ts to check it against.
 * @module
 */

/** Debian's python, which has nibabel (the `python3` on PATH may not). */
export const PYTHON = "/usr/bin/python3";

/** Whether nibabel can be imported; the cross-checks are skipped without it. */
export const HAS_NIBABEL: boolean = (() => {
  try {
    return new Deno.Command(PYTHON, {
      args: ["-c", "import nibabel"],
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } catch {
    return false;
  }
})();

/** What nibabel says about one fixture it wrote. */
export interface NibabelFixture {
  /** Absolute path of the file. */
  path: string;
  version: 1 | 2;
  littleEndian: boolean;
  gzip: boolean;
  dims: number[];
  /** `header.get_zooms()`. */
  pixdim: number[];
  datatype: string;
  affine: number[][];
  qformCode: number;
  sformCode: number;
  /** `header.get_slope_inter()`: null when the data is not scaled. */
  slope: number | null;
  inter: number | null;
  xyztUnits: number;
  /** Unscaled voxels, x fastest; null for NaN and ±Infinity. */
  raw: (number | null)[];
  /** `get_fdata()`, x fastest; null for NaN and ±Infinity. */
  scaled: (number | null)[];
  /** Of the scaled data (null when it holds non-finite values). */
  min: number | null;
  max: number | null;
  mean: number | null;
  /** Flat index of the first non-finite voxel and how many there are. */
  nonFinite: { count: number; first: number };
}

const WRITE_SCRIPT = String.raw`
import gzip, json, os, sys
import numpy as np
import nibabel as nib

out = sys.argv[1]
results = {}

def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K

def affine(R, zooms, offset):
    A = np.eye(4)
    A[:3, :3] = R @ np.diag(zooms)
    A[:3, 3] = offset
    return A

ROTATED = affine(rotation([1, 2, 3], 25), [1.5, 2.0, 2.5], [-90.5, 12.25, 30.0])
FLIPPED = affine(np.diag([-1.0, 1.0, 1.0]) @ rotation([0, 0, 1], 10), [1.0, 1.2, 3.0], [5, -6, 7])
SHEARED = np.array([[1.1, 0.2, 0.0, -50], [0.1, -0.9, 0.3, 60], [0.0, 0.05, 2.2, -70], [0, 0, 0, 1]])

def values(dtype, n):
    i = np.arange(n, dtype=np.float64)
    return {
        'uint8': (i * 37) % 256,
        'int8': (i * 37) % 256 - 128,
        'int16': (i * 131) % 65536 - 32768,
        'uint16': (i * 300) % 65536,
        'int32': i * 100003 - 10**7,
        'uint32': 3 * 10**9 + i * 1000,
        'float32': np.sin(i) * 100,
        'float64': np.cos(i) * 1e3 + 1e-3 * i,
    }[dtype]

def clean(a):
    return [None if not np.isfinite(v) else (int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)) for v in a]

def make(name, dtype, shape=(7, 6, 5), version=1, endian='<', gz=False, sform=ROTATED, sform_code=2,
         qform=ROTATED, qform_code=1, zooms=None, slope=None, inter=None, units=10, nonfinite=(),
         pixdim0=None, patch=None):
    H = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    hdr = H(endianness=endian)
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    if qform is not None:
        hdr.set_qform(qform, code=min(qform_code, 5))
    hdr['qform_code'] = qform_code
    if sform is not None:
        hdr.set_sform(sform, code=min(sform_code, 5))
    hdr['sform_code'] = sform_code
    if zooms is not None:  # after set_qform, which sets pixdim from the qform
        hdr.set_zooms(tuple(zooms) + (1.0,) * (len(shape) - len(zooms)))
    hdr['xyzt_units'] = units
    hdr['vox_offset'] = 352 if version == 1 else 544
    if slope is not None:
        hdr['scl_slope'] = slope
    if inter is not None:
        hdr['scl_inter'] = inter
    if pixdim0 is not None:
        pd = hdr['pixdim'].copy(); pd[0] = pixdim0; hdr['pixdim'] = pd
    if patch:
        for key, index, value in patch:
            field = hdr[key].copy() if index is not None else None
            if index is None:
                hdr[key] = value
            else:
                field[index] = value; hdr[key] = field
    n = int(np.prod(shape))
    v = values(dtype, n)
    for k in nonfinite:
        v[k] = [np.nan, np.inf, -np.inf][k % 3]
    data = v.astype(hdr.get_data_dtype()).tobytes()
    blob = hdr.binaryblock + b'\0' * 4 + data
    path = os.path.join(out, name + ('.nii.gz' if gz else '.nii'))
    with open(path, 'wb') as f:
        f.write(gzip.compress(blob) if gz else blob)
    img = nib.load(path)
    raw = np.asanyarray(img.dataobj.get_unscaled()).ravel(order='F').astype(np.float64)
    scaled = img.get_fdata().ravel(order='F')
    finite = bool(np.all(np.isfinite(scaled)))
    bad = np.flatnonzero(~np.isfinite(scaled))
    slope_, inter_ = img.header.get_slope_inter()
    results[name] = dict(
        path=path, version=version, littleEndian=(endian == '<'), gzip=gz,
        dims=[int(d) for d in img.shape], pixdim=[float(z) for z in img.header.get_zooms()],
        datatype=img.get_data_dtype().name, affine=img.affine.tolist(),
        qformCode=int(img.header['qform_code']), sformCode=int(img.header['sform_code']),
        slope=slope_, inter=inter_, xyztUnits=int(img.header['xyzt_units']),
        raw=clean(raw), scaled=clean(scaled),
        min=float(scaled.min()) if finite else None, max=float(scaled.max()) if finite else None,
        mean=float(scaled.mean()) if finite else None,
        nonFinite=dict(count=int(bad.size), first=int(bad[0]) if bad.size else -1),
    )

TYPES = ['uint8', 'int8', 'int16', 'uint16', 'int32', 'uint32', 'float32', 'float64']
for t in TYPES:
    make('v1_' + t, t)
    make('v2_' + t, t, version=2)
for t in ['uint16', 'int16', 'float32', 'float64']:
    make('be1_' + t, t, endian='>')
for t in ['int32', 'float32']:
    make('be2_' + t, t, endian='>', version=2)
make('gz1_int16', 'int16', gz=True)
make('gz2_float32', 'float32', gz=True, version=2)
make('gzbe1_float64', 'float64', gz=True, endian='>')
make('4d_float32', 'float32', shape=(7, 6, 5, 3))
make('4d_gz_int16', 'int16', shape=(7, 6, 5, 2), gz=True, version=2)
make('scl_int16', 'int16', slope=0.5, inter=-3)
make('scl_uint8_gz', 'uint8', slope=2, inter=10, gz=True)
make('scl_float32_v2', 'float32', slope=1.5, inter=0.25, version=2)
make('scl_slope0', 'int16', slope=0, inter=5)
make('scl_slope_nan', 'int16', slope=np.nan, inter=5)
make('sform_only', 'int16', sform=SHEARED, qform=FLIPPED, qform_code=0)
make('qform_only', 'int16', sform=SHEARED, sform_code=0, qform=FLIPPED, qform_code=1)
make('qform_only_be2', 'float32', sform=SHEARED, sform_code=0, qform=FLIPPED, qform_code=2,
     version=2, endian='>')
make('qform_rotated', 'int16', sform=None, sform_code=0, qform=ROTATED, qform_code=1)
make('neither', 'int16', sform=SHEARED, sform_code=0, qform=FLIPPED, qform_code=0, zooms=(2, 3, 4))
make('neither_2d', 'uint8', shape=(7, 6), sform=None, sform_code=0, qform=None, qform_code=0,
     zooms=(2, 3))
make('neither_negative_pixdim', 'int16', sform=None, sform_code=0, qform=None, qform_code=0,
     zooms=(2, 3, 4), patch=[('pixdim', 2, -3.0)])
make('pixdim0_zero', 'int16', sform=None, sform_code=0, qform=FLIPPED, qform_code=1, pixdim0=0)
make('pixdim0_minus2', 'int16', sform=None, sform_code=0, qform=FLIPPED, qform_code=1, pixdim0=-2)
make('bad_sform_code', 'int16', sform=SHEARED, sform_code=9, qform=ROTATED, qform_code=1)
make('quatern_w0', 'int16', sform=None, sform_code=0, qform=affine(np.diag([1.0, -1, -1]), [1, 1, 1], [0, 0, 0]),
     qform_code=1, patch=[('quatern_b', None, np.float32(1.0000001))])
make('dim200_v2', 'int16', shape=(200, 3, 2), version=2)
make('dim200_be2', 'uint8', shape=(200, 3, 2), version=2, endian='>')
make('nonfinite_float32', 'float32', nonfinite=(17, 40, 41, 200))
make('nonfinite_float64_gz', 'float64', nonfinite=(5,), gz=True)
print(json.dumps(results, allow_nan=False))
`;

/** Writes every fixture into `dir` with nibabel and returns what nibabel reads back, by name. */
export async function writeNibabelFixtures(dir: string): Promise<Record<string, NibabelFixture>> {
  return JSON.parse(await runPython(WRITE_SCRIPT, [dir]));
}

/** What nibabel reads from a file we wrote. */
export interface NibabelView {
  dims: number[];
  datatype: string;
  affine: number[][];
  qform: number[][];
  sform: number[][];
  qformCode: number;
  sformCode: number;
  /** All eight pixdim entries as stored. */
  pixdim: number[];
  xyztUnits: number;
  /** null when not finite. */
  sclSlope: number | null;
  sclInter: number | null;
  voxOffset: number;
  magic: string;
  description: string;
  /** Voxels, x fastest (null for non-finite ones). */
  data: (number | null)[];
}

const READ_SCRIPT = String.raw`
import json, sys
import numpy as np
import nibabel as nib

out = []
for path in sys.argv[1:]:
    img = nib.load(path)
    h = img.header
    def num(v):
        v = float(v)
        if not np.isfinite(v):
            return None
        return int(v) if v.is_integer() and abs(v) < 2**53 else v
    out.append(dict(
        dims=[int(d) for d in img.shape], datatype=img.get_data_dtype().name,
        affine=img.affine.tolist(), qform=h.get_qform().tolist(), sform=h.get_sform().tolist(),
        qformCode=int(h['qform_code']), sformCode=int(h['sform_code']),
        pixdim=[float(p) for p in h['pixdim']], xyztUnits=int(h['xyzt_units']),
        sclSlope=num(img.dataobj.slope), sclInter=num(img.dataobj.inter),
        voxOffset=int(img.dataobj.offset), magic=h['magic'].item().decode(),
        description=h['descrip'].item().decode('latin-1'),
        data=[num(v) for v in np.asanyarray(img.dataobj).ravel(order='F')],
    ))
print(json.dumps(out, allow_nan=False))
`;

/** Reads files with nibabel. */
export async function readWithNibabel(paths: string[]): Promise<NibabelView[]> {
  return JSON.parse(await runPython(READ_SCRIPT, paths));
}

async function runPython(script: string, args: string[]): Promise<string> {
  const { success, stdout, stderr } = await new Deno.Command(PYTHON, {
    args: ["-c", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!success) {
    throw new Error(`nibabel script failed:\n${new TextDecoder().decode(stderr)}`);
  }
  return new TextDecoder().decode(stdout);
}
