/**
 * The network's configuration: typed data with the reference network's values as defaults, saved
 * into every checkpoint so a model can be rebuilt from its file alone.
 * @module
 */

/** Every field that shapes the reversible U-Net. */
export interface NetworkConfig {
  /** Input channels: FLAIR, T1, T1ce, T2. @default 4 */
  inChannels: number;
  /** Output logits: WT, TC, ET, each through its own sigmoid. @default 3 */
  outChannels: number;
  /** Resolution levels; the crop edge must be a multiple of 2^(levels-1). @default 4 */
  levels: number;
  /** Channels at the first level, doubled per level. Must be even (the coupling halves it). @default 16 */
  baseChannels: number;
  /** Reversible blocks per level, in the encoder and in the decoder. @default 2 */
  blocksPerLevel: number;
  /** Inverted-bottleneck expansion t: F and G widen c channels to t·c. @default 4 */
  expansion: number;
  /** GroupNorm uses min(maxGroups, channels) groups. @default 8 */
  maxGroups: number;
  /** Activation after the expand and depthwise norms. @default "relu6" */
  activation: "relu6" | "relu";
  /** GroupNorm epsilon. @default 1e-5 */
  epsilon: number;
  /**
   * Train with the reversible backward pass (recompute block inputs from outputs) instead of
   * ordinary autodiff that stores every activation. Same weights, same gradients. @default true
   */
  reversible: boolean;
}

/** The reference network of shared/design/reference-network.md: 479,955 parameters. */
export const REFERENCE_CONFIG: Readonly<NetworkConfig> = Object.freeze({
  inChannels: 4,
  outChannels: 3,
  levels: 4,
  baseChannels: 16,
  blocksPerLevel: 2,
  expansion: 4,
  maxGroups: 8,
  activation: "relu6",
  epsilon: 1e-5,
  reversible: true,
});

/** Channels at level `l`. */
export function levelChannels(config: NetworkConfig, l: number): number {
  return config.baseChannels * 2 ** l;
}

/** Groups of a GroupNorm on `channels` channels. */
export function normGroups(config: NetworkConfig, channels: number): number {
  return Math.min(config.maxGroups, channels);
}

/**
 * Upper bounds of the configuration's size fields, so that a typo (`"baseChannels": 100000`) is
 * refused by name instead of failing an allocation. levels: a crop edge is at most 512 = 2⁹
 * voxels, so a tenth level is the last that keeps a voxel; blocksPerLevel: the range `bench
 * memory` searches; the widths: far beyond what any accelerator trains (the 16 GiB search finds
 * 464 base channels).
 */
export const CONFIG_LIMITS = Object.freeze({
  levels: 10,
  baseChannels: 4096,
  blocksPerLevel: 65_536,
  expansion: 64,
  inChannels: 256,
  outChannels: 256,
});

/**
 * The most parameters a configuration may have: 2³² (16 GiB of float32 weights, 64 GiB with
 * gradients and Adam's two moments). The reference network has 479,955; the deepest network that
 * `bench memory` finds under 16 GiB, 1.0e9.
 */
export const MAX_PARAMETERS = 2 ** 32;

/**
 * Fills in defaults and checks every field, so a bad configuration fails before any tensor exists.
 * @throws {RangeError} naming the field and the value found
 */
