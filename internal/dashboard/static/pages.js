// The dashboard's pages. Each is async (view, args, ctx) and builds its DOM
// from REST calls; ctx.alive() turns false once the user has moved on, which
// ends polling.

import { session, getJSON, getText, postJSON, patchJSON, del, query, APIError } from "./api.js";
import { h, bytes, when, ago, badge, table, td, num, errorBox, errText, field } from "./ui.js";
import { lineChart, timeline } from "./chart.js";
import { vmRestore, ctRestore, downloader } from "./restore.js";

// flash is a one-time message for the next page (after a deletion).
export const state = { admin: false, flash: "" };

const HOUR = 3600;
const nowS = () => Math.floor(Date.now() / 1000);
const nsq = (extra = {}) => query({ ns: session.ns, ...extra });

// settle runs calls in parallel and returns {value} or {error} for each.
async function settle(obj) {
  const keys = Object.keys(obj);
  const res = await Promise.allSettled(keys.map((k) => obj[k]));
  return Object.fromEntries(keys.map((k, i) => [k, res[i].status === "fulfilled" ? { value: res[i].value } : { error: res[i].reason }]));
}

const notImplemented = (r) => r.error instanceof APIError && r.error.status === 501;

function snapLink(s) { return h("a", { class: "snap", href: "#/snapshot/" + encodeURIComponent(s) }, s); }
const tm = (t) => h("td", { class: "time" }, when(t));
function guestLink(vmid) { return h("a", { href: "#/guest/" + vmid }, String(vmid)); }
const tsOf = (v) => (typeof v === "number" ? v : Date.parse(v) / 1000);

// ---------------------------------------------------------------- overview

