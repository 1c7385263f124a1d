/**
 * Benchmarks of the network on this machine's backend, each returning one JSON object and taking
 * a `log` callback for progress: memory (what a budget buys the reversible network over its
 * standard twin), speed (training steps, inference and whole cases, against the same network in
 * PyTorch run as a subprocess) and the project's own kernels one by one.
 * @module
 */
export { benchMemory, type BenchMemoryOptions } from "./memory.ts";
export {
  benchSpeed,
  type BenchSpeedOptions,
  BRATS_DIMS,
  type CaseTiming,
  formatSpeed,
  isGpuBackend,
  type SpeedResult,
} from "./speed.ts";
export {
  benchKernels,
  type BenchKernelsOptions,
  depthwiseShapes,
  formatKernels,
  type KernelsResult,
  type KernelTiming,
} from "./kernels.ts";
export {
  PEER_PYTHON,
  PEER_PYTHON_ENV,
  PEER_SCRIPT,
  type PeerArgs,
  peerPython,
  runPeer,
} from "./peer.ts";
