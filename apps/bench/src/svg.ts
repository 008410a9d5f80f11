/** One system's find-max steps for the chart. */
export interface ChartSeries {
  name: string;
  points: { rate: number; p99: number; held: boolean }[];
}

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
const W = 760;
const H = 440;
const M = { left: 72, right: 24, top: 56, bottom: 56 };

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const fmt = (v: number) => (v >= 1000 ? `${v / 1000}k` : String(v));

function niceStep(range: number, ticks: number): number {
  const raw = range / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

/**
 * A line chart of p99 delivery latency (log scale) against offered rate, one line per system,
 * filled markers where the step held and hollow where it failed, and the p99 limit as a dashed line.
 */
export function p99Chart(series: ChartSeries[], limitMs: number): string {
  const all = series.flatMap((s) => s.points);
  const maxRate = Math.max(1000, ...all.map((p) => p.rate));
  const xStep = niceStep(maxRate, 8);
  const xMax = Math.ceil((maxRate * 1.05) / xStep) * xStep;
  const p99s = all.map((p) => Math.max(p.p99, 0.01));
  const yMin = 10 ** Math.floor(Math.log10(Math.min(1, ...p99s)));
  const yMax = 10 ** Math.ceil(Math.log10(Math.max(limitMs * 2, ...p99s)));
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const x = (rate: number) => M.left + (rate / xMax) * pw;
  const y = (ms: number) => M.top + ph - ((Math.log10(Math.max(ms, yMin)) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin))) * ph;

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">p99 delivery latency against offered rate (find-max steps)</text>`,
  );
  for (let v = yMin; v <= yMax * 1.0001; v *= 10) {
    const yy = y(v).toFixed(1);
    out.push(`<line x1="${M.left}" y1="${yy}" x2="${W - M.right}" y2="${yy}" stroke="#e3e3e3"/>`);
    out.push(`<text x="${M.left - 8}" y="${yy}" dy="4" text-anchor="end">${v >= 1 ? v : v.toFixed(-Math.log10(v))} ms</text>`);
  }
  for (let v = 0; v <= xMax; v += xStep) {
    const xx = x(v).toFixed(1);
    out.push(`<line x1="${xx}" y1="${M.top}" x2="${xx}" y2="${M.top + ph}" stroke="#f0f0f0"/>`);
    out.push(`<text x="${xx}" y="${M.top + ph + 18}" text-anchor="middle">${fmt(v)}</text>`);
  }
  out.push(
    `<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`,
    `<text x="${M.left + pw / 2}" y="${H - 14}" text-anchor="middle">offered rate, messages per second (all senders)</text>`,
    `<text transform="translate(18 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle">p99 delivery latency (log scale)</text>`,
  );
  const ly = y(limitMs).toFixed(1);
  out.push(
    `<line x1="${M.left}" y1="${ly}" x2="${W - M.right}" y2="${ly}" stroke="#c00" stroke-dasharray="6 4"/>`,
    `<text x="${W - M.right - 6}" y="${ly}" dy="-5" text-anchor="end" fill="#c00">limit ${limitMs} ms</text>`,
  );
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length]!;
    const pts = [...s.points].sort((a, b) => a.rate - b.rate);
    if (pts.length > 1) {
      out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map((p) => `${x(p.rate).toFixed(1)},${y(p.p99).toFixed(1)}`).join(" ")}"/>`);
    }
    for (const p of pts) {
      out.push(
        `<circle cx="${x(p.rate).toFixed(1)}" cy="${y(p.p99).toFixed(1)}" r="4.5" stroke="${color}" stroke-width="2" fill="${p.held ? color : "#fff"}"><title>${esc(s.name)}: ${p.rate} msg/s, p99 ${p.p99.toFixed(2)} ms${p.held ? "" : " (failed)"}</title></circle>`,
      );
    }
    const lx = M.left + 12 + i * 260;
    out.push(
      `<line x1="${lx}" y1="40" x2="${lx + 22}" y2="40" stroke="${color}" stroke-width="2"/>`,
      `<circle cx="${lx + 11}" cy="40" r="4.5" fill="${color}"/>`,
      `<text x="${lx + 30}" y="44">${esc(s.name)}</text>`,
    );
  });
  out.push(`<text x="${M.left + 8}" y="${M.top + 16}" fill="#555" font-size="11">hollow marker: the step failed (latency, loss, or persistence falling behind)</text>`, "</svg>");
  return out.join("\n") + "\n";
}