async function overview(view) {
  const since = new Date((nowS() - 26 * HOUR) * 1000).toISOString();
  const r = await settle({
    status: getJSON("/status"),
    usage: getJSON("/usage" + nsq()),
    snaps: getJSON("/snapshots" + nsq()),
    runs: getJSON("/backups" + nsq({ since, limit: 1000 })),
  });
  const out = [h("h1", {}, "Overview")];

  out.push(h("h2", {}, "Repository"));
  if (r.status.error) out.push(errorBox(r.status.error));
  else if (!r.status.value.active) {
    out.push(h("p", { class: "notice", id: "repo-inactive" }, "Repository figures are not available: " + (r.status.value.error || "unknown reason")));
  } else {
    const s = r.status.value;
    out.push(h("dl", { class: "cards", id: "repo-cards" },
      card("Stored (all namespaces)", bytes(s.stored_bytes)),
      card("Logical", bytes(s.logical_bytes)),
      card("Dedup ratio", s.dedup_ratio ? s.dedup_ratio.toFixed(2) + " ×" : "—"),
      card("Snapshots", s.snapshots),
      card("Chunks", s.chunks),
      card("Free", s.total === s.used ? "no fixed capacity" : bytes(s.avail))));
    out.push(h("p", { class: "muted" }, `Figures as of ${when(s.updated_at)}.`));
  }
  if (r.usage.value) {
    const u = r.usage.value;
    out.push(h("dl", { class: "cards", id: "ns-cards" },
      card(`Namespace ${u.ns}: stored`, bytes(u.stored_bytes)),
      card("Logical", bytes(u.logical_bytes)),
      card("Guests", u.guests.length),
      u.quota_bytes !== undefined ? card("Quota", bytes(u.quota_bytes)) : null));
  } else out.push(errorBox(r.usage.error));

  // Runs of the last 24 h, failures first.
  const runsOK = !!r.runs.value;
  out.push(h("h2", { id: "recent-h" }, "Backups in the last 24 h"));
  let recent = [];
  if (runsOK) {
    recent = r.runs.value.filter((x) => tsOf(x.started_at) >= nowS() - 24 * HOUR);
  } else {
    out.push(h("p", { class: "notice" }, notImplemented(r.runs)
      ? "This server does not keep a backup run history yet (GET /api/v1/backups answers 501); only committed snapshots are shown, failures cannot be."
      : "Run history unavailable: " + errText(r.runs.error)));
    recent = (r.snaps.value || []).filter((s) => s.backup_time >= nowS() - 24 * HOUR).map((s) => ({
      name: s.name, vmid: s.vmid, type: s.type, state: "ok", started_at: s.backup_time, size: s.size, new_bytes: s.new_bytes, snapshot_available: true,
    }));
  }
  const rank = { failed: 0, running: 1, ok: 2 };
  recent.sort((a, b) => rank[a.state] - rank[b.state] || tsOf(b.started_at) - tsOf(a.started_at));
  const failed = recent.filter((x) => x.state === "failed").length;
  if (failed) out.push(h("p", { class: "error", role: "alert", id: "failed-summary" }, `${failed} failed backup${failed > 1 ? "s" : ""} in the last 24 h.`));
  out.push(table("Backup runs, failed first, then newest first", ["State", "Guest", "Snapshot", "Started", "Finished", ["Size", "num"], ["New", "num"], "Error"],
    recent.map((x) => h("tr", { class: x.state },
      td(badge(x.state)), td(guestLink(x.vmid)), td(x.snapshot_available ? snapLink(x.name) : x.name),
      tm(x.started_at), tm(x.finished_at), num(x.state === "ok" ? bytes(x.size) : "—"), num(x.state === "ok" ? bytes(x.new_bytes) : "—"), td(x.error || "", "err"))),
    { id: "recent-runs", empty: "No backups in the last 24 h." }));

  // Guests without a successful backup in 26 h.
  out.push(h("h2", {}, "Guests with no successful backup in 26 h"));
  const last = new Map(); // vmid -> {type, t}
  const note = (vmid, type, t) => { const c = last.get(vmid); if (!c || t > c.t) last.set(vmid, { type, t }); };
  for (const s of r.snaps.value || []) note(s.vmid, s.type, s.backup_time);
  for (const g of (r.usage.value && r.usage.value.guests) || []) note(g.vmid, g.type, 0);
  // A run whose snapshot still exists is counted by the snapshot's backup time;
  // one whose snapshot was pruned since still was a success at its time.
  for (const x of (runsOK ? r.runs.value : [])) note(x.vmid, x.type, x.state === "ok" && !x.snapshot_available ? tsOf(x.started_at) : 0);
  const missing = [...last.entries()].filter(([, v]) => v.t < nowS() - 26 * HOUR).sort((a, b) => a[1].t - b[1].t);
  out.push(table("Guests whose newest successful backup is older than 26 hours", ["Guest", "Type", "Last successful backup"],
    missing.map(([vmid, v]) => h("tr", {}, td(guestLink(vmid)), td(v.type), td(v.t ? `${when(v.t)} (${ago(v.t)})` : "never"))),
    { id: "missing-guests", empty: "Every known guest has a backup from the last 26 h." }));

  // Logical vs stored over time, from the snapshots that exist now.
  out.push(h("h2", {}, "Logical and stored bytes over time"));
  const snaps = (r.snaps.value || []).slice().sort((a, b) => a.backup_time - b.backup_time);
  if (snaps.length) {
    let logical = 0, stored = 0;
    const L = [], S = [], rows = [];
    for (const s of snaps) {
      logical += s.size; stored += s.new_bytes || 0;
      L.push({ t: s.backup_time, v: logical }); S.push({ t: s.backup_time, v: stored });
      rows.push(h("tr", {}, tm(s.backup_time), td(snapLink(s.name)), num(bytes(logical)), num(bytes(stored))));
    }
    out.push(lineChart({ id: "usage-chart", title: `Cumulative logical and stored bytes, namespace ${session.ns}`,
      desc: `After ${snaps.length} snapshots: ${bytes(logical)} logical, ${bytes(stored)} stored as new data (sum of each backup's new bytes).`,
      series: [{ name: "Logical (sum of sizes)", cls: "logical", points: L }, { name: "Stored (sum of new bytes)", cls: "stored", points: S }] }));
    out.push(h("details", {}, h("summary", {}, "Chart data as a table"),
      table("Cumulative bytes after each snapshot", ["Time", "Snapshot", ["Logical", "num"], ["Stored", "num"]], rows)));
  } else out.push(h("p", { class: "muted" }, "No snapshots yet."));
  view.replaceChildren(...out);
}

function card(label, value) { return h("div", { class: "card" }, h("dt", {}, label), h("dd", {}, String(value))); }

