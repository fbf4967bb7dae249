import { DEFAULT_ROOM, NICK_RE, ROOM_RE, KEYS, store, S } from "./state.js";
import { connect } from "./connection.js";
import { ensureRoom } from "./rooms.js";
import { restorePending } from "./outbox.js";
import { renderStatus, renderBrowse, renderDmList, renderMe } from "./render.js";
import { show, askNick, focusComposer, bindUi } from "./ui.js";

export function start() {
  bindUi();
  let names = [];
  try {
    names = JSON.parse(store.get(KEYS.rooms) || "[]").filter((n) => typeof n === "string" && ROOM_RE.test(n));
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
  S.wantNick = nick && NICK_RE.test(nick) ? nick : null;
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
