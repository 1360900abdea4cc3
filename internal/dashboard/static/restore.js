// Restore actions on a snapshot's page: NBD exports of a VM's disks and
// downloads of whole disk images and container archives. All of them are
// REST calls a curl user can make with the same token.
//
// Downloads stream to disk where the browser has the File System Access API
// (showSaveFilePicker): the response body is piped into the chosen file and
// never held in the tab. Elsewhere the bytes are collected into a Blob, which
// lives in the tab's memory, so that path stops at limits.blobBytes and
// points to the NBD export or curl instead.

import { session, getJSON, postJSON, del, request, query, APIError } from "./api.js";
import { h, bytes, when, table, td, errorBox, errText, field } from "./ui.js";

const MiB = 1024 * 1024;

// limits.blobBytes caps the in-memory fallback. It is a property of an
// exported object rather than a constant so that it can be read (and, by
// the browser test, lowered) from outside this module.
export const limits = { blobBytes: 256 * MiB };

const nsq = (extra = {}) => query({ ns: session.ns, ...extra });
const snapPath = (name) => "/snapshots/" + encodeURIComponent(name);

// curlCommand is what to run instead of a browser download. The token is
// never put on the page: $TOKEN is the user's to set.
export function curlCommand(apiPath, file) {
  return `curl -f -o ${shellQuote(file)} -H "Authorization: Bearer $TOKEN" ${shellQuote(location.origin + "/api/v1" + apiPath)}`;
}