// ------------------------------------------------------------------ guests

async function guests(view) {
  const r = await settle({ usage: getJSON("/usage" + nsq()), snaps: getJSON("/snapshots" + nsq()) });
  if (r.snaps.error) throw r.snaps.error;
  const by = new Map();
  for (const s of r.snaps.value) {
    const g = by.get(s.vmid) || { vmid: s.vmid, type: s.type, snaps: [] };
    g.snaps.push(s); by.set(s.vmid, g);
  }
  const usage = new Map(((r.usage.value && r.usage.value.guests) || []).map((g) => [g.vmid, g]));
  const rows = [...by.values()].sort((a, b) => a.vmid - b.vmid).map((g) => {
    const newest = g.snaps.reduce((a, b) => (b.backup_time > a.backup_time ? b : a));
    const u = usage.get(g.vmid) || {};
    const bad = g.snaps.filter((s) => s.verify_state === "failed").length;
    return h("tr", {}, td(guestLink(g.vmid)), td(g.type), num(g.snaps.length), td(`${when(newest.backup_time)} (${ago(newest.backup_time)})`),
      num(bytes(u.logical_bytes)), num(bytes(u.stored_bytes)), num(bytes(u.exclusive_bytes)),
      td(bad ? badge("failed") : badge(newest.verify_state)));
  });
  const out = [h("h1", {}, `Guests in namespace ${session.ns}`),
    table("Guests with snapshots; stored counts each distinct chunk once, exclusive is what deleting all of the guest's snapshots would free",
      ["Guest", "Type", ["Snapshots", "num"], "Newest", ["Logical", "num"], ["Stored", "num"], ["Exclusive", "num"], "Verify"],
      rows, { id: "guests", empty: "No snapshots in this namespace." })];
  if (r.usage.error) out.push(errorBox(r.usage.error));
  view.replaceChildren(...out);
}

async function guest(view, [vmid]) {
  const id = Number(vmid);
  const r = await settle({
    snaps: getJSON("/snapshots" + nsq({ vmid: id })),
    usage: getJSON("/usage" + nsq({ vmid: id })),
    runs: getJSON("/backups" + nsq({ vmid: id, state: "failed", limit: 50 })),
  });
  if (r.snaps.error) throw r.snaps.error;
  const snaps = r.snaps.value;
  // The listing leaves out exclusive bytes (a per-snapshot computation); the
  // details of the newest 50 carry them.
  const details = await Promise.allSettled(snaps.slice(0, 50).map((s) =>
    s.exclusive_bytes === undefined ? getJSON("/snapshots/" + encodeURIComponent(s.name) + nsq()) : Promise.resolve(s)));
  details.forEach((d, i) => { if (d.status === "fulfilled") snaps[i].exclusive_bytes = d.value.exclusive_bytes; });
  const out = [h("ul", { class: "crumbs" }, h("li", {}, h("a", { href: "#/guests" }, "Guests")), h("li", {}, String(id))),
    h("h1", {}, `Guest ${id}`)];
  if (state.flash) { out.push(h("p", { class: "notice", role: "status", id: "flash" }, state.flash)); state.flash = ""; }
  if (r.usage.value) {
    const u = r.usage.value;
    out.push(h("dl", { class: "cards" }, card("Snapshots", u.snapshots), card("Logical", bytes(u.logical_bytes)),
      card("Stored", bytes(u.stored_bytes)), card("Exclusive", bytes(u.exclusive_bytes))));
  }
  const failedRuns = r.runs.value || [];
  if (snaps.length || failedRuns.length) {
    const items = snaps.map((s) => ({ t: s.backup_time, v: s.size, label: `${s.name}: ${bytes(s.size)}` }))
      .concat(failedRuns.map((x) => ({ t: tsOf(x.started_at), v: 0, failed: true, label: `failed ${when(x.started_at)}: ${x.error || ""}` })));
    out.push(h("h2", {}, "Timeline"),
      timeline({ id: "guest-timeline", title: `Backups of guest ${id}`,
        desc: `${snaps.length} snapshots${failedRuns.length ? `, ${failedRuns.length} failed runs (red)` : ""}; bar height is the snapshot size. The table below lists them.`, items }));
  }
  out.push(h("h2", {}, "Snapshots"), table(`Snapshots of guest ${id}, newest first`,
    ["Snapshot", "Time", ["Size", "num"], ["New", "num"], ["Exclusive", "num"], "Verify", "Protected", "Notes"],
    snaps.map((s) => h("tr", {}, td(snapLink(s.name)), tm(s.backup_time), num(bytes(s.size)), num(bytes(s.new_bytes)),
      num(bytes(s.exclusive_bytes)), td(badge(s.verify_state)), td(s.protected ? badge("protected") : "no"), td(s.notes))),
    { id: "snapshots", empty: "No snapshots of this guest." }));
  if (failedRuns.length) {
    out.push(h("h2", {}, "Failed runs"), table("Failed backup runs of this guest", ["Started", "Error"],
      failedRuns.map((x) => h("tr", { class: "failed" }, tm(x.started_at), td(x.error || "", "err")))));
  }
  view.replaceChildren(...out);
}

