/**
 * What the benchmarks share: timing a call, the median, rounding and a least-squares line.
 * @module
 */

/** The median of `xs` (the mean of the middle two for an even count). */
export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** `x` to `digits` decimals. */
export const round = (x: number, digits = 3): number => Number(x.toFixed(digits));

/** Times `fn` `warmup + steps` times and returns the timed milliseconds. */
export async function timeRuns(
  fn: () => Promise<void> | void,
  warmup: number,
  steps: number,
): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn();
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const start = performance.now();
    await fn();
    times.push(performance.now() - start);
  }
  return times;
}

/** A least-squares line y = intercept + slope·x and its worst relative residual. */
export interface LinearFit {
  slope: number;
  intercept: number;
  /** max |fit(x) - y| / y over the points: how far from linear. */
  residual: number;
}

/** Least squares y = a + b·x, with the fit's worst relative residual (how far from linear). */
export function linearFit(xs: number[], ys: number[]): LinearFit {
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  const slope = sxx > 0 ? sxy / sxx : my / mx;
  const intercept = sxx > 0 ? my - slope * mx : 0;
  const residual = Math.max(...xs.map((x, i) => Math.abs(intercept + slope * x - ys[i]) / ys[i]));
  return { slope, intercept, residual };
}
