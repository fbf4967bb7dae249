// hubbub admin page: polls the JSON API under /api/admin/ every POLL_MS and
// draws what it says. The API key is asked for once, kept in this tab's
// sessionStorage and sent as "Authorization: Bearer"; never put in a URL.
// No innerHTML: every text from the server goes through textContent.

const POLL_MS = 2000;
const KEY_NAME = "hubbub.adminKey";
const $ = (id) => document.getElementById(id);

let key = sessionStorage.getItem(KEY_NAME) || "";
let timer = 0;
let busy = false;
let lastErrorId = 0;

class AuthError extends Error {}

async function api(method, path) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${key}` },
    cache: "no-store",
    credentials: "omit",
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const reason = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
  // 429: too many failed sign-ins from here (the server paces guesses).
  if ([401, 403, 429].includes(response.status)) throw new AuthError(reason);
  if (!response.ok) throw new Error(reason);
  return body;
}

// -- formatting ---------------------------------------------------------------

const numberFormat = new Intl.NumberFormat();
const fmt = (n) => (typeof n === "number" ? numberFormat.format(n) : "–");

function bytes(n) {
  if (typeof n !== "number") return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function duration(seconds) {
  if (typeof seconds !== "number" || !(seconds >= 0)) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function clock(ts) {
  if (typeof ts !== "number") return "–";
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("aria-") || name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// -- keyed table rows: a row stays the same element while its key is listed, so
// a focused button keeps its focus across refreshes ---------------------------

function syncRows(tbody, items, keyOf, build, update) {
  const old = new Map();
  for (const tr of Array.from(tbody.children)) old.set(tr.dataset.key, tr);
  items.forEach((item, i) => {
    const k = String(keyOf(item));
    let tr = old.get(k);
    if (tr) old.delete(k);
    else tr = build(item, k);
    update(tr, item);
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  for (const tr of old.values()) tr.remove();
}

function cells(tr, values) {
  values.forEach((value, i) => {
    const td = tr.children[i];
    if (td.textContent !== value) td.textContent = value;
  });
}

// -- connections ---------------------------------------------------------------

function buildConnection(c, k) {
  const tr = el("tr", { "data-key": k });
  for (let i = 0; i < 8; i++) tr.append(el("td", i === 0 || i === 6 ? { class: "num" } : {}));
  const kick = el("button", { type: "button", class: "btn btn-small btn-danger", text: "Kick" });
  kick.addEventListener("click", () => kickConnection(Number(k), tr.dataset.who || ""));
  tr.append(el("td", { class: "actions" }, kick));
  return tr;
}

function updateConnection(tr, c) {
  const who = [c.nick, c.user && c.user !== c.nick ? `(${c.user})` : ""].filter(Boolean).join(" ");
  const rooms = c.rooms.join(", ") + (c.room_count > c.rooms.length ? ` +${c.room_count - c.rooms.length}` : "");
  tr.dataset.who = who;
  cells(tr, [
    String(c.fd),
    c.address,
    c.protocol,
    c.transport,
    who || "–",
    rooms || "–",
    bytes(c.send_buffer),
    typeof c.connected_at === "number" ? clock(c.connected_at) : "–",
  ]);
  tr.lastChild.firstChild.setAttribute("aria-label", `Kick connection ${c.fd}${who ? ` (${who})` : ""}`);
}

function drawConnections(data) {
  const items = data.connections;
  syncRows($("conn-rows"), items, (c) => c.fd, buildConnection, updateConnection);
  $("conn-empty").hidden = items.length > 0;
  $("conn-more").textContent =
    data.total > items.length ? `Showing ${fmt(items.length)} of ${fmt(data.total)} (${fmt(data.total - items.length)} more)` : "";
}

// -- rooms -----------------------------------------------------------------------

function buildRoom(r, k) {
  const tr = el("tr", { "data-key": k });
  tr.append(el("td", { class: "room-name" }), el("td", { class: "num" }), el("td", { class: "num" }), el("td", { class: "num" }));
  const reset = el("button", { type: "button", class: "btn btn-small", text: "Reset history", "aria-label": `Reset history of ${k}` });
  reset.addEventListener("click", () => resetRoom(k));
  const del = el("button", { type: "button", class: "btn btn-small btn-danger", text: "Delete", "aria-label": `Delete ${k}` });
  del.addEventListener("click", () => deleteRoom(k));
  tr.append(el("td", { class: "actions" }, reset, del));
  return tr;
}

function updateRoom(tr, r) {
  const rate = r.per_minute === null ? "measuring…" : `${r.per_minute.toFixed(1)}`;
  cells(tr, [`#${r.name}`, fmt(r.members), fmt(r.seq), rate]);
  tr.children[3].title = r.per_minute === null ? "" : `over the last ${Math.round(r.rate_over)} s`;
}

function drawRooms(data) {
  const items = data.rooms;
  syncRows($("rooms-rows"), items, (r) => r.name, buildRoom, updateRoom);
  $("rooms-empty").hidden = items.length > 0;
  $("rooms-more").textContent =
    data.next !== null ? `Showing the first ${fmt(items.length)} of ${fmt(data.total)} (${fmt(data.total - items.length)} more)` : "";
}

// -- overview, journal, errors --------------------------------------------------------

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]));
}

