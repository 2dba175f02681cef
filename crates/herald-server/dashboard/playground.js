// Playground: mint a token with the admin key, open a WebSocket with it,
// join a room, publish over the HTTP API, and log every frame.

import { apiJson, errorMessage } from "/dashboard/api.js";
import { $, el, fmtTime } from "/dashboard/format.js";

let ws = null;
let nextId = 1;

function logFrame(kind, text) {
  const log = $("pg-log");
  const li = el("li", kind);
  const arrow = { in: "←", out: "→", sys: "•", err: "!" }[kind] || "•";
  li.append(el("span", "ts", fmtTime(Date.now())), el("span", "dir", arrow), el("span", "data", text));
  li.title = text;
  log.append(li);
  while (log.children.length > 200) log.firstChild.remove();
  log.scrollTop = log.scrollHeight;
}

function pgState() {
  const open = ws && ws.readyState === WebSocket.OPEN;
  const connecting = ws && ws.readyState === WebSocket.CONNECTING;
  const badge = $("pg-state");
  badge.textContent = open ? "open" : connecting ? "connecting" : "closed";
  badge.className = "badge" + (open ? " open" : "");
  $("pg-connect").textContent = open || connecting ? "Disconnect" : "Connect";
  $("pg-connect").disabled = !$("pg-token").value && !ws;
  $("pg-join").disabled = !open;
}

export function pgDisconnect() {
  if (ws) {
    const s = ws;
    ws = null;
    s.close(1000);
  }
  if ($("pg-state")) pgState();
}

function pgConnect() {
  const token = $("pg-token").value;
  if (!token) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${proto}//${location.host}/ws?token=${encodeURIComponent(token)}`;
  logFrame("sys", "connecting to /ws");
  const sock = new WebSocket(url);
  ws = sock;
  sock.onopen = () => {
    logFrame("sys", "connected");
    pgState();
  };
  sock.onmessage = (m) => {
    logFrame("in", typeof m.data === "string" ? m.data : "(binary frame)");
  };
  sock.onerror = () => logFrame("err", "WebSocket error");
  sock.onclose = (e) => {
    logFrame("sys", `closed ${e.code}${e.reason ? " " + e.reason : ""}`);
    if (ws === sock) ws = null;
    pgState();
  };
  pgState();
}

function pgSend(frame) {
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    logFrame("err", "not connected");
    return;
  }
  const text = JSON.stringify(frame);
  ws.send(text);
  logFrame("out", text);
}

function parseJsonField(id, what) {
  const text = $(id).value.trim();
  if (!text) return { ok: true, value: undefined };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (e) {
    logFrame("err", `${what} is not valid JSON: ${e.message}`);
    return { ok: false };
  }
}

async function pgMint() {
  const sub = $("pg-sub").value.trim();
  if (!sub) {
    logFrame("err", "enter a user id");
    return;
  }
  const claims = parseJsonField("pg-claims", "claims");
  if (!claims.ok) return;
  if (claims.value !== undefined && (typeof claims.value !== "object" || Array.isArray(claims.value) || claims.value === null)) {
    logFrame("err", "claims must be a JSON object");
    return;
  }
  try {
    const res = await apiJson("/api/v1/tokens", { sub, claims: claims.value || {} });
    if (!res.ok) {
      logFrame("err", "mint failed: " + (await errorMessage(res)));
      return;
    }
    const body = await res.json();
    $("pg-token").value = body.token;
    logFrame("sys", `token minted for ${sub}, expires ${new Date(body.expires_at * 1000).toLocaleString("en-GB")}`);
  } catch (e) {
    logFrame("err", "mint failed: " + (e.message || e));
  }
  pgState();
}

async function pgPublish() {
  const room = $("pg-room").value.trim();
  const event = $("pg-event").value.trim();
  const data = parseJsonField("pg-data", "data");
  if (!data.ok) return;
  if (!room || !event) {
    logFrame("err", "enter a room and an event name");
    return;
  }
  try {
    const res = await apiJson("/api/v1/publish", { room, event, data: data.value === undefined ? null : data.value });
    if (!res.ok) {
      logFrame("err", "publish failed: " + (await errorMessage(res)));
      return;
    }
    const body = await res.json();
    logFrame("sys", `published ${event} to ${room} at offset ${body.offset}`);
  } catch (e) {
    logFrame("err", "publish failed: " + (e.message || e));
  }
}

// Wires the playground's forms and buttons.
export function initPlayground() {
  $("pg-token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    pgMint();
  });
  $("pg-connect").addEventListener("click", () => {
    if (ws) {
      pgDisconnect();
    } else {
      pgConnect();
    }
  });
  $("pg-join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const room = $("pg-room").value.trim();
    if (room) pgSend({ type: "join_room", room, id: nextId++ });
  });
  $("pg-publish-form").addEventListener("submit", (e) => {
    e.preventDefault();
    pgPublish();
  });
  $("pg-clear").addEventListener("click", () => $("pg-log").replaceChildren());
  pgState();
}
