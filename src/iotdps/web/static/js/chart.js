// A small line chart in SVG: two series over the same minutes. Styles come from console.css
// (classes only, no inline style), so the Content-Security-Policy stays strict.

import { h } from "./dom.js";

const W = 720;
const H = 220;
const PAD = { left: 40, right: 12, top: 12, bottom: 28 };

function niceMax(value) {
  if (value <= 4) return 4;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

function path(values, x, y) {
  return values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
}

/**
 * lineChart({title, start: Date, a: {label, values}, b: {label, values}})
 * The chart has a text alternative: its title plus the totals, for screen readers.
 */
export function lineChart({ title, start, a, b }) {
  const n = Math.max(a.values.length, b.values.length, 2);
  const top = niceMax(Math.max(1, ...a.values, ...b.values));
  const x = (i) => PAD.left + (i * (W - PAD.left - PAD.right)) / (n - 1);
  const y = (v) => H - PAD.bottom - (v * (H - PAD.top - PAD.bottom)) / top;
  const sum = (values) => values.reduce((s, v) => s + v, 0);
  const titleId = `chart-${Math.random().toString(36).slice(2)}`;
  const summary = `${title}: ${sum(a.values)} ${a.label.toLowerCase()} and ${sum(b.values)} ${b.label.toLowerCase()} in the last ${n} minutes.`;

  const grid = [0, 0.25, 0.5, 0.75, 1].map((f) => {
    const v = top * f;
    return [
      h("svg:line", { class: "gridline", x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }),
      h("svg:text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", text: Number.isInteger(v) ? v : v.toFixed(1) }),
    ];
  });
  const ticks = [0, 15, 30, 45, n - 1].filter((i) => i < n).map((i) => {
    const at = new Date(start.getTime() + i * 60000);
    const label = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const anchor = i === 0 ? "start" : i === n - 1 ? "end" : "middle";
    return h("svg:text", { x: x(i), y: H - 8, "text-anchor": anchor, text: label });
  });

  const svg = h(
    "svg:svg",
    { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": titleId },
    h("svg:title", { id: titleId, text: summary }),
    grid,
    h("svg:line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0) }),
    ticks,
    h("svg:path", { class: "series-a", d: path(a.values, x, y) }),
    h("svg:path", { class: "series-b", d: path(b.values, x, y) }),
  );
  const legend = h(
    "div",
    { class: "legend", "aria-hidden": "true" },
    h("span", {}, h("span", { class: "swatch" }), `${a.label} (${sum(a.values)})`),
    h("span", {}, h("span", { class: "swatch b" }), `${b.label} (${sum(b.values)})`),
  );
  return h("figure", { class: "figure" }, svg, legend);
}
