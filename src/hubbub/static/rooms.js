import { $, h, icon, same } from "./util.js";
import { DEFAULT_ROOM, pageSize, TYPING_SHOWN, GHOST_WAIT, RETRY_SEND, MEMBERS_PAGE, MEMBERS_KEEP, KEYS, store, session, S } from "./state.js";
import { wsSend, join, retryAfter } from "./connection.js";
import { resolvePending, savePending, flush, pump } from "./outbox.js";
import { renderStatus, renderPendingStates, renderMessage, addRoomMessage, placeAtEnd, renderHistoryTop, onViewScroll, scrollToBottom, liveArrival, renderRoomList, renderBrowse, renderDmList, renderRoomHeader, renderMembers, renderMembersFoot, renderTyping, renderMe, announce, toast } from "./render.js";
import { show, askNick, showNickError, closeNickDialog } from "./ui.js";

export class View {
  constructor(kind, key, label) {
    this.kind = kind;
    this.key = key;
    this.unread = 0;
    this.stick = true; // follow new messages (the view is scrolled to the bottom)
    this.savedTop = 0;
    this.draft = "";
    this.top = h("div", { class: "history-top" });
    this.list = h("div", { class: "msg-list" });
    this.tail = h("div", { class: "pending-tail" });
    this.el = h(
      "section",
      { class: `view view-${kind}`, hidden: true, tabindex: "0", "aria-label": label },
      this.top,
      this.list,
      this.tail,
    );
    this.el.addEventListener("scroll", () => onViewScroll(this), { passive: true });
    $("views").append(this.el);
  }

  messages() {
    return this.list.querySelectorAll(":scope > .msg");
  }
}

export class Room extends View {
  constructor(name) {
    super("room", name, `Messages in #${name}`);
    this.name = name;
    this.joined = "no"; // "no" | "joining" | "yes" (on the current connection)
    this.everJoined = false;
    this.resuming = false;
    this.epoch = null;
    this.lastSeq = null; // everything up to here has been seen (contiguously)
    this.bySeq = new Map();
    this.minSeq = Infinity;
    this.maxSeq = -Infinity;
    this.hasMore = null;
    this.historyBusy = null; // the outstanding history request {before}
    this.loadedLatest = false;
    this.members = new Map(); // lowercased -> nick: the whole list, or a large room's loaded pages
    this.count = 0; // members, as the server counts them (room, members and presence frames)
    this.large = false; // the server says large: presence carries the count only
    this.paged = false; // `members` holds pages (server order), not the whole list
    this.membersMore = false; // more members after the loaded ones
    this.membersSkipped = 0; // members before the loaded ones (the window slid past them)
    this.whoBusy = null; // the outstanding `who` request {after}
    this.whoTimer = null;
    this.typers = new Map(); // nick -> timer
    this.nickWaitSince = 0;
    this.retryTimer = null;
    this.problem = null; // why the room is not joined, for the header
  }

  /** Members to show in the header: the list's size, or the server's count while paged. */
  memberCount() {
    return this.paged || this.large ? this.count : this.members.size;
  }
}

export class Dm extends View {
  constructor(peer) {
    super("dm", peer.toLowerCase(), `Direct messages with ${peer}`);
    this.peer = peer;
    this.room = null; // a room both are in, through which DMs go
    this.seen = new Set();
    this.top.append(
      h(
        "div",
        { class: "history-note dm-note" },
        icon("lock"),
        h("span", {
          text: `Direct messages with ${peer} are delivered live and are not saved on the server.`,
        }),
      ),
    );
  }
}

export function onMessage(m) {
  const room = S.rooms.get(m.room);
  if (!room) return;
  if (room.epoch !== null && m.epoch !== room.epoch) {
    // The room's history was reset while we were in it: sequence numbers restart.
    clearRoom(room);
    room.lastSeq = 0;
  }
  room.epoch = m.epoch;
  room.lastSeq = Math.max(room.lastSeq ?? 0, m.seq);
  const sentHere = resolvePending(m.client_id, room);
  const el = addRoomMessage(room, m, sentHere || same(m.nick, S.me));
  if (!el) return;
  liveArrival(room, el, sentHere, `${m.nick}: ${m.text}`);
}