// ---------------------------------------------------------------- snapshot

async function snapshot(view, [name]) {
  const base = "/snapshots/" + encodeURIComponent(name);
  const snap = await getJSON(base + nsq());
  const r = await settle({
    config: getText(base + "/config" + nsq()),
    log: getText(base + "/log" + nsq()),
    disks: snap.type === "qemu" ? getJSON(base + "/disks" + nsq()) : Promise.resolve(null),
  });
  const protectedDD = h("dd", { id: "snap-protected" });
  const notesDD = h("dd", { id: "snap-notes", class: "notes" });
  const showMeta = (s) => {
    protectedDD.replaceChildren(s.protected ? badge("protected") : "no");
    notesDD.textContent = s.notes || "—";
  };
  showMeta(snap);
  const out = [h("ul", { class: "crumbs" }, h("li", {}, h("a", { href: "#/guests" }, "Guests")),
    h("li", {}, guestLink(snap.vmid)), h("li", {}, name)),
  h("h1", {}, name),
  h("dl", { class: "kv", id: "snapshot-info" },
    kv("Guest", `${snap.vmid} (${snap.type})`), kv("Backup time", when(snap.backup_time)), kv("Size", bytes(snap.size)),
    kv("New bytes", bytes(snap.new_bytes)), kv("Exclusive bytes", bytes(snap.exclusive_bytes)),
    kv("Verify", [badge(snap.verify_state), snap.verified_at ? " " + when(snap.verified_at) : ""]),
    h("dt", {}, "Protected"), protectedDD, kv("Storage", snap.storage || "—"), h("dt", {}, "Notes"), notesDD)];
  if (snap.type === "qemu") {
    out.push(h("h2", { id: "restore-h" }, "Disks and restore"));
    if (r.disks.value) out.push(...vmRestore(name, r.disks.value));
    else out.push(errorBox(r.disks.error));
  }
  if (snap.type === "lxc") {
    out.push(h("h2", { id: "restore-h" }, "Restore"), ...ctRestore(name, snap));
    const files = h("section", { id: "files", "aria-labelledby": "files-h" });
    out.push(h("h2", { id: "files-h" }, "Files"), files);
    browse(files, name, [{ label: "/", path: "/", raw: "%2F" }]);
  }
  out.push(h("h2", {}, "Notes and protection"), metaForm(name, snap, showMeta));
  out.push(h("h2", {}, "Guest configuration"), textBlock(r.config, "guest-config"));
  out.push(h("h2", {}, "Backup log"), textBlock(r.log, "backup-log"));
  out.push(h("h2", {}, "Delete"), deleteSection(name, snap));
  view.replaceChildren(...out);
}

