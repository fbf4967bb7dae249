import { $, h, uuid } from "./util.js";
import { roomOk, TYPING_SEND_EVERY, TYPING_IDLE, SLOW_LINGER, KEYS, session, S } from "./state.js";
import { wsSend, sendWait } from "./connection.js";
import { Room, ensureRoom } from "./rooms.js";
import { renderPendingStates, renderMessage, scrollToBottom } from "./render.js";

/** Our own message came back: drop its pending row. */
export function resolvePending(clientId, room) {
  if (!clientId) return false;
  const item = S.pending.get(clientId);
  if (!item || item.kind !== "send" || !room || item.room !== room.name) return false;
  S.pending.delete(clientId);
  item.el.remove();
  savePending();
  pump(); // the next message of this conversation may go now
  return true;
}

export function sendText(text) {
  const view = S.current;
  if (!view) return;
  if (view instanceof Room) {
    const item = { id: uuid(), kind: "send", room: view.name, text, ts: Date.now() / 1000, state: "queued" };
    queue(view, item);
    flush(view);
  } else {
    const item = { id: uuid(), kind: "dm", to: view.peer, dm: view, text, ts: Date.now() / 1000, state: "queued" };
    queue(view, item);
    flushDms();
  }
  stopTyping();
}

export function queue(view, item) {
  S.pending.set(item.id, item);
  savePending();
  item.el = renderMessage({ nick: S.me || S.wantNick, text: item.text, ts: item.ts }, true, item.kind === "dm");
  item.el.classList.add("pending");
  item.el.dataset.clientId = item.id;
  item.el.querySelector(".msg-meta").append(h("span", { class: "msg-status" }));
  view.tail.append(item.el);
  renderPendingStates();
  view.stick = true;
  scrollToBottom(view);
}

/** Unsent room messages, kept for this tab: a reload sends them (same ids). */
export function savePending() {
  const items = [...S.pending.values()]
    .filter((p) => p.kind === "send" && p.state !== "failed")
    .map(({ id, room, text, ts }) => ({ id, room, text, ts }));
  session.set(KEYS.pending, JSON.stringify(items));
}

export function restorePending() {
  let items = [];
  try {
    items = JSON.parse(session.get(KEYS.pending) || "[]");
  } catch {
    items = [];
  }
  for (const p of Array.isArray(items) ? items : []) {
    if (!p || typeof p.id !== "string" || typeof p.text !== "string" || !roomOk(p.room)) continue;
    const room = ensureRoom(p.room);
    queue(room, { id: p.id, kind: "send", room: p.room, text: p.text, ts: Number(p.ts) || Date.now() / 1000, state: "queued" });
  }
}

/** Send what waits, in the order it was typed (the room's own argument is kept for callers). */
export function flush(room) {
  void room;
  pump();
}

export function flushDms() {
  pump();
}

/** The conversation a pending message belongs to: its messages go out one at a time, in order. */
export function laneOf(item) {
  return item.kind === "send" ? `#${item.room}` : `@${item.to.toLowerCase()}`;
}

/**
 * Send what waits. Within one conversation only one message is on its way at
 * a time: the next goes when the server has acknowledged (or echoed) the one
 * before, so a refused message is resent before anything typed after it and
 * the server stores them in the order typed. Messages also wait for a token of
 * the server's rate limit (mirrored here) instead of being refused.
 */
export function pump() {
  clearTimeout(S.pumpTimer);
  S.pumpTimer = null;
  const busy = new Set();
  let wake = Infinity; // ms until something held back may go
  let slowed = false;
  const now = Date.now();
  for (const item of S.pending.values()) {
    item.held = false;
    if (item.state === "failed") continue;
    const lane = laneOf(item);
    if (busy.has(lane)) continue;
    busy.add(lane);
    if (item.state !== "queued") continue; // on its way: the rest of its conversation waits
    if (item.notBefore > now) {
      wake = Math.min(wake, item.notBefore - now);
      continue;
    }
    let frame;
    if (item.kind === "send") {
      const room = S.rooms.get(item.room);
      if (!room || room.joined !== "yes" || room.resuming) continue;
      frame = { type: "send", room: item.room, id: item.id, text: item.text };
    } else {
      const room = dmRoute(item.dm);
      if (!room) {
        if (S.welcomed && [...S.rooms.values()].every((r) => r.joined === "yes")) {
          item.state = "failed";
          item.error = `${item.dm.peer} is not in any of your rooms`;
        }
        continue;
      }
      frame = { type: "dm", room: room.name, to: item.dm.peer, text: item.text, id: item.id };
    }
    if (!S.welcomed) continue;
    const wait = sendWait();
    if (wait > 0) {
      item.held = true;
      slowed = true;
      wake = Math.min(wake, wait);
      continue;
    }
    if (!wsSend(frame)) continue;
    item.state = "sent";
  }
  // The note stays while the queue drains (messages alternate between waiting
  // for a token and being on their way), instead of flickering on and off.
  if (slowed) S.slowUntil = now + SLOW_LINGER;
  const waiting = [...S.pending.values()].some((p) => p.state !== "failed");
  const show = slowed || (waiting && S.slowUntil > now);
  if (show && !slowed) wake = Math.min(wake, S.slowUntil - now);
  if (wake !== Infinity) S.pumpTimer = setTimeout(pump, Math.max(20, wake));
  setSlowed(show);
  renderPendingStates();
}

/** Tell the user that their messages wait for the server's rate limit (and when that is over). */
export function setSlowed(on) {
  if (on === S.slowed) return;
  S.slowed = on;
  const note = $("send-note");
  note.hidden = !on;
  note.textContent = on ? "Slow down: you are sending faster than the server allows. Your messages go out one by one, in order." : "";
}

/** A joined room the DM peer is in: the one the conversation used, else any. */
export function dmRoute(dm) {
  const hinted = dm.room ? S.rooms.get(dm.room) : null;
  const key = dm.peer.toLowerCase();
  // A large room's panel holds pages of its list only: trust the room the conversation used.
  if (hinted && hinted.joined === "yes" && (hinted.members.has(key) || hinted.paged)) return hinted;
  for (const room of S.rooms.values()) {
    if (room.joined === "yes" && room.members.has(key)) return room;
  }
  return null;
}

export function startTyping() {
  const room = S.current;
  if (!(room instanceof Room) || room.joined !== "yes") return;
  const now = Date.now();
  if (S.typing.room !== room.name || now - S.typing.sentAt > TYPING_SEND_EVERY) {
    if (S.typing.room && S.typing.room !== room.name) stopTyping();
    S.typing.room = room.name;
    S.typing.sentAt = now;
    wsSend({ type: "typing", room: room.name, active: true });
  }
  clearTimeout(S.typing.idle);
  S.typing.idle = setTimeout(stopTyping, TYPING_IDLE);
}

export function stopTyping() {
  clearTimeout(S.typing.idle);
  const name = S.typing.room;
  S.typing.room = null;
  S.typing.sentAt = 0;
  const room = name ? S.rooms.get(name) : null;
  if (room && room.joined === "yes") wsSend({ type: "typing", room: name, active: false });
}