export function onAck(f) {
  const item = S.pending.get(f.id);
  if (!item || item.kind !== "send") return;
  const room = S.rooms.get(item.room);
  resolvePending(f.id, room);
  if (room && f.epoch === room.epoch && !room.bySeq.has(f.seq) && room.loadedLatest && f.seq > room.minSeq) {
    // A duplicate ack for a message whose broadcast we never saw: draw it from
    // what we sent (without moving lastSeq: the replay still owes us the rest).
    // Older than what is shown, it waits for the history instead.
    const el = addRoomMessage(
      room,
      { room: item.room, seq: f.seq, epoch: f.epoch, id: f.msg_id, nick: S.me, text: item.text, ts: f.ts, client_id: f.id },
      true,
    );
    if (el) liveArrival(room, el, true, null);
  }
}

export function onHistory(f) {
  const room = S.rooms.get(f.room);
  if (!room) return;
  const request = room.historyBusy || { before: null };
  room.historyBusy = null;
  const older = request.before !== null;
  if (room.epoch !== null && f.epoch !== room.epoch) {
    if (older) {
      renderHistoryTop(room);
      return; // an older page of a history that was reset meanwhile
    }
    clearRoom(room); // the latest page is the truth: the history was reset
  }
  room.epoch = f.epoch;
  const messages = Array.isArray(f.messages) ? f.messages : [];
  const view = room.el;
  const before = { height: view.scrollHeight, top: view.scrollTop };
  const wasEmpty = room.bySeq.size === 0;
  for (const m of messages) {
    resolvePending(m.client_id, room);
    addRoomMessage(room, m, same(m.nick, S.me));
  }
  if (!older) {
    room.loadedLatest = true;
    if (messages.length) room.lastSeq = Math.max(room.lastSeq ?? 0, messages.at(-1).seq);
  }
  if (messages.length) {
    // The page that reaches the oldest message shown says whether there is more.
    if (messages[0].seq === room.minSeq) room.hasMore = Boolean(f.has_more);
  } else if (older || wasEmpty) {
    room.hasMore = false;
  }
  renderHistoryTop(room);
  if (older) {
    // Keep what the reader was looking at where it was.
    view.scrollTop = before.top + (view.scrollHeight - before.height);
  } else if (room.stick) {
    scrollToBottom(room);
  }
  maybeLoadOlder(room);
}

export function requestHistory(room, before) {
  if (room.historyBusy) return;
  const frame = { type: "history", room: room.name, limit: pageSize() };
  if (before !== null) frame.before = before;
  if (!wsSend(frame)) return;
  room.historyBusy = { before };
  renderHistoryTop(room);
}

export function loadOlder(room) {
  if (room.hasMore && !room.historyBusy && room.bySeq.size) requestHistory(room, room.minSeq);
}

export function maybeLoadOlder(room) {
  // Near the top, or the page does not even fill the screen: fetch the next page.
  if (S.current === room && room.el.scrollTop < 160) loadOlder(room);
}

/** The room's members are on screen (its own view, or a DM that goes through it). */
const membersShown = (room) => S.current === room || (S.current instanceof Dm && S.current.room === room.name);

const nickOf = (x) => (x && typeof x.nick === "string" && x.nick ? x.nick : null);

/** The server's count, when it is a sane one. */
const countOf = (n, fallback) => (Number.isInteger(n) && n >= 0 ? n : fallback);

export function onPresence(f) {
  const room = S.rooms.get(f.room);
  if (!room) return;
  if (f.type === "presence") {
    room.count = countOf(f.count, room.count);
    if (f.large === true) return onLargePresence(room);
    if (room.large) {
      // Small again: the pages we hold are not the list. Fetch it once, then
      // apply frames from there (docs/protocol.md, presence).
      room.large = false;
      room.membersMore = false;
      askMembers(room, null);
    }
  }
  // A tick's changes, applied as one step (docs/protocol.md, presence): every
  // left and every renamed old out, then every renamed nick and joined in.
  // joined/left/renamed are a tick with a single change.
  const list = (key, one) => (f.type === "presence" ? (Array.isArray(f[key]) ? f[key] : []) : f.type === one ? [f] : []);
  const left = list("left", "left").map(nickOf).filter(Boolean);
  const joined = list("joined", "joined").map(nickOf).filter(Boolean);
  const renamed = list("renamed", "renamed").filter((r) => nickOf(r) && typeof r.old === "string" && r.old);
  for (const nick of left) {
    room.members.delete(nick.toLowerCase());
    stopTyper(room, nick);
  }
  for (const r of renamed) room.members.delete(r.old.toLowerCase());
  for (const r of renamed) {
    room.members.set(r.nick.toLowerCase(), r.nick);
    stopTyper(room, r.old);
    if (same(r.old, S.me)) confirmNick(r.nick);
    renameDm(r.old, r.nick);
  }
  for (const nick of joined) room.members.set(nick.toLowerCase(), nick);
  if (membersShown(room)) {
    renderMembers();
    renderRoomHeader();
  }
}

