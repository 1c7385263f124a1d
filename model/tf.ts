/**
 * The one place the project gets TensorFlow.js from. The umbrella package, because it registers
 * every op's gradient (tfjs-core alone registers none, and its ESM build cannot be imported piecewise
 * by Deno: its files import each other without extensions).
 * @module
 */
export * from "@tensorflow/tfjs";