export function resolveConfig(partial: Partial<NetworkConfig> = {}): NetworkConfig {
  const known = new Set(Object.keys(REFERENCE_CONFIG));
  for (const key of Object.keys(partial)) {
    if (!known.has(key)) {
      throw new RangeError(
        `Unknown network configuration field "${key}"; known fields: ${[...known].join(", ")}`,
      );
    }
  }
  const c: NetworkConfig = { ...REFERENCE_CONFIG, ...partial };
  const positiveInt = (name: keyof NetworkConfig, v: unknown, min = 1) => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
      throw new RangeError(
        `Network configuration: ${name} must be an integer >= ${min}, found ${v}`,
      );
    }
  };
  positiveInt("inChannels", c.inChannels);
  positiveInt("outChannels", c.outChannels);
  positiveInt("levels", c.levels);
  positiveInt("baseChannels", c.baseChannels, 2);
  positiveInt("blocksPerLevel", c.blocksPerLevel, 0);
  positiveInt("expansion", c.expansion);
  positiveInt("maxGroups", c.maxGroups);
  for (
    const [name, max] of Object.entries(CONFIG_LIMITS) as [keyof typeof CONFIG_LIMITS, number][]
  ) {
    if ((c[name] as number) > max) {
      throw new RangeError(
        `Network configuration: ${name} must be at most ${max}, found ${c[name]}`,
      );
    }
  }
  if (c.baseChannels % 2 !== 0) {
    throw new RangeError(
      `Network configuration: baseChannels must be even (the coupling splits channels in halves), found ${c.baseChannels}`,
    );
  }
  if (c.activation !== "relu6" && c.activation !== "relu") {
    throw new RangeError(
      `Network configuration: activation must be "relu6" or "relu", found ${
        JSON.stringify(c.activation)
      }`,
    );
  }
  if (typeof c.epsilon !== "number" || !(c.epsilon > 0)) {
    throw new RangeError(`Network configuration: epsilon must be > 0, found ${c.epsilon}`);
  }
  if (typeof c.reversible !== "boolean") {
    throw new RangeError(
      `Network configuration: reversible must be a boolean, found ${c.reversible}`,
    );
  }
  const params = countParams(c);
  if (params > MAX_PARAMETERS) {
    throw new RangeError(
      `Network configuration: ${params.toExponential(2)} parameters, more than the ` +
        `${MAX_PARAMETERS.toExponential(2)} allowed (${
          MAX_PARAMETERS * 4 / 2 ** 30
        } GiB of float32 weights, 4× that with gradients and Adam state); found levels ` +
        `${c.levels}, baseChannels ${c.baseChannels}, blocksPerLevel ${c.blocksPerLevel}, ` +
        `expansion ${c.expansion}`,
    );
  }
  for (let l = 0; l < c.levels; l++) {
    const half = levelChannels(c, l) / 2;
    for (const ch of [half, half * c.expansion]) {
      if (ch % normGroups(c, ch) !== 0) {
        throw new RangeError(
          `Network configuration: ${ch} channels at level ${l} are not divisible into ${
            normGroups(c, ch)
          } GroupNorm groups (maxGroups ${c.maxGroups})`,
        );
      }
    }
  }
  return c;
}

/** The crop edge a volume must be a multiple of: the down-sampling factor of the deepest level. */
export function cropMultiple(config: NetworkConfig): number {
  return 2 ** (config.levels - 1);
}

/**
 * Parameters of the network, counted from the configuration alone (no tensors). One inverted
 * bottleneck on c channels with e = t·c has c·e + e·c conv weights, 27·e depthwise weights and
 * 2·(e + e + c) GroupNorm scales and offsets: 8c² + 126c at t = 4.
 */
export function countParams(config: NetworkConfig): number {
  const bottleneck = (c: number) => {
    const e = c * config.expansion;
    return 2 * c * e + 27 * e + 2 * (2 * e + c);
  };
  const block = (channels: number) => 2 * bottleneck(channels / 2);
  const { inChannels, outChannels, levels, blocksPerLevel: b } = config;
  const c0 = levelChannels(config, 0);
  let n = 27 * inChannels * c0 + c0; // stem
  for (let l = 0; l < levels; l++) {
    const cl = levelChannels(config, l);
    n += b * block(cl); // encoder blocks
    if (l < levels - 1) {
      const next = levelChannels(config, l + 1);
      n += 8 * cl * next + next; // down-sampling conv
      n += 8 * next * cl + cl; // transposed conv
      n += b * block(cl); // decoder blocks
    }
  }
  return n + c0 * outChannels + outChannels; // head
}
