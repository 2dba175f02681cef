// Authenticated calls to this node's HTTP API. The admin API key lives in
// this tab's session storage only and is sent as `Authorization: Bearer`.

const KEY_STORAGE = "herald.apiKey";

let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";

// The key in use; empty when signed out.
export function currentApiKey() {
  return apiKey;
}

// Uses `key` from now on and keeps it for this tab.
export function rememberApiKey(key) {
  apiKey = key;
  sessionStorage.setItem(KEY_STORAGE, key);
}

// Drops the stored key so a reload asks again; the key in use is kept.
export function unstoreApiKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

// Signs out: no key in use and none stored.
export function forgetApiKey() {
  apiKey = "";
  sessionStorage.removeItem(KEY_STORAGE);
}

// Asks /api/v1/stats with `key`, which need not be the key in use.
export function checkKey(key) {
  return fetch("/api/v1/stats", { cache: "no-store", headers: { Authorization: "Bearer " + key } });
}

// fetch() of `path` with the key in use, never cached.
export function api(path, options) {
  const opts = Object.assign({ cache: "no-store" }, options || {});
  opts.headers = Object.assign({ Authorization: "Bearer " + apiKey }, opts.headers || {});
  return fetch(path, opts);
}

// POST of `body` as JSON to `path` with the key in use.
export function apiJson(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

// A readable message for a failed answer: the JSON error's code and
// message when there is one, else the HTTP status.
export async function errorMessage(res) {
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) return `${res.status} ${body.error.code}: ${body.error.message}`;
  } catch (_) {
    // not JSON
  }
  return `HTTP ${res.status}`;
}
