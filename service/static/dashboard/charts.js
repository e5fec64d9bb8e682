// Charts drawn as inline SVG: no library, nothing from a CDN.
const NS = "http://www.w3.org/2000/svg";
export const OUTCOME_COLORS = {
  SUCCESS: "var(--ok, #2e7d32)",
  FAILURE: "var(--bad, #c62828)",
  RETRY: "var(--warn, #ef6c00)",
  REVOKED: "var(--muted, #757575)",
};

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 5, 10]) if (value <= m * step) return m * step;
  return 10 * step;
}

// Tasks ended per minute over the last hour, stacked by outcome.
export function throughputChart(container, perMinute, outcomes) {
  const width = 600;
  const height = 160;
  const left = 32;
  const bottom = 18;
  const plotW = width - left - 4;
  const plotH = height - bottom - 6;
  const totals = perMinute.map((m) => outcomes.reduce((sum, o) => sum + (m[o] || 0), 0));
  const top = niceMax(Math.max(0, ...totals));
  const barW = plotW / Math.max(1, perMinute.length);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  const total = totals.reduce((a, b) => a + b, 0);
  root.append(svg("title", {}, `Tasks ended per minute over the last hour: ${total} in all.`));
  for (const frac of [0, 0.5, 1]) {
    const y = 6 + plotH * (1 - frac);
    root.append(svg("line", { x1: left, x2: width - 4, y1: y, y2: y, class: "grid" }));
    // Tasks are counted whole: a line between two counts (half of 1 or of 5) gets no label.
    const value = top * frac;
    if (Number.isInteger(value)) {
      root.append(svg("text", { x: left - 4, y: y + 4, "text-anchor": "end", class: "axis y-label" }, String(value)));
    }
  }
  perMinute.forEach((m, i) => {
    let y = 6 + plotH;
    for (const o of outcomes) {
      const n = m[o] || 0;
      if (!n) continue;
      const h = (n / top) * plotH;
      y -= h;
      const rect = svg("rect", { x: left + i * barW + 0.5, y, width: Math.max(1, barW - 1), height: h, fill: OUTCOME_COLORS[o], "data-outcome": o });
      rect.append(svg("title", {}, `${new Date(m.minute * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false })}: ${n} ${o}`));
      root.append(rect);
    }
  });
  root.append(svg("text", { x: left, y: height - 4, class: "axis" }, "−60 min"));
  root.append(svg("text", { x: width - 4, y: height - 4, "text-anchor": "end", class: "axis" }, "now"));
  container.replaceChildren(root);
  return total;
}

// Runtime p50 and p95 per task name, as horizontal bars on one scale.
export function runtimeChart(container, runtimes, format) {
  const rows = runtimes.filter((r) => r.count > 0);
  const rowH = 26;
  const width = 600;
  const left = 90;
  const height = Math.max(1, rows.length) * rowH + 8;
  const top = Math.max(...rows.map((r) => r.p95 || 0), 0.001);
  const scale = (v) => ((width - left - 230) * (v || 0)) / top;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  root.append(svg("title", {}, "Runtime p50 and p95 per task over the last hour."));
  if (!rows.length) {
    root.append(svg("text", { x: 4, y: 20, class: "axis" }, "No task has finished in the last hour."));
  }
  rows.forEach((r, i) => {
    const y = 4 + i * rowH;
    const g = svg("g", { "data-task": r.task });
    g.append(svg("text", { x: left - 6, y: y + 15, "text-anchor": "end", class: "label" }, r.task));
    g.append(svg("rect", { x: left, y: y + 2, width: Math.max(1, scale(r.p95)), height: 16, class: "p95" }));
    g.append(svg("rect", { x: left, y: y + 6, width: Math.max(1, scale(r.p50)), height: 8, class: "p50" }));
    g.append(svg("text", { x: left + scale(r.p95) + 6, y: y + 15, class: "axis" }, `p50 ${format(r.p50)} · p95 ${format(r.p95)} · ${r.count} run${r.count === 1 ? "" : "s"}`));
    root.append(g);
  });
  container.replaceChildren(root);
}
