// The REST client: every call the dashboard makes goes through here, to the
// same /api/v1 a curl user has, with the token as a bearer token. The token
// lives in sessionStorage (this tab only, gone when it closes); no cookies.

const TOKEN_KEY = "backstop.token";
const NS_KEY = "backstop.ns";

export class APIError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY) || ""; },
  set token(v) { if (v) sessionStorage.setItem(TOKEN_KEY, v); else sessionStorage.removeItem(TOKEN_KEY); },
  get ns() { return sessionStorage.getItem(NS_KEY) || "default"; },
  set ns(v) { sessionStorage.setItem(NS_KEY, v || "default"); },
};

// query builds "?a=1&b=2" from the defined values of params.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

// request calls the API and returns the response; it throws APIError with
// the problem+json body for any status >= 400.
export async function request(method, path, { body, token, accept, signal } = {}) {
  const headers = { "Authorization": "Bearer " + (token ?? session.token) };
  if (accept) headers["Accept"] = accept;
  const init = { method, headers, cache: "no-store", credentials: "omit", signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch("/api/v1" + path, init);
  if (resp.status >= 400) {
    let problem = null;
    try { problem = await resp.json(); } catch { /* not JSON */ }
    if (resp.status === 401 && token === undefined) onUnauthorized(problem);
    throw new APIError(resp.status, problem);
  }
  return resp;
}

export async function getJSON(path, opts) { return (await request("GET", path, opts)).json(); }
export async function getText(path) { return (await request("GET", path)).text(); }
export async function postJSON(path, body) {
  const resp = await request("POST", path, { body });
  return resp.status === 204 ? null : resp.json();
}
export async function patchJSON(path, body) { return (await request("PATCH", path, { body })).json(); }
export async function del(path) { await request("DELETE", path); }

let unauthorized = () => {};
export function setUnauthorizedHandler(fn) { unauthorized = fn; }
function onUnauthorized(problem) { unauthorized(problem); }
