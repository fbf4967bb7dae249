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
//   transport.js   how frames travel: WebSocket, server-sent events, long polling
//   connection.js  connect (falling back from WebSocket to SSE to long polling),
//                  reconnect with backoff, heartbeat, sign-in tokens, rate-limit
//                  mirror, the frame dispatch, welcome, join and resume
//   rooms.js       room and DM state: messages, history, presence, errors, leaving
//   outbox.js      what the user sends: pending messages, in order, under the rate limit
//   render.js      drawing: messages, sidebar, header, members, status, toasts
//   ui.js          controls: view switching, nickname dialog, drawers, composer
//   state.js       constants, the shared state S and the name checks (welcome's limits)
//   util.js        DOM and text helpers (text only, never HTML), storage

import { DEFAULT_ROOM, KEYS, store, session, S, nickOk, roomOk } from "./state.js";
import { connect, disconnected, setToken } from "./connection.js";
import { ensureRoom } from "./rooms.js";
import { restorePending } from "./outbox.js";
import { renderStatus, renderBrowse, renderDmList, renderMe } from "./render.js";
import { show, askNick, focusComposer, bindUi } from "./ui.js";

// Sign-in for an embedding site (README, "Signing in from your site"):
//
//   https://chat.example.com/#token=<jwt>    the page reads the token once, keeps it
//                                            in sessionStorage (this tab only) and
//                                            removes it from the address bar
//   window.hubbub.setToken(jwt)              a token from your login flow: used from
//                                            the next (re)connection on; connects if
//                                            the page was waiting for one
//   window.hubbub.onTokenExpired = () => fetch("/my/token").then((r) => r.text());
//                                            called when the server closes with 4402
//                                            (token_expired); the promise's token is
//                                            used to reconnect and resume every room.
//                                            Without it the page says "Sign-in needed".
// A script that runs before this one may also set
// window.hubbub = { onTokenExpired, token } and the page picks both up.
// The token travels as the first frame {"type":"auth","token":...} of every
// connection, on every transport; never in a URL the server sees.

/** The #token= fragment, read once and taken out of the address bar. */
export function tokenFromUrl() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return null;
  let token = null;
  try {
    token = decodeURIComponent(m[1]) || null;
  } catch {
    token = null;
  }
  const rest = location.hash.slice(1).split("&").filter((part) => !part.startsWith("token=")).join("&");
  history.replaceState(history.state, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
  return token;
}

export function start() {
  const early = globalThis.hubbub; // an embedding site's settings, if any
  S.setToken = setToken;
  if (typeof early?.onTokenExpired === "function") S.onTokenExpired = early.onTokenExpired;
  const fromUrl = tokenFromUrl() || (typeof early?.token === "string" && early.token) || null;
  if (fromUrl) session.set(KEYS.token, fromUrl);
  S.token = session.get(KEYS.token) || null;
  // For embedding sites, tests and curious people: the state (read-only by
  // convention) with setToken and the onTokenExpired hook.
  globalThis.hubbub = S;
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
  // Leaving the page ends the connection now: an HTTP session (SSE, long
  // polling) would otherwise hold our nickname until the server's timeout.
  addEventListener("pagehide", () => S.link?.close());
  // Back from the back/forward cache: that connection is closed, resume in a new one.
  addEventListener("pageshow", (ev) => {
    if (ev.persisted && S.link?.closed) disconnected();
  });
  if (S.wantNick || S.token) {
    // With a token the server knows who we are: no nickname to ask for.
    connect();
    focusComposer();
  } else {
    askNick();
  }
}

start();