/** A large room's presence: its count only (the lists are empty). */
function onLargePresence(room) {
  if (!room.large) {
    // It just became large: the list we hold is no longer kept up to date;
    // show the first page instead, and the count.
    room.large = true;
    askMembers(room, null);
  }
  if (membersShown(room)) {
    renderMembersFoot();
    renderRoomHeader();
  }
}

function renameDm(old, nick) {
  const dm = S.dms.get(old.toLowerCase());
  if (dm && !S.dms.has(nick.toLowerCase())) {
    S.dms.delete(dm.key);
    dm.key = nick.toLowerCase();
    dm.peer = nick;
    S.dms.set(dm.key, dm);
    renderDmList();
    if (S.current === dm) renderRoomHeader();
  }
}

const nickList = (names) => (Array.isArray(names) ? names.filter((n) => typeof n === "string" && n) : []);

/** A `room` frame's member list or a `who` answer without `after`: all, or a large room's first page. */
export function setMembers(room, f) {
  const names = nickList(f.members);
  room.members = new Map(names.map((n) => [n.toLowerCase(), n]));
  room.count = countOf(f.count, names.length);
  room.membersMore = f.has_more === true;
  room.large = room.membersMore || room.count > names.length;
  room.paged = room.large;
  room.membersSkipped = 0;
  if (membersShown(room)) {
    renderMembers();
    renderRoomHeader();
  }
}

/** The answer to `who`: the first page (or whole list), or the next page of a large room. */
export function onMembers(f) {
  const room = S.rooms.get(f.room);
  if (!room) return;
  const asked = room.whoBusy;
  room.whoBusy = null;
  if (typeof f.after !== "string") {
    setMembers(room, f);
    if (asked?.top && membersShown(room)) $("member-list").scrollTop = 0;
    return;
  }
  // A next page counts only if it continues the pages we hold.
  if (!room.paged || !asked || asked.after !== f.after) {
    if (membersShown(room)) renderMembersFoot();
    return;
  }
  const names = nickList(f.members);
  for (const n of names) room.members.set(n.toLowerCase(), n);
  room.count = countOf(f.count, room.count);
  room.membersMore = f.has_more === true;
  // The panel holds at most MEMBERS_KEEP: the earliest make room for the new page.
  const over = room.members.size - MEMBERS_KEEP;
  if (over > 0) {
    for (const key of [...room.members.keys()].slice(0, over)) room.members.delete(key);
    room.membersSkipped += over;
  }
  if (membersShown(room)) {
    renderMembers(names[0]);
    renderRoomHeader();
    announce(`${names.length} more ${names.length === 1 ? "member" : "members"} listed`);
  }
}

/** Ask for the first page (`after` null; `top`: the reader asked) or the page after `after`. */
export function askMembers(room, after, top = false) {
  clearTimeout(room.whoTimer);
  if (room.joined !== "yes") return;
  const frame = { type: "who", room: room.name };
  if (after !== null) {
    frame.after = after;
    frame.limit = MEMBERS_PAGE;
  }
  if (!wsSend(frame)) return;
  room.whoBusy = { after, top };
  if (membersShown(room)) renderMembersFoot();
}

/** "Show more": the page after the last member listed (one request at a time). */
export function showMoreMembers(room) {
  if (room.whoBusy || !room.membersMore || !room.members.size) return;
  askMembers(room, [...room.members.values()].at(-1));
}

/** A `who` was refused: allow another try; a list we need is asked again later. */
function onWhoError(room, f) {
  const asked = room.whoBusy;
  room.whoBusy = null;
  if (membersShown(room)) renderMembersFoot();
  if (!asked) return;
  if (["rate_limited", "unavailable"].includes(f.code)) room.whoTimer = setTimeout(() => askMembers(room, asked.after), 1500);
  else if (asked.after !== null) toast(`Could not list more members of #${room.name}: ${f.message || f.code}`, "error");
}

export function onTyping(f) {
  const room = S.rooms.get(f.room);
  if (!room || same(f.nick, S.me)) return;
  stopTyper(room, f.nick);
  if (f.active) {
    room.typers.set(
      f.nick,
      setTimeout(() => stopTyper(room, f.nick), TYPING_SHOWN),
    );
  }
  renderTyping();
}

