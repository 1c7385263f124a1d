/**
 * Synthetic BraTS-like cases for tests, benchmarks and the embedded demo: a procedural phantom and
 * cases built on a real brain.
 * @module
 */
export * from "./synth.ts";
export * from "./phantom.ts";
