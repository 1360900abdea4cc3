// Small DOM helpers. Text always goes in as text nodes, never as HTML, so
// names, notes and logs from the API cannot inject markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
export function bytes(n) {
  if (n === undefined || n === null) return "—";
  let i = 0, v = Number(n);
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + UNITS[i];
}

export function when(t) {
  if (t === undefined || t === null || t === "") return "—";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function ago(t) {
  const d = typeof t === "number" ? t * 1000 : Date.parse(t);
  const s = Math.round((Date.now() - d) / 1000);
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

export function badge(state) { return h("span", { class: "badge " + state }, state); }

export function table(caption, headers, rows, opts = {}) {
  return h("div", { class: "table-wrap" },
    h("table", { id: opts.id },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((c) => {
        const [label, cls] = Array.isArray(c) ? c : [c, ""];
        return h("th", { scope: "col", class: cls }, label);
      }))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, opts.empty || "Nothing here.")))));
}

export function td(v, cls) { return h("td", { class: cls }, v); }
export function num(v) { return h("td", { class: "num" }, v); }

export function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, errText(err));
}

export function errText(err) {
  const p = err && err.problem;
  if (p && p.status) return `${p.status} ${p.title || ""}: ${p.detail || err.message}`;
  return String(err && err.message ? err.message : err);
}

export function field(label, input) {
  const id = input.id || ("f-" + Math.random().toString(36).slice(2, 9));
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}