function drawOverview(o) {
  $("t-connections").textContent = fmt(o.connections.total);
  $("t-rooms").textContent = fmt(o.rooms.total);
  $("t-queue").textContent = fmt(o.journal.queue);
  $("t-errors").textContent = fmt(o.errors.total);
  $("t-uptime").textContent = duration(o.node.uptime);
  const j = o.journal;
  facts($("journal"), [
    ["Queue depth", `${fmt(j.queue)} of ${fmt(j.max_queue)}`],
    ["Last commit", j.last_commit_ms === null ? "not measured" : `${j.last_commit_ms.toFixed(1)} ms`],
    ["Messages committed", fmt(j.committed)],
    ["Commits (batches)", fmt(j.batches)],
    ["Failed commits", fmt(j.failures)],
  ]);
  facts($("node"), [
    ["Process", `pid ${o.node.pid}`],
    ["Started", o.node.started_at ? new Date(o.node.started_at * 1000).toLocaleString() : "–"],
    ["Store", o.node.store],
    ["Broker", o.node.broker],
    ["hubbub.v1 connections", `${fmt(o.connections.hubbub_v1)} (limit ${fmt(o.connections.max)} in all)`],
    ["Rooms with members here", fmt(o.rooms.active)],
  ]);
}

function drawErrors(data) {
  const list = $("errors");
  const items = data.errors;
  const newest = items.length ? items[0].id : lastErrorId;
  if (newest !== lastErrorId || list.children.length !== items.length) {
    list.replaceChildren(
      ...items.map((e) => {
        const li = el(
          "li",
          { class: `err err-${e.level.toLowerCase()}` },
          el("span", { class: "err-time", text: clock(e.ts) }),
          el("span", { class: "err-level", text: e.level }),
          el("span", { class: "err-logger", text: e.logger }),
          el("span", { class: "err-msg", text: e.message }),
        );
        if (e.exception) li.append(el("details", {}, el("summary", { text: "Traceback" }), el("pre", { text: e.exception })));
        return li;
      }),
    );
    lastErrorId = newest;
  }
  $("errors-empty").hidden = items.length > 0;
  const s = data.summary;
  $("errors-more").textContent = s.total > items.length ? `Newest ${fmt(items.length)} of ${fmt(s.total)} since start` : "";
}

// -- polling --------------------------------------------------------------------------

function setStatus(text, state) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = state;
}

async function refresh() {
  if (busy || !key) return;
  busy = true;
  try {
    const [overview, conns, rooms, errors] = await Promise.all([
      api("GET", "/api/admin/overview"),
      api("GET", "/api/admin/connections?limit=100"),
      api("GET", "/api/admin/rooms?limit=100"),
      api("GET", "/api/admin/errors?limit=50"),
    ]);
    showDashboard();
    drawOverview(overview);
    drawConnections(conns);
    drawRooms(rooms);
    drawErrors(errors);
    setStatus(`Updated ${clock(Date.now() / 1000)}`, "ok");
  } catch (err) {
    if (err instanceof AuthError) return signOut(err.message);
    setStatus(`Cannot reach the server: ${err.message}`, "error");
  } finally {
    busy = false;
  }
}

function schedule() {
  clearTimeout(timer);
  if (!key || document.hidden) return;
  timer = setTimeout(async () => {
    await refresh();
    schedule();
  }, POLL_MS);
}

document.addEventListener("visibilitychange", async () => {
  if (!document.hidden && key) await refresh();
  schedule();
});

// -- actions -------------------------------------------------------------------------------

function confirmAction(title, text, verb) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = verb;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

function notice(text, state = "ok") {
  const n = $("notice");
  n.textContent = text;
  n.dataset.state = state;
}

async function act(method, path, done) {
  try {
    const body = await api(method, path);
    notice(done(body));
  } catch (err) {
    if (err instanceof AuthError) return signOut(err.message);
    notice(err.message, "error");
  }
  await refresh();
}

async function kickConnection(fd, who) {
  const ok = await confirmAction(`Kick connection ${fd}?`, `Close connection ${fd}${who ? ` (${who})` : ""}. The client is told it was kicked by an administrator.`, "Kick");
  if (ok) await act("DELETE", `/api/admin/connections/${fd}`, (b) => `Connection ${b.kicked} kicked (close code ${b.code}).`);
}

async function deleteRoom(room) {
  const ok = await confirmAction(`Delete #${room}?`, `Delete #${room} and all its history. Its members are removed from it.`, "Delete room");
  if (ok) await act("DELETE", `/api/admin/rooms/${encodeURIComponent(room)}`, (b) => `#${b.deleted} deleted (${b.members_removed} member(s) removed).`);
}

async function resetRoom(room) {
  const ok = await confirmAction(`Reset the history of #${room}?`, `Delete every message of #${room}. Members stay in the room and see it empty; numbering starts again.`, "Reset history");
  if (ok) await act("POST", `/api/admin/rooms/${encodeURIComponent(room)}/reset`, (b) => `History of #${b.reset} reset (${b.members_told} member(s) told).`);
}

// -- signing in and out --------------------------------------------------------------------

function showDashboard() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("sign-out").hidden = false;
}

function signOut(reason = "") {
  key = "";
  sessionStorage.removeItem(KEY_NAME);
  clearTimeout(timer);
  $("dashboard").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = reason;
  setStatus("Not signed in", "idle");
  $("key-input").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("key-input");
  const given = input.value.trim();
  if (!given) {
    $("login-error").textContent = "Enter the API key or an admin token.";
    return;
  }
  key = given;
  input.value = "";
  $("login-error").textContent = "";
  sessionStorage.setItem(KEY_NAME, key);
  setStatus("Signing in…", "idle");
  await refresh();
  schedule();
});

$("sign-out").addEventListener("click", () => signOut());

if (key) {
  refresh().then(schedule);
} else {
  $("key-input").focus();
}
