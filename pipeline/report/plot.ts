/**
 * Training curves as a self-contained SVG: training loss per epoch on the left, validation Dice
 * per region on the right. No dependencies; any browser or image viewer shows it.
 * @module
 */

/** A named series of (x, y) points. */
export interface Series {
  name: string;
  color: string;
  points: [number, number][];
}

/** One panel: a title, axes labels and series. */
export interface Panel {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Fixed y range; by default the data's range. */
  yRange?: [number, number];
}

const W = 420;
const H = 300;
const M = { left: 56, right: 16, top: 30, bottom: 44 };

const esc = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const fmt = (
  v: number,
) => (Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString());

function ticks(lo: number, hi: number, n = 5): number[] {
  if (hi <= lo) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

function panel(p: Panel, x0: number): string {
  const pts = p.series.flatMap((s) => s.points).filter(([x, y]) => isFinite(x) && isFinite(y));
  const xs = pts.map(([x]) => x);
  const ys = pts.map(([, y]) => y);
  let [xlo, xhi] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  if (xhi === xlo) [xlo, xhi] = [xlo - 0.5, xhi + 0.5];
  let [ylo, yhi] = p.yRange ?? (ys.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1]);
  if (yhi === ylo) [ylo, yhi] = [ylo - 0.5, yhi + 0.5];
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const sx = (x: number) => x0 + M.left + ((x - xlo) / (xhi - xlo)) * pw;
  const sy = (y: number) => M.top + (1 - (y - ylo) / (yhi - ylo)) * ph;
  const parts: string[] = [];
  parts.push(
    `<text x="${x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">${esc(p.title)}</text>`,
  );
  for (const t of ticks(ylo, yhi)) {
    parts.push(
      `<line x1="${x0 + M.left}" x2="${x0 + W - M.right}" y1="${sy(t)}" y2="${
        sy(t)
      }" stroke="#ddd"/>`,
      `<text x="${x0 + M.left - 6}" y="${sy(t) + 4}" text-anchor="end">${fmt(t)}</text>`,
    );
  }
  for (const t of ticks(xlo, xhi)) {
    parts.push(
      `<text x="${sx(t)}" y="${H - M.bottom + 16}" text-anchor="middle">${fmt(t)}</text>`,
    );
  }
  parts.push(
    `<rect x="${
      x0 + M.left
    }" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`,
    `<text x="${x0 + M.left + pw / 2}" y="${H - 8}" text-anchor="middle">${esc(p.xLabel)}</text>`,
    `<text transform="translate(${x0 + 14},${M.top + ph / 2}) rotate(-90)" text-anchor="middle">${
      esc(p.yLabel)
    }</text>`,
  );
  p.series.forEach((s, i) => {
    const good = s.points.filter(([x, y]) => isFinite(x) && isFinite(y));
    if (good.length > 0) {
      const d = good.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`);
      parts.push(`<path d="${d.join("")}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
      for (const [x, y] of good.length <= 40 ? good : []) {
        parts.push(
          `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="2.5" fill="${s.color}"/>`,
        );
      }
    }
    const ly = M.top + 14 + i * 16;
    parts.push(
      `<line x1="${x0 + W - M.right - 70}" x2="${x0 + W - M.right - 54}" y1="${ly - 4}" y2="${
        ly - 4
      }" stroke="${s.color}" stroke-width="2"/>`,
      `<text x="${x0 + W - M.right - 50}" y="${ly}">${esc(s.name)}</text>`,
    );
  });
  return parts.join("\n");
}

/** Renders panels side by side as one SVG document. */
export function renderCurves(panels: Panel[]): string {
  const width = W * panels.length;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${H}" viewBox="0 0 ${width} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${H}" fill="white"/>`,
    ...panels.map((p, i) => panel(p, i * W)),
    "</svg>",
    "",
  ].join("\n");
}