// metaForm edits notes and protection (PATCH, role backup or admin).
function metaForm(name, snap, showMeta) {
  const notes = h("textarea", { name: "notes", rows: 3, maxlength: 65536, class: "notes-input" });
  notes.value = snap.notes || "";
  const prot = h("input", { type: "checkbox", name: "protected", id: "meta-protected", checked: snap.protected });
  const msg = h("p", { id: "meta-status", role: "status" });
  const save = h("button", { type: "submit" }, "Save");
  return h("form", { id: "meta-form", onsubmit: async (ev) => {
    ev.preventDefault();
    save.disabled = true;
    msg.className = "muted";
    msg.textContent = "Saving…";
    try {
      const s = await patchJSON("/snapshots/" + encodeURIComponent(name) + nsq(), { notes: notes.value, protected: prot.checked });
      Object.assign(snap, { notes: s.notes, protected: s.protected });
      showMeta(s);
      msg.textContent = `Saved: ${s.protected ? "protected" : "not protected"}, notes ${s.notes ? "set" : "empty"}.`;
    } catch (err) {
      msg.className = "error";
      msg.textContent = "Not saved: " + errText(err);
    } finally { save.disabled = false; }
  } }, field("Notes", notes),
    h("p", { class: "check" }, prot, h("label", { for: "meta-protected" }, "Protected (prune and delete leave it alone)")),
    h("p", { class: "row" }, save), msg);
}

