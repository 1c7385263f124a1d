/**
 * What the machine offers the network: the backend it computes on (chosen with its reason), the
 * versions, the optional Debian packages installed by `setup`, and the `--backend tensorflow`
 * binding built from a local libtensorflow wheel. Messages go to `log` callbacks; nothing prints.
 * @module
 */
export * from "./backend.ts";
export * from "./packages.ts";
export * from "./tensorflow.ts";
