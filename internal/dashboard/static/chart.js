// SVG charts drawn here, no library. Each chart has a <title> and <desc>
// and comes with a table that holds the same numbers (the text alternative).

import { h, bytes, when } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// lineChart draws series of {t (unix s), v} points on a shared time axis.
// series: [{name, cls, points}]
export function lineChart({ id, title, desc, series, width = 720, height = 240, format = bytes }) {
  const pad = { l: 70, r: 16, t: 12, b: 28 };
  const pts = series.flatMap((x) => x.points);
  const tmin = Math.min(...pts.map((p) => p.t)), tmax = Math.max(...pts.map((p) => p.t));
  const vmax = Math.max(1, ...pts.map((p) => p.v));
  const x = (t) => pad.l + (tmax === tmin ? (width - pad.l - pad.r) / 2 : (t - tmin) / (tmax - tmin) * (width - pad.l - pad.r));
  const y = (v) => height - pad.b - v / vmax * (height - pad.t - pad.b);
  const titleID = id + "-title", descID = id + "-desc";
  const svg = s("svg", { id, class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-labelledby": titleID, "aria-describedby": descID },
    s("title", { id: titleID }, title), s("desc", { id: descID }, desc));
  for (let i = 0; i <= 4; i++) {
    const v = vmax * i / 4;
    svg.append(s("line", { class: "grid", x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v) }));
    svg.append(s("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
  }
  svg.append(s("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b }));
  svg.append(s("text", { x: pad.l, y: height - 8 }, when(tmin).slice(0, 16)));
  if (tmax !== tmin) svg.append(s("text", { x: width - pad.r, y: height - 8, "text-anchor": "end" }, when(tmax).slice(0, 16)));
  for (const ser of series) {
    if (!ser.points.length) continue;
    const d = ser.points.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + " " + y(p.v).toFixed(1)).join(" ");
    svg.append(s("path", { class: ser.cls, d }));
    for (const p of ser.points) {
      svg.append(s("circle", { class: "dot", cx: x(p.t), cy: y(p.v), r: 2.5 }, s("title", {}, `${ser.name}: ${format(p.v)} at ${when(p.t)}`)));
    }
  }
  const legend = h("ul", { class: "legend", "aria-hidden": "true" },
    series.map((ser) => h("li", {}, h("span", { class: "swatch " + ser.cls }), ser.name)));
  return h("figure", { class: "figure" }, svg, legend);
}

// timeline marks snapshots of one guest in time, bar height = size.
export function timeline({ id, title, desc, items, width = 720, height = 120 }) {
  const pad = { l: 60, r: 60, t: 16, b: 24 };
  const tmin = Math.min(...items.map((p) => p.t)), tmax = Math.max(...items.map((p) => p.t));
  const vmax = Math.max(1, ...items.map((p) => p.v));
  const x = (t) => pad.l + (tmax === tmin ? (width - pad.l - pad.r) / 2 : (t - tmin) / (tmax - tmin) * (width - pad.l - pad.r));
  const titleID = id + "-title", descID = id + "-desc";
  const svg = s("svg", { id, class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-labelledby": titleID, "aria-describedby": descID },
    s("title", { id: titleID }, title), s("desc", { id: descID }, desc));
  const base = height - pad.b;
  svg.append(s("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: base, y2: base }));
  svg.append(s("text", { x: pad.l - 6, y: pad.t + 4, "text-anchor": "end" }, bytes(vmax)));
  for (const p of items) {
    const bh = Math.max(3, p.v / vmax * (base - pad.t));
    svg.append(s("rect", { class: "dot" + (p.failed ? " failed" : ""), x: x(p.t) - 3, y: base - bh, width: 6, height: bh },
      s("title", {}, p.label)));
  }
  svg.append(s("text", { x: x(tmin), y: height - 6, "text-anchor": "middle" }, when(tmin).slice(0, 16)));
  if (tmax !== tmin) svg.append(s("text", { x: x(tmax), y: height - 6, "text-anchor": "middle" }, when(tmax).slice(0, 16)));
  return svg;
}