export function stopTyper(room, nick) {
  for (const [name, timer] of room.typers) {
    if (same(name, nick)) {
      clearTimeout(timer);
      room.typers.delete(name);
    }
  }
  if (S.current === room) renderTyping();
}

export function onDm(f) {
  const from = f.from;
  const mine = same(from, S.me);
  const peer = mine ? f.to : from;
  const dm = ensureDm(peer);
  if (!dm) return;
  if (S.rooms.has(f.room)) dm.room = f.room;
  if (mine && f.client_id) {
    const item = S.pending.get(f.client_id);
    if (item && item.kind === "dm") {
      S.pending.delete(f.client_id);
      item.el.remove();
      pump();
    }
  }
  // Not stored on the server, so not numbered: de-duplicate by the server's id
  // and by the sender's own id (a resend after a reconnect).
  const keys = [`id:${f.id}`];
  if (f.client_id) keys.push(`c:${from.toLowerCase()}:${f.client_id}`);
  if (keys.some((k) => dm.seen.has(k))) return;
  for (const k of keys) dm.seen.add(k);
  const el = renderMessage({ nick: from, text: f.text, ts: f.ts }, mine, true);
  el.dataset.id = f.id;
  placeAtEnd(dm, el);
  liveArrival(dm, el, mine, `Direct message from ${from}: ${f.text}`);
  if (!mine && S.current !== dm) {
    toast(`New direct message from ${from}`, "info", { label: "Open", run: () => show(dm) }, dm);
  }
}

export function onNickSet(f) {
  confirmNick(f.nick, true);
  const dialog = $("nick-dialog");
  if (dialog.open) closeNickDialog();
}

/** The server calls us ``nick`` (accepted: a room joined or a rename done). */
export function confirmNick(nick, accepted = false) {
  if (!nick) return;
  const changed = S.me !== nick;
  S.me = nick;
  if (S.wantNick && same(nick, S.wantNick)) {
    S.wantNick = nick;
    store.set(KEYS.nick, nick);
    if (accepted) S.nickOk = true;
  }
  renderMe();
  if (changed) renderMembers(); // our own entry is not a "direct message" button
}

export function onError(f) {
  const room = f.room ? S.rooms.get(f.room) : null;
  const item = f.id ? S.pending.get(f.id) : null;
  if (f.code === "no_such_room" && room) {
    // Gone (deleted by an operator, say): asking again would only fail again.
    toast(`#${room.name} no longer exists`, "error");
    removeRoom(room);
    wsSend({ type: "rooms" });
    return;
  }
  if (f.ref === "join" && room) {
    room.joined = "no";
    if (f.code === "nick_taken") return onJoinNickTaken(room, f);
    if (f.code === "already_joined") {
      room.joined = "yes";
      wsSend({ type: "who", room: room.name });
      if (!room.loadedLatest) requestHistory(room, null);
      return flush(room);
    }
    if (f.code === "bad_frame" && /nick/i.test(f.message || "")) {
      room.problem = "nickname not allowed";
      renderRoomHeader();
      renderPendingStates();
      return askNick(`That nickname is not allowed: ${S.rules.nick}`, !anyJoined());
    }
    if (f.code === "unavailable" || f.code === "rate_limited") {
      room.retryTimer = setTimeout(() => join(room), 2000 + Math.random() * 2000);
      return;
    }
    toast(`Could not join #${room.name}: ${f.message}`, "error");
    return removeRoom(room);
  }
  if ((f.ref === "send" || f.ref === "dm") && item) {
    if (f.code === "rate_limited") {
      // Nothing was stored. Its conversation sends nothing else until it is
      // resent, first, once the server has a token for it again.
      item.state = "queued";
      S.pausedUntil = Date.now() + retryAfter(f);
      S.bucket.tokens = Math.min(S.bucket.tokens, 0);
      S.bucket.at = Date.now();
    } else if (["unavailable", "not_in_room"].includes(f.code)) {
      item.state = "queued";
      item.notBefore = Date.now() + RETRY_SEND[0] + Math.random() * (RETRY_SEND[1] - RETRY_SEND[0]);
    } else {
      item.state = "failed";
      item.error = f.code === "no_such_member" ? `${item.to} is not here any more` : f.message;
      savePending();
    }
    pump();
    return;
  }
  if (f.ref === "who" && room) return onWhoError(room, f);
  if (f.ref === "nick") {
    const text = f.code === "nick_taken" ? `That nickname is taken${f.room ? ` in #${f.room}` : ""}.` : `That is not a valid nickname: ${S.rules.nick}`;
    return $("nick-dialog").open ? showNickError(text) : askNick(text);
  }
  if (f.code === "rate_limited" && f.ref !== "history") return; // typing, rooms: harmless
  if (f.ref === "history" && room) {
    room.historyBusy = null;
    renderHistoryTop(room);
    if (!room.loadedLatest) room.retryTimer = setTimeout(() => requestHistory(room, null), 1500);
    return;
  }
  toast(f.message || f.code, "error");
}

