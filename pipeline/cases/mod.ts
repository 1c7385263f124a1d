/**
 * Cases and what training reads from them: finding a dataset's cases (BraTS naming, nnU-Net v2 and
 * MSD `dataset.json` layouts), sharding them over batch workers, preprocessing a case into
 * network-ready arrays, the preprocessed-case cache, seeded randomness, random crops and the
 * worker-thread batch prefetcher.
 * @module
 */
export * from "./cases.ts";
export * from "./datasets.ts";
export * from "./shard.ts";
export * from "./preprocess.ts";
export * from "./case_cache.ts";
export * from "./sampling.ts";
export * from "./prefetch.ts";
export * from "./random.ts";