// deleteSection asks for a confirmation naming the snapshot in an in-page
// dialog, then calls DELETE; the API refuses protected snapshots (409).
function deleteSection(name, snap) {
  const msg = h("p", { id: "delete-status", role: "status" });
  const warn = h("p", { class: "notice" });
  const confirmBtn = h("button", { type: "button", class: "danger", id: "delete-confirm" }, "Delete " + name);
  const dialog = h("dialog", { id: "delete-dialog", "aria-labelledby": "delete-dialog-h" },
    h("h2", { id: "delete-dialog-h" }, `Delete snapshot ${name}?`),
    h("p", {}, `This removes the snapshot of guest ${snap.vmid} taken ${when(snap.backup_time)}. ` +
      `Chunks only it uses (${bytes(snap.exclusive_bytes)}) are freed by the next GC. It cannot be undone.`),
    warn,
    h("p", { class: "row" }, confirmBtn, h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Cancel")));
  confirmBtn.addEventListener("click", async () => {
    dialog.close();
    msg.className = "muted";
    msg.textContent = "Deleting…";
    try {
      await del("/snapshots/" + encodeURIComponent(name) + nsq());
      state.flash = `Snapshot ${name} deleted.`;
      location.hash = "#/guest/" + snap.vmid;
    } catch (err) {
      msg.className = "error";
      msg.textContent = (err.status === 409 ? "Refused: " : "Not deleted: ") + errText(err);
    }
  });
  const open = h("button", { type: "button", class: "danger", id: "delete-snapshot", onclick: () => {
    warn.hidden = !snap.protected;
    warn.textContent = snap.protected ? "This snapshot is protected: the server will refuse to delete it until protection is removed above." : "";
    dialog.showModal();
  } }, "Delete snapshot…");
  return h("div", {}, h("p", {}, open), msg, dialog);
}

function kv(k, v) { return [h("dt", {}, k), h("dd", {}, v)]; }

function textBlock(res, id) {
  if (res.value !== undefined) return h("pre", { id, tabindex: "0" }, res.value || "(empty)");
  if (res.error instanceof APIError && res.error.status === 404) return h("p", { class: "muted", id }, "None stored.");
  return errorBox(res.error);
}

// browse lists one directory of a container snapshot. trail is the path
// from the root as [{label, raw}], raw being the percent-encoded path the
// API gave (raw_path), passed back unchanged: names need not be UTF-8.
async function browse(box, name, trail) {
  const here = trail[trail.length - 1];
  const base = "/snapshots/" + encodeURIComponent(name) + "/files";
  box.replaceChildren(h("p", { class: "muted" }, "Loading " + here.path + " …"));
  let entries;
  try {
    entries = await getJSON(base + nsq() + "&path=" + here.raw);
  } catch (err) { box.replaceChildren(errorBox(err)); return; }
  const crumbs = trail.map((c, i) => h("li", {}, i === trail.length - 1
    ? h("span", { "aria-current": "location" }, c.label)
    : h("button", { type: "button", class: "linkish", onclick: () => browse(box, name, trail.slice(0, i + 1)) }, c.label)));
  const msg = h("div", { role: "status", class: "dl-status", id: "download-status" });
  const fileBase = "/snapshots/" + encodeURIComponent(name) + "/files/content" + nsq() + "&path=";
  const rows = entries.map((e) => h("tr", {},
    td(e.type === "dir"
      ? h("button", { type: "button", class: "linkish", onclick: () => browse(box, name, [...trail, { label: e.name, path: e.path, raw: e.raw_path }]) }, e.name + "/")
      : e.name + (e.link_target ? " → " + e.link_target : "")),
    td(e.type), num(e.type === "file" ? bytes(e.size) : ""), td("0" + (e.mode & 0o7777).toString(8)), td(`${e.uid}:${e.gid}`), tm(e.mtime),
    td(e.type === "file" ? downloader({ label: "Download", apiPath: fileBase + e.raw_path, file: e.name, shown: e.path, size: e.size,
      alternative: "Download the whole archive above, or restore the container." },
    undefined, { attrs: { "data-path": e.path, "aria-label": "Download " + e.path }, status: msg }).button : "")));
  box.replaceChildren(h("nav", { "aria-label": "Directory" }, h("ul", { class: "crumbs" }, crumbs)),
    table(`Contents of ${here.path}`, ["Name", "Type", ["Size", "num"], "Mode", "Owner", "Modified", h("span", { class: "visually-hidden" }, "Action")],
      rows, { id: "file-list", empty: "Empty directory." }), msg);
}

// ------------------------------------------------------------------- tasks

function taskRow(t, onLog) {
  return h("tr", { class: t.state === "error" ? "failed" : "" },
    td(t.kind), td(badge(t.state)),
    td([h("progress", { max: Math.max(1, t.total), value: Math.min(t.done, Math.max(1, t.total)), "aria-label": `${t.kind} progress` }),
      " ", t.total ? Math.floor(100 * t.done / t.total) + " %" : ""]),
    td(t.snapshot || (t.ns ? "" : "(maintenance)")), td(t.vmid ? guestLink(t.vmid) : ""), tm(t.created_at), tm(t.finished_at),
    td(t.error || "", "err"), td(onLog ? h("button", { type: "button", class: "secondary", onclick: () => onLog(t) }, "Log") : ""));
}

const TASK_HEAD = ["Kind", "State", "Progress", "Snapshot", "Guest", "Created", "Finished", "Error", ""];

async function tasks(view, _args, ctx) {
  const logBox = h("section", { id: "task-log", "aria-live": "polite" });
  const listBox = h("div");
  view.replaceChildren(h("h1", {}, "Tasks"), h("p", { class: "muted" }, "Refreshed every 2 s while tasks run."), listBox, logBox);
  const showLog = (t) => watchLog(logBox, t, ctx);
  for (;;) {
    let list;
    try {
      list = await getJSON("/tasks" + nsq({ limit: 100 }));
    } catch (err) {
      listBox.replaceChildren(err.status === 501
        ? h("p", { class: "notice" }, "This server does not list tasks yet (GET /api/v1/tasks answers 501). Tasks started from Maintenance are followed there.")
        : errorBox(err));
      return;
    }
    if (!ctx.alive()) return;
    listBox.replaceChildren(table("Tasks, newest first", TASK_HEAD, list.map((t) => taskRow(t, showLog)), { id: "tasks", empty: "No tasks." }));
    await sleep(list.some((t) => t.state === "running") ? 2000 : 10000);
    if (!ctx.alive()) return;
  }
}

async function watchLog(box, t, ctx) {
  const pre = h("pre", { tabindex: "0" });
  box.replaceChildren(h("h2", {}, `Log of ${t.kind} task ${t.id}`), pre);
  let since = 0;
  for (;;) {
    try {
      const [log, cur] = await Promise.all([getJSON(`/tasks/${t.id}/log` + query({ since })), getJSON(`/tasks/${t.id}`)]);
      for (const l of log.lines) { pre.append(`${when(l.time)} ${l.text}\n`); since = l.seq; }
      if (cur.state !== "running" || !ctx.alive() || !pre.isConnected) return cur;
    } catch (err) { box.append(errorBox(err)); return null; }
    await sleep(1000);
  }
}

// watchTask follows one task (GC, verify) until it ends: progress and log.
async function watchTask(box, id, ctx) {
  const row = h("tbody");
  const pre = h("pre", { tabindex: "0" });
  box.replaceChildren(h("div", { class: "table-wrap" }, h("table", { class: "task-watch" }, h("caption", {}, "Task " + id),
    h("thead", {}, h("tr", {}, TASK_HEAD.map((c) => h("th", { scope: "col" }, c)))), row)), pre);
  let since = 0;
  for (;;) {
    let t;
    try {
      const [cur, log] = await Promise.all([getJSON(`/tasks/${id}`), getJSON(`/tasks/${id}/log` + query({ since }))]);
      t = cur;
      row.replaceChildren(taskRow(t));
      for (const l of log.lines) { pre.append(`${when(l.time)} ${l.text}\n`); since = l.seq; }
    } catch (err) { box.append(errorBox(err)); return; }
    if (t.state !== "running" || !ctx.alive()) return;
    await sleep(1000);
  }
}

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

// ------------------------------------------------------------- maintenance

function numInput(name, value) { return h("input", { name, type: "number", min: 0, inputmode: "numeric", value }); }

async function maintenance(view, _args, ctx) {
  const keeps = ["last", "hourly", "daily", "weekly", "monthly", "yearly"];
  const pruneOut = h("div", { id: "prune-result", "aria-live": "polite" });
  const vmid = h("input", { name: "vmid", type: "number", min: 1, inputmode: "numeric" });
  const type = h("select", { name: "type" }, h("option", { value: "" }, "any"), h("option", { value: "qemu" }, "qemu"), h("option", { value: "lxc" }, "lxc"));
  const keepInputs = Object.fromEntries(keeps.map((k) => [k, numInput("keep-" + k, k === "last" ? 3 : "")]));
  const pruneBody = (dry) => {
    const keep = {};
    for (const k of keeps) if (keepInputs[k].value !== "") keep[k] = Number(keepInputs[k].value);
    const b = { ns: session.ns, keep, dry_run: dry };
    if (vmid.value) b.vmid = Number(vmid.value);
    if (type.value) b.type = type.value;
    return b;
  };
  const runPrune = async (dry, btn) => {
    if (!dry && !confirm(`Delete the snapshots marked "remove" in namespace ${session.ns}? This cannot be undone.`)) return;
    pruneOut.replaceChildren(h("p", { class: "muted" }, "Working…"));
    try {
      const marks = await postJSON("/prune", pruneBody(dry));
      const count = (m) => marks.filter((x) => x.mark === m).length;
      pruneOut.replaceChildren(
        h("p", {}, `${dry ? "Dry run" : "Pruned"}: ${count("keep")} keep, ${count("remove")} ${dry ? "would be removed" : "removed"}, ${count("protected")} protected.`),
        table(dry ? "Marks the keep rules would set (nothing was deleted)" : "Marks applied", ["Snapshot", "Mark"],
          marks.map((m) => h("tr", { class: m.mark === "remove" ? "failed" : "" }, td(m.name), td(badge(m.mark)))), { id: "prune-marks", empty: "No snapshots matched." }));
    } catch (err) {
      pruneOut.replaceChildren(errorBox(err));
      if (err.status === 403) btn.disabled = true;
    }
  };
  const dryBtn = h("button", { type: "submit" }, "Dry run");
  const realBtn = h("button", { type: "button", class: "danger", onclick: (ev) => runPrune(false, ev.currentTarget) }, "Prune now");
  const pruneForm = h("form", { id: "prune-form", onsubmit: (ev) => { ev.preventDefault(); runPrune(true, dryBtn); } },
    h("fieldset", {}, h("legend", {}, "Prune (keep rules, PBS semantics)"),
      h("div", { class: "row" }, field("Guest (vmid, optional)", vmid), field("Type", type),
        keeps.map((k) => field("Keep " + k, keepInputs[k]))),
      h("p", { class: "row" }, dryBtn, realBtn)));

  const adminNote = state.admin ? null : h("p", { class: "notice" }, "GC and verify need a token with the admin role; this token does not have it.");
  const taskBox = h("section", { id: "maintenance-task", "aria-live": "polite" });
  const start = async (path, body, btn) => {
    try {
      const ref = await postJSON(path, body);
      await watchTask(taskBox, ref.task_id, ctx);
    } catch (err) {
      taskBox.replaceChildren(errorBox(err));
      if (err.status === 403) { btn.disabled = true; state.admin = false; }
    }
  };
  const grace = h("input", { name: "grace", type: "number", min: 0, class: "wide", placeholder: "server default (24 h)" });
  const gcBtn = h("button", { type: "submit", disabled: !state.admin }, "Start GC");
  const gcForm = h("form", { id: "gc-form", onsubmit: (ev) => { ev.preventDefault(); start("/gc", grace.value ? { grace_seconds: Number(grace.value) } : {}, gcBtn); } },
    h("fieldset", {}, h("legend", {}, "Garbage collection"),
      h("div", { class: "row" }, field("Grace (seconds)", grace), gcBtn)));
  const vsnap = h("input", { name: "snapshot", class: "wide", placeholder: "all snapshots" });
  const older = h("input", { name: "older", type: "number", min: 0 });
  const vBtn = h("button", { type: "submit", disabled: !state.admin }, "Start verify");
  const vForm = h("form", { id: "verify-form", onsubmit: (ev) => {
    ev.preventDefault();
    const b = { ns: session.ns };
    if (vsnap.value.trim()) b.snapshot = vsnap.value.trim();
    if (older.value) b.older_than_days = Number(older.value);
    start("/verify", b, vBtn);
  } }, h("fieldset", {}, h("legend", {}, "Verify"),
    h("div", { class: "row" }, field("Snapshot (optional)", vsnap), field("Not verified for days", older), vBtn)));

  view.replaceChildren(...[h("h1", {}, "Maintenance"), pruneForm, pruneOut, h("h2", {}, "GC and verify"), adminNote, gcForm, vForm, taskBox].filter(Boolean));
}

// ------------------------------------------------------------------ tokens

async function tokens(view) {
  const out = [h("h1", {}, "API tokens")];
  let list;
  try {
    list = await getJSON("/tokens");
  } catch (err) {
    view.replaceChildren(...out, errorBox(err), h("p", {}, "Managing tokens needs a token with the admin role."));
    return;
  }
  const created = h("div", { "aria-live": "polite", id: "token-created" });
  const name = h("input", { name: "name", required: true, maxlength: 128, class: "wide" });
  const role = h("select", { name: "role" }, ["read", "backup", "admin"].map((r) => h("option", { value: r }, r)));
  const nss = h("input", { name: "namespaces", class: "wide", placeholder: "all (comma-separated)" });
  const exp = h("input", { name: "expires", type: "date" });
  const form = h("form", { id: "token-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const b = { name: name.value.trim(), role: role.value };
    const n = nss.value.split(",").map((x) => x.trim()).filter(Boolean);
    if (n.length) b.namespaces = n;
    if (exp.value) b.expires_at = new Date(exp.value + "T00:00:00Z").toISOString();
    try {
      const t = await postJSON("/tokens", b);
      await tokens(view);
      document.getElementById("token-created").replaceChildren(h("p", {}, `Token ${t.name} (${t.role}) created. Copy it now; it is not shown again:`),
        h("p", { class: "secret", tabindex: "0" }, t.token));
    } catch (err) { created.replaceChildren(errorBox(err)); }
  } }, h("fieldset", {}, h("legend", {}, "New token"),
    h("div", { class: "row" }, field("Name", name), field("Role", role), field("Namespaces", nss), field("Expires", exp),
      h("button", { type: "submit" }, "Create"))));
  const rows = list.map((t) => h("tr", {}, td(t.id), td(t.name), td(t.role), td(t.namespaces.length ? t.namespaces.join(", ") : "all"),
    tm(t.created_at), tm(t.expires_at),
    td(h("button", { type: "button", class: "danger", "aria-label": "Delete token " + t.name, onclick: async () => {
      if (!confirm(`Delete token ${t.name} (${t.id})? Clients using it stop working.`)) return;
      try { await del("/tokens/" + encodeURIComponent(t.id)); await tokens(view); } catch (err) { created.replaceChildren(errorBox(err)); }
    } }, "Delete"))));
  view.replaceChildren(...out, form, created,
    table("Tokens (secrets are never shown again)", ["ID", "Name", "Role", "Namespaces", "Created", "Expires", ""], rows, { id: "tokens" }));
}

export const pages = { overview, guests, guest, snapshot, tasks, maintenance, tokens };