export function onJoinNickTaken(room, f) {
  // Right after a reconnect, the server may not have noticed yet that our
  // previous connection is dead: it still holds our nickname. Wait for the
  // heartbeat to drop it; but a nickname someone else uses needs a new one.
  const now = Date.now();
  if (room.everJoined && (room.nickWaitSince === 0 || now - room.nickWaitSince < GHOST_WAIT)) {
    if (room.nickWaitSince === 0) {
      room.nickWaitSince = now;
      toast(`Waiting for your previous session in #${room.name} to time out…`, "info");
    }
    room.retryTimer = setTimeout(() => join(room), 3000);
    return;
  }
  room.nickWaitSince = 0;
  room.problem = `“${S.wantNick}” is taken here`;
  renderRoomHeader();
  renderPendingStates();
  // Not in any room yet (a first visit, say): a nickname is needed before anything else.
  askNick(`“${S.wantNick}” is already taken in #${room.name}. Choose another nickname.`, !anyJoined());
  void f;
}

export const anyJoined = () => [...S.rooms.values()].some((r) => r.joined === "yes");

export function ensureRoom(name) {
  let room = S.rooms.get(name);
  if (!room) {
    room = new Room(name);
    S.rooms.set(name, room);
    renderHistoryTop(room);
    saveRooms();
    renderRoomList();
    renderBrowse();
  }
  return room;
}

export function ensureDm(peer) {
  if (same(peer, S.me)) return null; // no conversation with oneself
  const key = peer.toLowerCase();
  let dm = S.dms.get(key);
  if (!dm) {
    dm = new Dm(peer);
    S.dms.set(key, dm);
    renderDmList();
  }
  return dm;
}

export function openRoom(name) {
  const room = ensureRoom(name);
  join(room);
  show(room);
}

/** Out of a room: our own leave (already removed), or the server took us out. */
export function onLeftRoom(f) {
  const room = S.rooms.get(f.room);
  if (!room) return;
  if (f.reason === "deleted") {
    const unsent = [...S.pending.values()].filter((p) => p.kind === "send" && p.room === room.name).length;
    const lost = unsent ? ` (${unsent} unsent message${unsent === 1 ? "" : "s"} discarded)` : "";
    toast(`#${room.name} was deleted${lost}`, "info");
    S.directory = S.directory.filter((r) => r.name !== room.name);
  }
  removeRoom(room);
  wsSend({ type: "rooms" });
}

export function removeRoom(room) {
  if (S.rooms.get(room.name) !== room) return; // already gone
  S.rooms.delete(room.name);
  clearTimeout(room.retryTimer);
  for (const [id, item] of S.pending) {
    if (item.kind === "send" && item.room === room.name) S.pending.delete(id);
  }
  savePending();
  room.el.remove();
  saveRooms();
  if (S.current === room) {
    S.current = null;
    const next = S.rooms.values().next().value || ensureRoom(DEFAULT_ROOM);
    join(next);
    show(next);
  }
  renderRoomList();
  renderBrowse();
  renderStatus();
}

export function leaveCurrent() {
  const view = S.current;
  if (view instanceof Dm) {
    S.dms.delete(view.key);
    for (const [id, item] of S.pending) if (item.dm === view) S.pending.delete(id);
    view.el.remove();
    S.current = null;
    renderDmList();
    const next = S.rooms.values().next().value || ensureRoom(DEFAULT_ROOM);
    show(next);
    return;
  }
  if (!(view instanceof Room)) return;
  if (view.joined !== "no") wsSend({ type: "leave", room: view.name });
  removeRoom(view);
  wsSend({ type: "rooms" });
}

export function saveRooms() {
  store.set(KEYS.rooms, JSON.stringify([...S.rooms.keys()]));
}

export function clearRoom(room) {
  for (const el of [...room.list.children]) el.remove();
  room.bySeq.clear();
  room.minSeq = Infinity;
  room.maxSeq = -Infinity;
  room.hasMore = null;
}
