// hubbub browser client: the hubbub.v1 protocol (docs/protocol.md) in plain
// modern JavaScript. No build step, no dependencies, no innerHTML: every piece
// of user text reaches the page through textContent / text nodes.
//
// Delivery model
// * Room messages are rendered keyed by room + seq, so a message seen twice
//   (live, replayed, in a history page) is drawn once.
// * What the user sends gets a client id (a UUID) and is shown as *pending*
//   at the bottom of the room until the server's message or ack with that id
//   arrives; then the pending row is replaced by the stored message. While the
//   connection is down, pending messages wait; after a reconnect they are sent
//   again with the same id (the server de-duplicates: ack duplicate: true).
// * After a reconnect every room is re-joined with since = the last seq seen
//   and the room's epoch: the server replays exactly the missed messages, or
//   answers "reset" and the room's latest history page is reloaded.
//
// Modules (ES modules, no bundler, served by hubbub from /static/):
//   app.js         this entry: restores what the page remembered and starts
//   transport.js   how frames travel (WebSocket now; the interface fits a fallback)
//   connection.js  connect, reconnect with backoff, heartbeat, rate-limit mirror,
//                  the frame dispatch, welcome, join and resume
//   rooms.js       room and DM state: messages, history, presence, errors, leaving
//   outbox.js      what the user sends: pending messages, in order, under the rate limit
//   render.js      drawing: messages, sidebar, header, members, status, toasts
//   ui.js          controls: view switching, nickname dialog, drawers, composer
//   state.js       constants, the shared state S and the name checks (welcome's limits)
//   util.js        DOM and text helpers (text only, never HTML), storage

import { DEFAULT_ROOM, KEYS, store, S, nickOk, roomOk } from "./state.js";
import { connect } from "./connection.js";
import { ensureRoom } from "./rooms.js";
import { restorePending } from "./outbox.js";
import { renderStatus, renderBrowse, renderDmList, renderMe } from "./render.js";
import { show, askNick, focusComposer, bindUi } from "./ui.js";

export function start() {
  bindUi();
  let names = [];
  try {
    names = JSON.parse(store.get(KEYS.rooms) || "[]").filter((n) => typeof n === "string" && roomOk(n));
  } catch {
    names = [];
  }
  if (!names.length) names = [DEFAULT_ROOM];
  for (const name of names) ensureRoom(name);
  const saved = store.get(KEYS.current) || "";
  const first = saved.startsWith("#") && S.rooms.has(saved.slice(1)) ? S.rooms.get(saved.slice(1)) : S.rooms.values().next().value;
  show(first);
  renderDmList();
  renderBrowse();
  const nick = store.get(KEYS.nick);
  S.wantNick = nick && nickOk(nick) ? nick : null;
  renderMe();
  restorePending();
  renderStatus();
  if (S.wantNick) {
    connect();
    focusComposer();
  } else {
    askNick();
  }
  // For tests and curious people: the state, read-only by convention.
  globalThis.hubbub = S;
}

start();