// shellQuote makes s one POSIX shell word (file names come from backups).
function shellQuote(s) { return "'" + s.replace(/'/g, "'\\''") + "'"; }

function copyable(text, label, id) {
  const code = h("code", { id, class: "cmd", tabindex: "0" }, text);
  const note = h("span", { class: "muted", role: "status" });
  const btn = h("button", { type: "button", class: "secondary", "aria-label": "Copy " + label, onclick: async () => {
    try {
      await navigator.clipboard.writeText(text);
      note.textContent = "Copied.";
    } catch {
      // No clipboard permission: select the text for Ctrl+C instead.
      const r = document.createRange();
      r.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(r);
      note.textContent = "Selected; press Ctrl+C to copy.";
    }
  } }, "Copy");
  return h("div", { class: "copyable" }, code, h("span", { class: "copy-actions" }, btn, note));
}

// ---------------------------------------------------------------- downloads

// downloader returns the controls for one download: a button and a status
// element for progress and messages (the curl alternative when too large).
// what = {label, apiPath, file (name to save as), shown (name in messages,
// default file), size (when known beforehand), alternative (extra advice
// when too large)}. attrs are extra attributes of the button; status may be
// shared between several downloaders.
export function downloader(what, id, { attrs = {}, status } = {}) {
  status ??= h("div", { class: "dl-status", id: id + "-status", role: "status" });
  const d = { status, onStatus: () => {} };
  d.button = h("button", { type: "button", class: "secondary", id, ...attrs, onclick: () => download(what, d) }, what.label);
  return d;
}

async function download(what, { button: btn, status, onStatus }) {
  const path = what.apiPath;
  const abort = new AbortController();
  const bar = h("progress", { max: what.size || 1, value: 0, "aria-label": what.label + " progress" });
  const text = h("span", {});
  const cancel = h("button", { type: "button", class: "secondary", onclick: () => abort.abort() }, "Cancel");
  const show = (cls, ...content) => { status.className = "dl-status " + cls; status.replaceChildren(...content); onStatus(); };
  const progress = (n, total) => {
    if (total) { bar.max = total; bar.value = n; } else bar.removeAttribute("value");
    text.textContent = ` ${bytes(n)}${total ? " of " + bytes(total) : ""}`;
  };
  btn.disabled = true;
  try {
    if (typeof window.showSaveFilePicker === "function") {
      let handle;
      try {
        handle = await window.showSaveFilePicker({ suggestedName: what.file });
      } catch (err) {
        if (err.name === "AbortError") { show("muted", "Cancelled: no file chosen."); return; }
        throw err;
      }
      show("", bar, text, " ", cancel);
      const resp = await request("GET", path, { signal: abort.signal });
      const total = what.size || Number(resp.headers.get("Content-Length")) || 0;
      const writable = await handle.createWritable();
      let n = 0;
      const count = new TransformStream({ transform(chunk, ctl) { n += chunk.byteLength; progress(n, total); ctl.enqueue(chunk); } });
      // pipeTo closes the file when the body ends and aborts it (the file
      // keeps its old contents) when the download fails or is cancelled.
      await resp.body.pipeThrough(count).pipeTo(writable, { signal: abort.signal });
      show("ok", `Saved ${handle.name} (${bytes(n)}), streamed to disk.`);
      return;
    }
    // No File System Access API: the bytes go through a Blob in memory.
    const limit = limits.blobBytes;
    if (what.size > limit) { show("notice", ...tooLarge(what, what.size, limit)); return; }
    show("", bar, text, " ", cancel);
    const resp = await request("GET", path, { signal: abort.signal });
    const announced = Number(resp.headers.get("Content-Length")) || 0;
    if (announced > limit) { await resp.body.cancel(); show("notice", ...tooLarge(what, announced, limit)); return; }
    const total = what.size || announced;
    const reader = resp.body.getReader();
    const parts = [];
    let n = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      n += value.byteLength;
      if (n > limit) { await reader.cancel(); show("notice", ...tooLarge(what, null, limit)); return; }
      parts.push(value);
      progress(n, total);
    }
    const url = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
    const a = h("a", { href: url, download: what.file, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    show("ok", `Downloaded ${what.shown || what.file} (${bytes(n)}) through the browser's memory.`);
  } catch (err) {
    if (abort.signal.aborted) show("muted", "Cancelled.");
    else show("error", "Download failed: " + errText(err));
  } finally {
    btn.disabled = false;
  }
}

function tooLarge(what, size, limit) {
  return [
    h("p", {}, `${what.shown || what.file} is ${size ? bytes(size) : "larger than " + bytes(limit)}: too large to pass through this tab's memory ` +
      `(limit ${bytes(limit)}), and this browser cannot stream a download to disk (no File System Access API). ` +
      (what.alternative ? what.alternative + " " : "") + "Or download it with curl, setting TOKEN to your API token:"),
    copyable(curlCommand(what.apiPath, what.file), "curl command", null),
  ];
}

// ------------------------------------------------------------------ exports

const TTLS = [[3600, "1 hour"], [6 * 3600, "6 hours"], [86400, "24 hours"], [7 * 86400, "7 days"]];

function qemuImgCommand(uri, device) {
  return `qemu-img convert -p -f raw ${uri} -O qcow2 ${device}.qcow2`;
}

// vmRestore builds the disks table with each disk's restore actions and
// the namespace's active exports.
export function vmRestore(name, disks) {
  const created = h("div", { id: "export-created", "aria-live": "polite" });
  const listBox = h("div", { id: "exports-box" });
  const roleNote = h("p", { class: "notice", id: "restore-role", hidden: true });
  const buttons = [];
  const refresh = () => listExports(listBox, roleNote, buttons, name, created);

  const rows = disks.map((d) => {
    const ttl = h("select", { name: "ttl", "aria-label": `Export lifetime for ${d.device}` },
      TTLS.map(([s, label]) => h("option", { value: s, selected: s === 86400 }, label)));
    const mk = h("button", { type: "button", "data-device": d.device, class: "create-export", onclick: async () => {
      mk.disabled = true;
      created.replaceChildren(h("p", { class: "muted" }, `Creating an export of ${d.device} …`));
      try {
        const e = await postJSON(snapPath(name) + "/disks/" + encodeURIComponent(d.device) + "/exports",
          { ns: session.ns, ttl_seconds: Number(ttl.value) });
        showCreated(created, e, refresh);
        await refresh();
      } catch (err) {
        created.replaceChildren(errorBox(err));
      } finally { mk.disabled = false; }
    } }, "Create NBD export");
    const file = `${name}.${d.device}.raw`;
    const dl = downloader({ label: "Download raw image", apiPath: snapPath(name) + "/disks/" + encodeURIComponent(d.device) + "/raw" + nsq(),
      file, size: d.size, alternative: "Create an NBD export above and read it with qemu-img (the command is shown with the export)." },
    "download-" + d.device);
    buttons.push(mk, dl.button);
    // The download's progress and messages get a full-width row of their
    // own, shown once there is something to say.
    const statusRow = h("tr", { class: "status-row", hidden: true }, h("td", { colspan: 4 }, dl.status));
    dl.onStatus = () => { statusRow.hidden = false; };
    return [h("tr", {}, td(d.device), h("td", { class: "num" }, bytes(d.size)),
      td(h("div", { class: "actions" }, h("label", { class: "inline" }, "Lifetime ", ttl), mk)), td(dl.button)), statusRow];
  });
  refresh();
  return [roleNote,
    table("Disks of this VM backup and their restore actions", ["Device", ["Size", "num"], "NBD export", "Raw image"], rows, { id: "disks" }),
    created,
    h("h3", {}, `Active NBD exports in namespace ${session.ns}`),
    listBox];
}

function showCreated(box, e, refresh) {
  box.replaceChildren(h("section", { class: "created", "aria-labelledby": "export-created-h" },
    h("h3", { id: "export-created-h" }, `Export of ${e.device} created`),
    h("dl", { class: "kv" },
      h("dt", {}, "NBD URI"), h("dd", {}, h("code", { id: "export-uri" }, e.uri)),
      h("dt", {}, "Expires"), h("dd", { id: "export-expires" }, when(e.expires_at)),
      h("dt", {}, "Restore to a file"), h("dd", {}, copyable(qemuImgCommand(e.uri, e.device), "qemu-img command", "export-command"))),
    h("p", {}, h("button", { type: "button", class: "danger", id: "export-delete", onclick: () => deleteExport(e, box, refresh) }, "Delete export"))));
}

async function deleteExport(e, msgBox, refresh) {
  try {
    await del("/exports/" + encodeURIComponent(e.id));
    msgBox.replaceChildren(h("p", { role: "status", id: "export-deleted" }, `Export ${e.id} (${e.snapshot} ${e.device}) deleted.`));
  } catch (err) {
    msgBox.replaceChildren(errorBox(err));
  }
  await refresh();
}

async function listExports(box, roleNote, buttons, name, msgBox) {
  let list;
  try {
    list = await getJSON("/exports");
  } catch (err) {
    if (err instanceof APIError && err.status === 403) {
      // Exports, raw images and archives all need role backup.
      roleNote.textContent = "Restoring needs a token with role backup or admin; the API refused this one: " +
        (err.problem.detail || err.message);
      roleNote.hidden = false;
      for (const b of buttons) b.disabled = true;
      box.replaceChildren(h("p", { class: "muted", id: "exports" }, "Not available to this token."));
    } else box.replaceChildren(errorBox(err));
    return;
  }
  const mine = list.filter((e) => e.ns === session.ns)
    .sort((a, b) => Date.parse(a.expires_at) - Date.parse(b.expires_at));
  const refresh = () => listExports(box, roleNote, buttons, name, msgBox);
  box.replaceChildren(table("Exports anyone with the URI can read until they expire or are deleted", ["Snapshot", "Device", "URI", "Expires", "Client", ""],
    mine.map((e) => h("tr", { class: e.snapshot === name ? "current" : "", "data-id": e.id },
      td(e.snapshot), td(e.device), td(h("code", {}, e.uri)), h("td", { class: "time" }, when(e.expires_at)), td(e.client || "any"),
      td(h("button", { type: "button", class: "danger", "aria-label": `Delete export ${e.id}`, onclick: () => deleteExport(e, msgBox, refresh) }, "Delete")))),
    { id: "exports", empty: "No active exports." }));
}

// ctRestore offers a container's whole archive.
export function ctRestore(name, snap) {
  const file = name + ".tar.zst";
  const dl = downloader({ label: "Download archive (.tar.zst)", apiPath: snapPath(name) + "/archive" + nsq({ compress: "zstd" }), file },
    "download-archive");
  return [h("p", { class: "actions center" }, dl.button,
    h("span", { class: "muted" }, `the container's tar stream (${bytes(snap.size)} before compression), zstd-compressed`)), dl.status];
}
