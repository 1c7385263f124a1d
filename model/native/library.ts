/**
 * The two native libraries behind the fast cpu path, opened with Deno FFI: the project's own
 * kernels (`kernels.c`, built by {@linkcode buildKernelLibrary}) and OpenBLAS's `cblas_sgemm`.
 *
 * Each is opened at most once per isolate and independently, so a machine with OpenBLAS but no
 * gcc still gets the fast matrix products, and one with gcc but no OpenBLAS the fast layers.
 * @module
 */
import { buildKernelLibrary } from "./build.ts";

/** `rev_abi_version()` of the `kernels.c` this file was written against. */
const ABI_VERSION = 2;

const KERNEL_SYMBOLS = {
  rev_abi_version: { parameters: [], result: "i32" },
  rev_set_threads: { parameters: ["i32"], result: "void" },
  rev_threads: { parameters: [], result: "i32" },
  rev_dwconv3d: {
    // x, filter, y, n, d, h, w, c, kd, kh, kw, flip
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  rev_dwconv3d_filter_grad: {
    // x, dy, dfilter, n, d, h, w, c, kd, kh, kw
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  rev_group_norm: {
    // x, gamma, beta, y, mean, rstd, n, voxels, c, groups, epsilon, activation
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i64",
      "i32",
      "i32",
      "f32",
      "i32",
    ],
    result: "i32",
  },
  rev_group_norm_grad: {
    // dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta, n, voxels, c, groups, activation
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i64",
      "i32",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  // x|dy, filter, y|dfilter|dx, geometry (18 int32, conv_geom in kernels.c)
  rev_conv3d: { parameters: ["buffer", "buffer", "buffer", "buffer"], result: "i32" },
  rev_conv3d_filter_grad: { parameters: ["buffer", "buffer", "buffer", "buffer"], result: "i32" },
  rev_conv3d_input_grad: { parameters: ["buffer", "buffer", "buffer", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

const BLAS_SYMBOLS = {
  cblas_sgemm: {
    // order, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void" },
  openblas_get_num_threads: { parameters: [], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The symbols of the kernel library, opened. */
export type KernelSymbols = Deno.DynamicLibrary<typeof KERNEL_SYMBOLS>["symbols"];
/** The symbols of OpenBLAS used here, opened. */
export type BlasSymbols = Deno.DynamicLibrary<typeof BLAS_SYMBOLS>["symbols"];

/** A library that opened, or why it did not. */
export type Loaded<T> = { ok: true; symbols: T; detail: string } | { ok: false; why: string };

/**
 * Thread-pool settings given to libgomp and OpenBLAS unless the environment already sets them.
 * Both read them once, when loaded, so they are set just before the first `dlopen`.
 *
 * Why: by default an idle OpenMP thread spins for a while after each parallel region and an idle
 * OpenBLAS thread spins with sched_yield for about 2^28 cycles after each sgemm. With two thread
 * pools and the JavaScript thread on a 2-core machine (and other processes beside them), the
 * spinning threads take the cores the working ones need: a 16³ training step of the reference
 * network measured 2.2–8.0 s with the defaults, 1.1–1.8 s with these, and the process's system
 * time fell from about 3.5 s to 0.6 s.
 */
const THREAD_POOL_ENV: Readonly<Record<string, string>> = Object.freeze({
  OMP_WAIT_POLICY: "PASSIVE",
  OPENBLAS_THREAD_TIMEOUT: "4",
});

function setThreadPoolEnv(): void {
  try {
    for (const [name, value] of Object.entries(THREAD_POOL_ENV)) {
      if (Deno.env.get(name) === undefined) Deno.env.set(name, value);
    }
  } catch {
    // No env permission: the libraries keep their defaults, which are slower but correct.
  }
}

let kernels: Loaded<KernelSymbols> | undefined;
let blas: Loaded<BlasSymbols> | undefined;

/**
 * Builds (first time) and opens the kernel library, with `threads` OpenMP threads. Never throws;
 * the result says why it failed (no gcc, a build error, no FFI permission, ...).
 */
export function loadKernels(threads: number): Loaded<KernelSymbols> {
  if (!kernels) {
    try {
      const path = buildKernelLibrary();
      setThreadPoolEnv();
      const lib = Deno.dlopen(path, KERNEL_SYMBOLS);
      const abi = lib.symbols.rev_abi_version();
      if (abi !== ABI_VERSION) {
        lib.close();
        throw new Error(`"${path}" has ABI version ${abi}, this code needs ${ABI_VERSION}`);
      }
      kernels = { ok: true, symbols: lib.symbols, detail: path };
    } catch (e) {
      kernels = { ok: false, why: oneLine(e) };
    }
  }
  if (kernels.ok) kernels.symbols.rev_set_threads(threads);
  return kernels;
}

/**
 * Opens OpenBLAS (`libopenblas.so.0`, Debian's libopenblas0-pthread) with `threads` threads.
 * Never throws; the result says why it failed.
 */
export function loadBlas(threads: number): Loaded<BlasSymbols> {
  if (!blas) {
    try {
      setThreadPoolEnv();
      const lib = Deno.dlopen("libopenblas.so.0", BLAS_SYMBOLS);
      blas = { ok: true, symbols: lib.symbols, detail: "libopenblas.so.0" };
    } catch (e) {
      blas = { ok: false, why: `libopenblas.so.0: ${oneLine(e)}` };
    }
  }
  if (blas.ok) blas.symbols.openblas_set_num_threads(threads);
  return blas;
}

function oneLine(e: unknown): string {
  const text = (e instanceof Error ? e.message : String(e)).split("\n")[0].trim();
  return text.length > 240 ? `${text.slice(0, 237)}...` : text;
}
