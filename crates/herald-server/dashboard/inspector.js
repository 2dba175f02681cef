// Room inspector: the members and last events of one room, read from the
// presence and history APIs, refreshed every two seconds while the
// dashboard is live.

import { api, errorMessage } from "/dashboard/api.js";
import { $, el, fmtTime } from "/dashboard/format.js";

let inspectTimer = null;
let inspecting = null; // {room, tenant}
// Whether the dashboard is live (signed in and polling); set by initInspector.
let isLive = () => false;

function roomPath(room, suffix, params) {
  const q = new URLSearchParams(params);
  const qs = q.toString();
  return `/api/v1/rooms/${encodeURIComponent(room)}/${suffix}${qs ? "?" + qs : ""}`;
}

function eventItem(ev) {
  const li = el("li");
  li.append(
    el("span", "off", "#" + ev.offset),
    el("span", "ev", ev.event + (ev.type === "message" && ev.from ? ` ← ${ev.from.user_id}` : "")),
    el("span", "data", JSON.stringify(ev.data)),
    el("span", "ts", ev.ts ? fmtTime(ev.ts) : ""),
  );
  li.title = JSON.stringify(ev);
  return li;
}

async function inspect() {
  if (!inspecting) return;
  const { room, tenant } = inspecting;
  const base = tenant ? { tenant } : {};
  const err = $("inspector-error");
  try {
    const [pRes, hRes] = await Promise.all([
      api(roomPath(room, "presence", base)),
      api(roomPath(room, "history", Object.assign({ limit: 20 }, base))),
    ]);
    if (!pRes.ok) throw new Error(await errorMessage(pRes));
    if (!hRes.ok) throw new Error(await errorMessage(hRes));
    const presence = await pRes.json();
    let history = await hRes.json();
    // History runs oldest first from `since`; ask again for the tail.
    const lastShown = history.events.length ? history.events[history.events.length - 1].offset : 0;
    if (history.offset > lastShown && history.offset > 20) {
      const since = Math.max(0, history.offset - 20);
      const again = await api(roomPath(room, "history", Object.assign({ limit: 20, since, epoch: history.epoch }, base)));
      if (again.ok) history = await again.json();
    }
    if (!inspecting || inspecting.room !== room) return;
    err.textContent = "";
    $("inspector-result").hidden = false;
    const members = presence.members || [];
    $("inspector-member-count").textContent = members.length;
    const mBody = $("inspector-members");
    mBody.replaceChildren();
    if (!members.length) {
      const tr = el("tr");
      const td = el("td", "empty", "No members on this room (or presence is off for its namespace).");
      td.colSpan = 3;
      tr.append(td);
      mBody.append(tr);
    }
    for (const m of members) {
      const tr = el("tr");
      tr.append(el("td", "", m.user_id), el("td", "", m.connection_id), el("td", "", m.node_id));
      mBody.append(tr);
    }
    $("inspector-position").textContent = `epoch ${history.epoch} · offset ${history.offset}`;
    const list = $("inspector-events");
    list.replaceChildren();
    const events = (history.events || []).slice().reverse();
    if (!events.length) list.append(el("li", "empty", "No stored events (history may be off for this namespace)."));
    for (const ev of events) list.append(eventItem(ev));
  } catch (e) {
    err.textContent = String(e.message || e);
  }
}

function scheduleInspect() {
  if (inspectTimer) clearInterval(inspectTimer);
  inspectTimer = null;
  if (inspecting && $("inspect-auto").checked) {
    inspectTimer = setInterval(() => {
      if (isLive()) inspect();
    }, 2000);
  }
}

// Wires the inspector's form; `live` tells whether the dashboard is polling.
export function initInspector(live) {
  isLive = live;
  $("inspector-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const room = $("inspect-room").value.trim();
    if (!room) return;
    inspecting = { room, tenant: $("inspect-tenant").value.trim() };
    $("inspector-error").textContent = "";
    inspect();
    scheduleInspect();
  });
  $("inspect-auto").addEventListener("change", scheduleInspect);
}
