// Entry point: login, navigation (hash routes) and the page frame. The
// pages themselves are in pages.js; all data comes from the REST API.

import { session, request, APIError, setUnauthorizedHandler } from "./api.js";
import { h, errorBox, errText } from "./ui.js";
import { pages, state } from "./pages.js";

const $ = (id) => document.getElementById(id);

function showLogin(message) {
  $("nav").hidden = true;
  $("session").hidden = true;
  $("view").replaceChildren();
  $("login").hidden = false;
  const e = $("login-error");
  e.hidden = !message;
  e.textContent = message || "";
  $("token").focus();
}

async function probeAdmin() {
  // One admin-only read decides whether admin pages and actions are offered;
  // the API still checks every call.
  try {
    await request("GET", "/tokens");
    state.admin = true;
  } catch (err) {
    if (!(err instanceof APIError) || err.status !== 403) throw err;
    state.admin = false;
  }
  $("nav-tokens").parentElement.hidden = !state.admin;
  $("whoami").textContent = state.admin ? "admin token" : "token without admin role";
}

async function login(ev) {
  ev.preventDefault();
  const token = $("token").value.trim();
  $("login-error").hidden = true;
  try {
    // A read-level call the token must be allowed; 401 means it is not a token.
    await request("GET", "/status", { token });
  } catch (err) {
    const e = $("login-error");
    e.textContent = err instanceof APIError && err.status === 401
      ? "Token refused: " + (err.problem.detail || "not a valid token")
      : "Sign-in failed: " + errText(err);
    e.hidden = false;
    $("token").select();
    return;
  }
  session.token = token;
  $("token").value = "";
  await start();
}

function logout() {
  session.token = "";
  state.admin = false;
  location.hash = "";
  showLogin("");
}

let generation = 0;

// route renders the page named by location.hash, e.g. #/guest/100.
async function route() {
  if (!session.token) return showLogin("");
  const [, name = "overview", ...args] = location.hash.replace(/^#/, "").split("/");
  const page = pages[name] || pages.overview;
  const gen = ++generation;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === (pages[name] ? name : "overview") ||
        (a.dataset.page === "guests" && (name === "guest" || name === "snapshot"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const view = $("view");
  view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    await page(view, args.map(decodeURIComponent), { alive: () => gen === generation });
  } catch (err) {
    if (gen === generation) view.replaceChildren(errorBox(err));
  }
  if (gen === generation) {
    const h1 = view.querySelector("h1");
    document.title = (h1 ? h1.textContent + " – " : "") + "Backstop";
  }
}

async function start() {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("session").hidden = false;
  $("ns").value = session.ns;
  try {
    await probeAdmin();
  } catch (err) {
    if (!session.token) return;
    $("whoami").textContent = "role unknown: " + errText(err);
  }
  if (!session.token) return;
  await route();
  $("main").focus();
}

setUnauthorizedHandler((problem) => {
  // The token stopped working (revoked, expired): back to the login page.
  session.token = "";
  showLogin("Signed out: " + ((problem && problem.detail) || "the token was refused"));
});

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", logout);
$("session").addEventListener("submit", (ev) => ev.preventDefault());
$("ns").addEventListener("change", () => {
  if (!$("ns").checkValidity()) return;
  session.ns = $("ns").value.trim();
  route();
});
window.addEventListener("hashchange", () => { route().then(() => $("main").focus()); });

if (session.token) start(); else showLogin("");
