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

const PROTOCOL = "hubbub.v1";
const DEFAULT_ROOM = "lobby";
const PAGE_SIZE = 50;
const NICK_RE = /^[\p{L}\p{N}][\p{L}\p{N}_.\-]{0,31}$/u;
const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$/;
const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const GROUP_WINDOW = 5 * 60; // seconds: consecutive messages of one author are grouped
const BACKOFF_BASE = 500; // ms
const BACKOFF_CAP = 30000; // ms
const STABLE_AFTER = 10000; // ms a connection must live before it no longer counts as a flap
const PING_AFTER = 25000; // ms of silence before an application ping
const DEAD_AFTER = 45000; // ms of silence after which the connection is presumed dead
const CONNECT_TIMEOUT = 10000; // ms for the handshake and the welcome frame
const ROOMS_REFRESH = 30000; // ms between room list refreshes
const TYPING_SEND_EVERY = 3000; // ms
const TYPING_IDLE = 4000; // ms after the last keystroke: typing stops
const TYPING_SHOWN = 6000; // ms a remote typing indicator lives without renewal
const GHOST_WAIT = 60000; // ms to wait for our own dead connection to release the nick
const KEEP_MAX = 1500; // messages kept per room in a page open all day...
const KEEP_AFTER_PRUNE = 1000; // ...when the reader is at the bottom (older ones reload on scroll)
const SLOW_LINGER = 2000; // ms the "slow down" note stays after the last message held back
const RETRY_SEND = [1000, 2000]; // ms before a send refused as unavailable is tried again
// The server's limits until its welcome frame tells the real ones (docs/protocol.md).
const DEFAULT_LIMITS = { max_message_size: 65536, rate: 0, burst: 0, max_text: 8000, max_nick: 32, max_room: 64 };
const KEYS = {
  nick: "hubbub.nick",
  rooms: "hubbub.rooms",
  current: "hubbub.current",
  pending: "hubbub.pending", // sessionStorage: unsent messages survive a reload of this tab
};

// ---------------------------------------------------------------------------
// small DOM helpers (text only, never HTML)

const $ = (id) => document.getElementById(id);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return el;
}

function icon(name, cls = "icon") {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", cls);
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(ns, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

function hue(name) {
  let x = 0;
  for (const ch of name.toLowerCase()) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return x % 360;
}

function avatar(name, cls = "avatar") {
  const first = [...(name || "?")][0] || "?";
  const el = h("span", { class: cls, "aria-hidden": "true", text: first.toUpperCase() });
  el.style.setProperty("--hue", String(hue(name || "?")));
  return el;
}

/** Text with http(s) links made clickable, built from DOM nodes only. */
function renderText(container, text) {
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let url = match[0];
    // Trailing punctuation belongs to the sentence, not to the link.
    while (/[.,;:!?'")\]}>]$/.test(url)) {
      if (url.endsWith(")") && url.split("(").length > url.split(")").length - 1) break;
      url = url.slice(0, -1);
    }
    const start = match.index;
    let href = null;
    try {
      const parsed = new URL(url);
      if (parsed.protocol === "http:" || parsed.protocol === "https:") href = parsed.href;
    } catch {
      href = null;
    }
    if (!href) continue;
    if (start > last) container.append(document.createTextNode(text.slice(last, start)));
    container.append(
      h("a", { href, target: "_blank", rel: "noopener noreferrer nofollow", text: url }),
    );
    last = start + url.length;
  }
  if (last < text.length) container.append(document.createTextNode(text.slice(last)));
}

function uuid() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  // Plain-HTTP deployments are not a secure context: no randomUUID there.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

const same = (a, b) => (a || "").toLowerCase() === (b || "").toLowerCase();

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const dayYearFmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "long", day: "numeric" });

function dayKey(ts) {
  const d = new Date(ts * 1000);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

function dayLabel(ts) {
  const key = dayKey(ts);
  const now = Date.now() / 1000;
  if (key === dayKey(now)) return "Today";
  if (key === dayKey(now - 86400)) return "Yesterday";
  const d = new Date(ts * 1000);
  return d.getFullYear() === new Date().getFullYear() ? dayFmt.format(d) : dayYearFmt.format(d);
}

function storage(area) {
  return {
    get(key) {
      try {
        return globalThis[area].getItem(key);
      } catch {
        return null;
      }
    },
    set(key, value) {
      try {
        globalThis[area].setItem(key, value);
      } catch {
        /* private mode, quota: the page still works, it just forgets */
      }
    },
  };
}
const store = storage("localStorage");
const session = storage("sessionStorage");

// ---------------------------------------------------------------------------
// state

const S = {
  me: null, // the nickname the server confirmed
  wantNick: null, // the nickname the user chose (localStorage)
  ws: null,
  welcomed: false,
  status: "connecting",
  attempt: 0, // failed connection attempts since the last welcome
  flaps: 0, // welcomed connections in a row that died young (not a server restart)
  retryAt: 0,
  retryTimer: null,
  openedAt: 0,
  startedAt: 0,
  lastFrameAt: 0,
  pingSentAt: 0,
  fatal: null,
  rooms: new Map(), // name -> Room
  dms: new Map(), // lowercased peer -> Dm
  pending: new Map(), // client id -> pending item, in the order typed
  limits: { ...DEFAULT_LIMITS },
  // The server's per-connection token bucket, mirrored: sends wait for a token
  // instead of being refused (and a refusal pauses all sending until retryAt).
  bucket: { rate: 0, burst: 0, tokens: 0, at: 0 },
  pausedUntil: 0, // ms (Date.now): the server said "rate_limited"
  pumpTimer: null,
  slowed: false, // messages are waiting for the rate limit
  slowUntil: 0,
  nickOk: false, // the server accepted our nickname in a room at least once
  current: null,
  directory: [],
  typing: { room: null, sentAt: 0, idle: null },
  hiddenNew: 0,
  today: dayKey(Date.now() / 1000),
};

class View {
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

class Room extends View {
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
    this.members = new Map(); // lowercased -> nick
    this.typers = new Map(); // nick -> timer
    this.nickWaitSince = 0;
    this.retryTimer = null;
    this.problem = null; // why the room is not joined, for the header
  }
}

class Dm extends View {
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

// ---------------------------------------------------------------------------
// connection

function wsSend(frame) {
  const ws = S.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || !S.welcomed) return false;
  ws.send(JSON.stringify(frame));
  takeToken();
  return true;
}

/** Tokens left in our mirror of the server's rate-limit bucket (Infinity: no limit). */
function tokens() {
  const b = S.bucket;
  if (!(b.rate > 0)) return Infinity;
  const now = Date.now();
  b.tokens = Math.min(b.burst, b.tokens + ((now - b.at) / 1000) * b.rate);
  b.at = now;
  return b.tokens;
}

function takeToken() {
  if (tokens() !== Infinity) S.bucket.tokens -= 1; // every frame costs one, as on the server
}

/** ms until a message may go out without being refused (0: now). */
function sendWait() {
  const paused = S.pausedUntil - Date.now();
  if (paused > 0) return paused;
  const left = tokens();
  return left >= 1 ? 0 : Math.ceil(((1 - left) / S.bucket.rate) * 1000);
}

function connect() {
  clearTimeout(S.retryTimer);
  S.retryTimer = null;
  if (S.ws || S.fatal) return;
  setStatus("connecting");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${location.host}/`, PROTOCOL);
  } catch {
    S.attempt += 1;
    scheduleReconnect();
    return;
  }
  S.ws = ws;
  S.startedAt = Date.now();
  ws.addEventListener("open", () => {
    if (S.ws !== ws) return;
    S.openedAt = Date.now();
    S.lastFrameAt = Date.now();
    if (ws.protocol !== PROTOCOL) {
      S.fatal = "This server does not speak the hubbub.v1 protocol.";
      ws.close();
    }
  });
  ws.addEventListener("message", (ev) => {
    if (S.ws !== ws) return;
    S.lastFrameAt = Date.now();
    if (typeof ev.data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (frame && typeof frame.type === "string") handle(frame);
  });
  ws.addEventListener("close", (ev) => {
    if (S.ws === ws) disconnected(ev.code);
  });
}

/** The connection is gone (closed, failed, or presumed dead): prepare the resume. */
function disconnected(code = 0) {
  const ws = S.ws;
  S.ws = null;
  if (S.welcomed) {
    // It worked: the first retry comes quickly (a server restart is back in a
    // second or two). Only connections that keep dying young, without the
    // server saying it is going away (1001), back off further and further.
    const stable = Date.now() - S.openedAt > STABLE_AFTER || code === 1001;
    S.flaps = stable ? 0 : S.flaps + 1;
    S.attempt = 0;
  } else {
    S.attempt += 1;
  }
  S.welcomed = false;
  if (ws && ws.readyState < WebSocket.CLOSING) {
    try {
      ws.close();
    } catch {
      /* already closing */
    }
  }
  for (const room of S.rooms.values()) {
    room.joined = "no";
    room.resuming = false;
    room.historyBusy = null;
    clearTimeout(room.retryTimer);
    for (const timer of room.typers.values()) clearTimeout(timer);
    room.typers.clear();
    renderHistoryTop(room);
  }
  for (const item of S.pending.values()) {
    if (item.state === "sent") item.state = "queued";
  }
  clearTimeout(S.pumpTimer);
  S.pumpTimer = null;
  setSlowed(false);
  S.typing.room = null;
  renderPendingStates();
  renderTyping();
  if (S.fatal) {
    setStatus("failed");
    return;
  }
  scheduleReconnect();
}

/** ms before the next connection attempt: exponential in consecutive failures, with jitter. */
function reconnectDelay() {
  const failures = S.attempt + S.flaps;
  const ceiling = Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** Math.max(0, failures - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2); // jitter: no thundering herd
}

function scheduleReconnect() {
  const delay = reconnectDelay();
  S.retryAt = Date.now() + delay;
  clearTimeout(S.retryTimer);
  S.retryTimer = setTimeout(connect, delay);
  setStatus(navigator.onLine === false ? "offline" : "reconnecting");
}

function retryNow() {
  if (S.ws) return;
  S.fatal = null;
  connect();
}

function heartbeat() {
  if (!S.ws) return;
  if (!S.welcomed) {
    // A handshake into a black hole would otherwise hang for minutes.
    if (Date.now() - S.startedAt > CONNECT_TIMEOUT) disconnected();
    return;
  }
  const silent = Date.now() - S.lastFrameAt;
  if (silent > DEAD_AFTER) {
    disconnected(); // a half-open TCP connection never reports its death by itself
  } else if (silent > PING_AFTER && Date.now() - S.pingSentAt > PING_AFTER) {
    S.pingSentAt = Date.now();
    wsSend({ type: "ping", id: `p${S.pingSentAt}` });
  }
}

function setStatus(status) {
  S.status = status;
  renderStatus();
  renderRoomHeader();
}

function renderStatus() {
  const conn = $("conn");
  const secs = Math.max(1, Math.ceil((S.retryAt - Date.now()) / 1000));
  const text = {
    connected: "Connected",
    connecting: "Connecting…",
    reconnecting: `Reconnecting in ${secs}s`,
    offline: "Offline",
    failed: "Not connected",
  }[S.status];
  conn.dataset.state = S.status;
  $("conn-text").textContent = text;
  $("me-state").textContent = S.status === "connected" ? "Online" : text;
  document.body.dataset.conn = S.status;
  const banner = $("banner");
  const queued = [...S.pending.values()].filter((p) => p.state !== "failed").length;
  let message = null;
  if (S.status === "failed") message = S.fatal || "Not connected.";
  else if (S.status === "offline") message = "You are offline. We'll reconnect as soon as the network is back.";
  else if (S.status === "reconnecting") message = `Connection lost. Reconnecting in ${secs}s…`;
  else if (S.status === "connecting" && S.attempt > 0) message = "Reconnecting…";
  if (message && queued) {
    message += ` ${queued} message${queued === 1 ? "" : "s"} will be sent when you're back.`;
  }
  banner.hidden = !message;
  document.body.classList.toggle("banner-on", Boolean(message));
  if (message) $("banner-text").textContent = message;
  $("retry-btn").hidden = !(S.status === "reconnecting" || S.status === "offline" || S.status === "failed");
}

// ---------------------------------------------------------------------------
// frames from the server

function handle(f) {
  switch (f.type) {
    case "welcome":
      return onWelcome(f);
    case "room":
      return onRoom(f);
    case "message":
      return onMessage(f);
    case "ack":
      return onAck(f);
    case "resumed":
      return onResumed(f);
    case "reset":
      return onReset(f);
    case "history":
      return onHistory(f);
    case "joined":
    case "left":
    case "renamed":
      return onPresence(f);
    case "members": {
      const room = S.rooms.get(f.room);
      if (room) setMembers(room, f.members);
      return;
    }
    case "typing":
      return onTyping(f);
    case "dm":
      return onDm(f);
    case "rooms":
      S.directory = Array.isArray(f.rooms) ? f.rooms : [];
      return renderBrowse();
    case "nick":
      return onNickSet(f);
    case "error":
      return onError(f);
    default:
      return; // pong, left_room, and frame types of later versions
  }
}

function onWelcome(f) {
  S.welcomed = true;
  S.me = f.nick;
  S.pingSentAt = 0;
  S.limits = { ...DEFAULT_LIMITS, ...(f.limits && typeof f.limits === "object" ? f.limits : {}) };
  const rate = Number(S.limits.rate) || 0;
  const burst = Math.max(1, Number(S.limits.burst) || 1);
  // A new connection starts with a full bucket; keep two tokens in hand for
  // joins and history requests so that a burst of messages never starves them.
  S.bucket = { rate, burst: Math.max(1, burst - 2), tokens: Math.max(1, burst - 2), at: Date.now() };
  S.pausedUntil = 0;
  renderCounter();
  setStatus("connected");
  for (const room of S.rooms.values()) join(room);
  wsSend({ type: "rooms" });
  renderMe();
}

function join(room) {
  clearTimeout(room.retryTimer);
  if (!S.welcomed || room.joined !== "no") return;
  const frame = { type: "join", room: room.name };
  if (S.wantNick) frame.nick = S.wantNick;
  room.resuming = room.lastSeq !== null && room.epoch !== null;
  if (room.resuming) {
    frame.since = room.lastSeq;
    frame.epoch = room.epoch;
  }
  room.joined = "joining";
  wsSend(frame);
}

function onRoom(f) {
  const room = S.rooms.get(f.room);
  if (!room) return;
  room.joined = "yes";
  room.everJoined = true;
  room.nickWaitSince = 0;
  room.problem = null;
  confirmNick(f.nick, true); // first: the member list must know which entry is us
  setMembers(room, f.members || []);
  if (!room.resuming) {
    if (room.epoch !== null && room.epoch !== f.epoch) clearRoom(room);
    room.epoch = f.epoch;
    room.lastSeq = Math.max(room.lastSeq ?? 0, f.seq);
    flush(room);
  }
  if (!room.loadedLatest) requestHistory(room, null);
  renderRoomHeader();
}

function onResumed(f) {
  const room = S.rooms.get(f.room);
  if (!room) return;
  room.resuming = false;
  room.lastSeq = Math.max(room.lastSeq ?? 0, f.seq);
  flush(room);
}

function onReset(f) {
  const room = S.rooms.get(f.room);
  if (!room) return;
  // The missed range cannot be replayed: start over from the latest page.
  room.resuming = false;
  clearRoom(room);
  room.epoch = f.epoch;
  room.lastSeq = f.seq;
  room.loadedLatest = false;
  room.historyBusy = null;
  requestHistory(room, null);
  flush(room);
}

function onMessage(m) {
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

function onAck(f) {
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

/** Our own message came back: drop its pending row. */
function resolvePending(clientId, room) {
  if (!clientId) return false;
  const item = S.pending.get(clientId);
  if (!item || item.kind !== "send" || !room || item.room !== room.name) return false;
  S.pending.delete(clientId);
  item.el.remove();
  savePending();
  pump(); // the next message of this conversation may go now
  return true;
}

function onHistory(f) {
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

function requestHistory(room, before) {
  if (room.historyBusy) return;
  const frame = { type: "history", room: room.name, limit: PAGE_SIZE };
  if (before !== null) frame.before = before;
  if (!wsSend(frame)) return;
  room.historyBusy = { before };
  renderHistoryTop(room);
}

function loadOlder(room) {
  if (room.hasMore && !room.historyBusy && room.bySeq.size) requestHistory(room, room.minSeq);
}

function maybeLoadOlder(room) {
  // Near the top, or the page does not even fill the screen: fetch the next page.
  if (S.current === room && room.el.scrollTop < 160) loadOlder(room);
}

function onPresence(f) {
  const room = S.rooms.get(f.room);
  if (!room) return;
  if (f.type === "joined") {
    room.members.set(f.nick.toLowerCase(), f.nick);
  } else if (f.type === "left") {
    room.members.delete(f.nick.toLowerCase());
    stopTyper(room, f.nick);
  } else {
    room.members.delete(f.old.toLowerCase());
    room.members.set(f.nick.toLowerCase(), f.nick);
    stopTyper(room, f.old);
    if (same(f.old, S.me)) confirmNick(f.nick);
    const dm = S.dms.get(f.old.toLowerCase());
    if (dm && !S.dms.has(f.nick.toLowerCase())) {
      S.dms.delete(dm.key);
      dm.key = f.nick.toLowerCase();
      dm.peer = f.nick;
      S.dms.set(dm.key, dm);
      renderDmList();
      if (S.current === dm) renderRoomHeader();
    }
  }
  if (S.current === room || (S.current instanceof Dm && S.current.room === room.name)) {
    renderMembers();
    renderRoomHeader();
  }
}

function setMembers(room, members) {
  room.members = new Map(members.map((n) => [n.toLowerCase(), n]));
  if (S.current === room) {
    renderMembers();
    renderRoomHeader();
  }
}

function onTyping(f) {
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

function stopTyper(room, nick) {
  for (const [name, timer] of room.typers) {
    if (same(name, nick)) {
      clearTimeout(timer);
      room.typers.delete(name);
    }
  }
  if (S.current === room) renderTyping();
}

function onDm(f) {
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

function onNickSet(f) {
  confirmNick(f.nick, true);
  const dialog = $("nick-dialog");
  if (dialog.open) closeNickDialog();
}

/** The server calls us ``nick`` (accepted: a room joined or a rename done). */
function confirmNick(nick, accepted = false) {
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

function onError(f) {
  const room = f.room ? S.rooms.get(f.room) : null;
  const item = f.id ? S.pending.get(f.id) : null;
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
      return askNick("That nickname is not allowed. Choose another one.", !anyJoined());
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
  if (f.ref === "nick") {
    const text = f.code === "nick_taken" ? `That nickname is taken${f.room ? ` in #${f.room}` : ""}.` : "That is not a valid nickname.";
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

function onJoinNickTaken(room, f) {
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

const anyJoined = () => [...S.rooms.values()].some((r) => r.joined === "yes");

/** ms the server asked us to wait after "rate_limited" (its message says "retry in 0.35s"). */
function retryAfter(f) {
  let secs = Number(f.retry_after);
  if (!(secs > 0)) {
    const m = /retry in ([0-9.]+)\s*s/i.exec(f.message || "");
    secs = m ? Number(m[1]) : 0;
  }
  if (!(secs > 0)) secs = S.bucket.rate > 0 ? 1 / S.bucket.rate : 1;
  return Math.min(10000, Math.max(50, secs * 1000));
}

// ---------------------------------------------------------------------------
// sending

function sendText(text) {
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

function queue(view, item) {
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
function savePending() {
  const items = [...S.pending.values()]
    .filter((p) => p.kind === "send" && p.state !== "failed")
    .map(({ id, room, text, ts }) => ({ id, room, text, ts }));
  session.set(KEYS.pending, JSON.stringify(items));
}

function restorePending() {
  let items = [];
  try {
    items = JSON.parse(session.get(KEYS.pending) || "[]");
  } catch {
    items = [];
  }
  for (const p of Array.isArray(items) ? items : []) {
    if (!p || typeof p.id !== "string" || typeof p.text !== "string" || !ROOM_RE.test(p.room)) continue;
    const room = ensureRoom(p.room);
    queue(room, { id: p.id, kind: "send", room: p.room, text: p.text, ts: Number(p.ts) || Date.now() / 1000, state: "queued" });
  }
}

/** Send what waits, in the order it was typed (the room's own argument is kept for callers). */
function flush(room) {
  void room;
  pump();
}

function flushDms() {
  pump();
}

/** The conversation a pending message belongs to: its messages go out one at a time, in order. */
function laneOf(item) {
  return item.kind === "send" ? `#${item.room}` : `@${item.to.toLowerCase()}`;
}

/**
 * Send what waits. Within one conversation only one message is on its way at
 * a time: the next goes when the server has acknowledged (or echoed) the one
 * before, so a refused message is resent before anything typed after it and
 * the server stores them in the order typed. Messages also wait for a token of
 * the server's rate limit (mirrored here) instead of being refused.
 */
function pump() {
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
function setSlowed(on) {
  if (on === S.slowed) return;
  S.slowed = on;
  const note = $("send-note");
  note.hidden = !on;
  note.textContent = on ? "Slow down: you are sending faster than the server allows. Your messages go out one by one, in order." : "";
}

/** A joined room the DM peer is in: the one the conversation used, else any. */
function dmRoute(dm) {
  const hinted = dm.room ? S.rooms.get(dm.room) : null;
  const key = dm.peer.toLowerCase();
  if (hinted && hinted.joined === "yes" && hinted.members.has(key)) return hinted;
  for (const room of S.rooms.values()) {
    if (room.joined === "yes" && room.members.has(key)) return room;
  }
  return null;
}

function renderPendingStates() {
  for (const item of S.pending.values()) {
    const status = item.el?.querySelector(".msg-status");
    if (!status) continue;
    let label;
    let name = "clock";
    if (item.state === "failed") {
      label = `Not delivered: ${item.error}`;
      name = "alert";
      item.el.classList.add("failed");
    } else if (item.state === "sent") {
      label = "Sending…";
    } else if (S.status !== "connected") {
      label = "Waiting for connection";
    } else if (item.held) {
      label = "Slowed down: waiting to send";
    } else if (item.kind === "send" && S.rooms.get(item.room)?.joined !== "yes") {
      const problem = S.rooms.get(item.room)?.problem;
      label = problem ? `Not sent: ${problem}` : `Waiting to join #${item.room}`;
    } else {
      label = "Waiting to send";
    }
    status.replaceChildren(icon(name), h("span", { text: label }));
  }
  renderStatus();
}

function startTyping() {
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

function stopTyping() {
  clearTimeout(S.typing.idle);
  const name = S.typing.room;
  S.typing.room = null;
  S.typing.sentAt = 0;
  const room = name ? S.rooms.get(name) : null;
  if (room && room.joined === "yes") wsSend({ type: "typing", room: name, active: false });
}

// ---------------------------------------------------------------------------
// rooms and conversations

function ensureRoom(name) {
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

function ensureDm(peer) {
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

function openRoom(name) {
  const room = ensureRoom(name);
  join(room);
  show(room);
}

function removeRoom(room) {
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

function leaveCurrent() {
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

function saveRooms() {
  store.set(KEYS.rooms, JSON.stringify([...S.rooms.keys()]));
}

function show(view) {
  const prev = S.current;
  if (prev && prev !== view) {
    prev.savedTop = prev.el.scrollTop;
    prev.el.hidden = true;
    prev.draft = $("input").value;
    $("input").value = view.draft;
    autosize();
    renderCounter();
    if (S.typing.room) stopTyping();
  }
  S.current = view;
  view.el.hidden = false;
  view.unread = 0;
  // A "new direct message… Open" toast is done once its conversation is open.
  for (const el of $("toasts").querySelectorAll(".toast[data-view]")) {
    if (el.dataset.view === viewKey(view)) el.remove();
  }
  if (view.stick) scrollToBottom(view);
  else view.el.scrollTop = view.savedTop;
  store.set(KEYS.current, view instanceof Room ? `#${view.name}` : `@${view.peer}`);
  $("jump").hidden = true;
  renderRoomHeader();
  renderMembers();
  renderTyping();
  renderRoomList();
  renderDmList();
  renderTitle();
  closeDrawers();
  if (view instanceof Room) maybeLoadOlder(view);
}

function clearRoom(room) {
  for (const el of [...room.list.children]) el.remove();
  room.bySeq.clear();
  room.minSeq = Infinity;
  room.maxSeq = -Infinity;
  room.hasMore = null;
}

// ---------------------------------------------------------------------------
// message list

function renderMessage(m, mine, isDm = false) {
  const ts = typeof m.ts === "number" ? m.ts : Date.now() / 1000;
  const date = new Date(ts * 1000);
  const text = h("div", { class: "msg-text" });
  renderText(text, String(m.text ?? ""));
  const time = h("time", { datetime: date.toISOString(), title: fullFmt.format(date), text: timeFmt.format(date) });
  const el = h(
    "article",
    { class: `msg${mine ? " own" : ""}${isDm ? " dm" : ""}` },
    avatar(m.nick),
    h("span", { class: "gutter-time", "aria-hidden": "true", text: timeFmt.format(date) }),
    h(
      "div",
      { class: "msg-body" },
      h("div", { class: "msg-meta" }, h("span", { class: "author", text: m.nick }), time),
      text,
    ),
  );
  el.dataset.author = (m.nick || "").toLowerCase();
  el.dataset.ts = String(ts);
  el.dataset.day = dayKey(ts);
  if (m.seq !== undefined) el.dataset.seq = String(m.seq);
  if (m.client_id) el.dataset.clientId = m.client_id;
  return el;
}

/** Insert a room message in seq order; null if that seq is already shown. */
function addRoomMessage(room, m, mine) {
  if (typeof m.seq !== "number" || room.bySeq.has(m.seq)) return null;
  const el = renderMessage(m, mine);
  const seq = m.seq;
  let prev = null;
  if (room.bySeq.size === 0 || seq > room.maxSeq) {
    prev = room.list.lastElementChild;
  } else if (seq < room.minSeq) {
    prev = null;
  } else {
    for (let node = room.list.lastElementChild; node; node = node.previousElementSibling) {
      if (node.classList.contains("msg") && Number(node.dataset.seq) < seq) {
        prev = node;
        break;
      }
    }
  }
  if (prev) prev.after(el);
  else room.list.prepend(el);
  room.bySeq.set(seq, el);
  if (room.bySeq.size === 1) renderHistoryTop(room);
  room.minSeq = Math.min(room.minSeq, seq);
  room.maxSeq = Math.max(room.maxSeq, seq);
  tidy(el);
  tidy(nextMsg(el));
  return el;
}

function placeAtEnd(view, el) {
  view.list.append(el);
  tidy(el);
}

function prevMsg(el) {
  let node = el.previousElementSibling;
  while (node && !node.classList.contains("msg")) node = node.previousElementSibling;
  return node;
}

function nextMsg(el) {
  let node = el.nextElementSibling;
  while (node && !node.classList.contains("msg")) node = node.nextElementSibling;
  return node;
}

/** Day separator before a message, and grouping with the message before it. */
function tidy(el) {
  if (!el) return;
  const prev = prevMsg(el);
  const sep = el.previousElementSibling?.classList.contains("day") ? el.previousElementSibling : null;
  const newDay = !prev || prev.dataset.day !== el.dataset.day;
  if (newDay && !sep) el.before(daySeparator(Number(el.dataset.ts)));
  if (!newDay && sep) sep.remove();
  if (newDay && sep && sep.dataset.day !== el.dataset.day) sep.replaceWith(daySeparator(Number(el.dataset.ts)));
  const grouped =
    !newDay &&
    prev.dataset.author === el.dataset.author &&
    Number(el.dataset.ts) - Number(prev.dataset.ts) < GROUP_WINDOW;
  el.classList.toggle("cont", grouped);
}

function daySeparator(ts) {
  const el = h("div", { class: "day", role: "separator" }, h("span", { text: dayLabel(ts) }));
  el.dataset.day = dayKey(ts);
  el.dataset.ts = String(ts);
  return el;
}

function relabelDays() {
  const today = dayKey(Date.now() / 1000);
  if (today === S.today) return;
  S.today = today;
  for (const sep of document.querySelectorAll(".day")) {
    sep.firstElementChild.textContent = dayLabel(Number(sep.dataset.ts));
  }
}

function renderHistoryTop(room) {
  if (!(room instanceof Room)) return;
  const top = room.top;
  top.replaceChildren();
  // "Load earlier messages" and "Loading messages…" take the same slot of the
  // same height: starting a load must not move what the reader is looking at.
  if (room.historyBusy) {
    top.append(
      h(
        "div",
        { class: "history-slot" },
        h("div", { class: "history-note", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), h("span", { text: "Loading messages…" })),
      ),
    );
  } else if (room.hasMore === false) {
    top.append(
      h(
        "div",
        { class: "room-intro" },
        h("div", { class: "intro-icon", "aria-hidden": "true" }, icon("hash")),
        h("h2", { text: `Welcome to #${room.name}` }),
        h("p", { text: room.bySeq.size ? `This is the very beginning of #${room.name}.` : "No messages yet. Say hello!" }),
      ),
    );
  } else if (room.hasMore) {
    top.append(
      h(
        "div",
        { class: "history-slot" },
        h("button", { type: "button", class: "link-btn load-older", text: "Load earlier messages", onclick: () => loadOlder(room) }),
      ),
    );
  }
}

function onViewScroll(view) {
  const el = view.el;
  view.stick = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
  if (view.stick && S.current === view) $("jump").hidden = true;
  if (view instanceof Room) maybeLoadOlder(view);
}

function scrollToBottom(view) {
  view.el.scrollTop = view.el.scrollHeight;
}

/** A message arrived live: follow it, count it, announce it. */
function liveArrival(view, el, mine, announcement) {
  const isCurrent = S.current === view;
  if (mine || (isCurrent && view.stick)) {
    if (mine) view.stick = true;
    if (isCurrent || mine) scrollToBottom(view);
  } else if (isCurrent) {
    $("jump").hidden = false;
  }
  if (view.stick) prune(view);
  if (!mine) {
    if (!isCurrent) {
      view.unread += 1;
      view instanceof Room ? renderRoomList() : renderDmList();
    } else if (document.hidden) {
      S.hiddenNew += 1;
    }
    if (announcement && (isCurrent || view instanceof Dm)) announce(announcement);
    renderTitle();
  }
  void el;
}

/** A page open all day: drop the oldest rows (they come back by scrolling up). */
function prune(view) {
  const rows = view.messages();
  if (rows.length <= KEEP_MAX) return;
  const cut = rows.length - KEEP_AFTER_PRUNE;
  for (let i = 0; i < cut; i++) {
    const el = rows[i];
    if (el.previousElementSibling?.classList.contains("day")) el.previousElementSibling.remove();
    if (view instanceof Room) view.bySeq.delete(Number(el.dataset.seq));
    el.remove();
  }
  tidy(rows[cut]);
  if (view instanceof Room) {
    view.minSeq = Number(rows[cut].dataset.seq);
    view.hasMore = true;
    renderHistoryTop(view);
  }
  if (S.current === view) scrollToBottom(view);
}

function announce(text) {
  const region = $("announcer");
  region.append(h("p", { text }));
  while (region.childElementCount > 5) region.firstElementChild.remove();
}

// ---------------------------------------------------------------------------
// rendering: sidebar, header, members, typing

function sideItem({ label, iconEl, active, unread, onclick, cls = "" }) {
  const badge = unread
    ? h("span", { class: "badge" }, unread > 99 ? "99+" : String(unread), h("span", { class: "sr-only", text: " unread" }))
    : null;
  return h(
    "li",
    {},
    h(
      "button",
      { type: "button", class: `side-item ${cls}${unread ? " has-unread" : ""}`, "aria-current": active ? "page" : null, onclick },
      iconEl,
      h("span", { class: "side-name", text: label }),
      badge,
    ),
  );
}

function renderRoomList() {
  const list = $("room-list");
  list.replaceChildren(
    ...[...S.rooms.values()].map((room) =>
      sideItem({
        label: room.name,
        iconEl: icon("hash"),
        active: S.current === room,
        unread: room.unread,
        onclick: () => show(room),
      }),
    ),
  );
  renderMenuBadge();
}

function renderBrowse() {
  const others = S.directory.filter((r) => !S.rooms.has(r.name));
  $("browse-list").replaceChildren(
    ...others.map((r) => {
      const li = sideItem({ label: r.name, iconEl: icon("hash"), cls: "browse", onclick: () => openRoom(r.name) });
      const btn = li.firstElementChild;
      btn.setAttribute("aria-label", `Join #${r.name}, ${r.members} online`);
      btn.append(h("span", { class: "count", "aria-hidden": "true", text: r.members ? `${r.members} online` : "" }));
      return li;
    }),
  );
  $("browse-empty").hidden = others.length > 0;
}

function renderDmList() {
  const dms = [...S.dms.values()];
  $("dm-list").replaceChildren(
    ...dms.map((dm) =>
      sideItem({
        label: dm.peer,
        iconEl: avatar(dm.peer, "avatar small"),
        active: S.current === dm,
        unread: dm.unread,
        cls: "dm-item",
        onclick: () => show(dm),
      }),
    ),
  );
  $("dm-empty").hidden = dms.length > 0;
  renderMenuBadge();
}

function renderMenuBadge() {
  let total = 0;
  for (const v of [...S.rooms.values(), ...S.dms.values()]) if (v !== S.current) total += v.unread;
  const badge = $("menu-badge");
  badge.hidden = total === 0;
  // Visible count, and in the button's name: "Rooms menu 3 unread".
  badge.replaceChildren(total > 99 ? "99+" : String(total), h("span", { class: "sr-only", text: " unread" }));
  renderTitle();
}

function renderTitle() {
  let total = S.hiddenNew;
  for (const v of [...S.rooms.values(), ...S.dms.values()]) if (v !== S.current) total += v.unread;
  const name = S.current instanceof Room ? `#${S.current.name}` : S.current ? S.current.peer : "hubbub";
  document.title = `${total ? `(${total}) ` : ""}${name} · hubbub`;
}

function renderRoomHeader() {
  const view = S.current;
  if (!view) return;
  const isRoom = view instanceof Room;
  $("conv-name").textContent = isRoom ? view.name : view.peer;
  $("conv-icon").firstElementChild.setAttribute("href", isRoom ? "#i-hash" : "#i-lock");
  document.body.dataset.view = view.kind;
  const room = isRoom ? view : view.room ? S.rooms.get(view.room) : null;
  const count = room ? room.members.size : 0;
  const live = room && room.joined === "yes";
  let sub;
  if (!isRoom) sub = "Direct message · private, not saved";
  else if (live) sub = `${count} ${count === 1 ? "member" : "members"} online`;
  else if (S.status !== "connected") sub = "Not connected";
  else sub = room.problem ? `Not joined: ${room.problem}` : "Joining…";
  $("conv-sub").textContent = sub;
  $("members-count").textContent = live ? String(count) : "";
  $("members-label").textContent = live ? "Members online:" : "Members";
  document.body.classList.toggle("members-stale", !live);
  $("leave-btn").setAttribute("aria-label", isRoom ? `Leave #${view.name}` : `Close conversation with ${view.peer}`);
  $("leave-btn").title = isRoom ? "Leave room" : "Close conversation";
  const label = isRoom ? `Message #${view.name}` : `Message ${view.peer} (direct)`;
  $("input").placeholder = label;
  $("input-label").textContent = label;
}

function renderMembers() {
  const view = S.current;
  const room = view instanceof Room ? view : view?.room ? S.rooms.get(view.room) : null;
  const list = $("member-list");
  if (!room) {
    list.replaceChildren(h("li", { class: "side-empty", text: "No shared room." }));
    return;
  }
  const names = [...room.members.values()].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
  list.replaceChildren(
    ...names.map((nick) => {
      const me = same(nick, S.me);
      const content = [avatar(nick, "avatar small"), h("span", { class: "member-name", text: nick })];
      if (me) {
        return h("li", {}, h("div", { class: "member me-member" }, ...content, h("span", { class: "you", text: "you" })));
      }
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: "member",
            title: `Send ${nick} a direct message`,
            onclick: () => {
              const dm = ensureDm(nick);
              if (!dm) return;
              dm.room = room.name;
              show(dm);
              focusComposer();
            },
          },
          ...content,
          // The name comes from the visible text (so voice control finds "bob"), plus:
          h("span", { class: "sr-only", text: "(direct message)" }),
          icon("chat", "icon member-dm"),
        ),
      );
    }),
  );
  $("members-h").textContent = view instanceof Dm ? `Members of #${room.name}` : "Members";
}

function renderTyping() {
  const el = $("typing");
  const room = S.current instanceof Room ? S.current : null;
  const names = room ? [...room.typers.keys()] : [];
  if (!names.length) {
    el.replaceChildren();
    el.classList.remove("on");
    return;
  }
  let text;
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else text = "Several people are typing…";
  el.replaceChildren(h("span", { class: "dots", "aria-hidden": "true" }, h("i"), h("i"), h("i")), h("span", { text }));
  el.classList.add("on");
}

function renderMe() {
  const nick = S.me && (!S.wantNick || same(S.me, S.wantNick)) ? S.me : S.wantNick || S.me || "…";
  $("me-nick").textContent = nick;
  $("me-avatar").replaceWith(Object.assign(avatar(nick), { id: "me-avatar" }));
}

const viewKey = (view) => (view instanceof Room ? `#${view.name}` : `@${view.key}`);

/** A short notice; ``view``: it is about that conversation (and goes when it is opened). */
function toast(text, kind = "info", action = null, view = null) {
  const box = $("toasts");
  const el = h("div", { class: `toast ${kind}` }, icon(kind === "error" ? "alert" : "chat"), h("span", { text }));
  if (view) el.dataset.view = viewKey(view);
  if (action) {
    el.append(h("button", { type: "button", class: "link-btn", text: action.label, onclick: () => { el.remove(); action.run(); } }));
  }
  el.append(h("button", { type: "button", class: "icon-btn toast-x", "aria-label": "Dismiss", onclick: () => el.remove() }, icon("x")));
  box.append(el);
  while (box.childElementCount > 3) box.firstElementChild.remove();
  setTimeout(() => el.remove(), 7000);
}

// ---------------------------------------------------------------------------
// nickname dialog

/**
 * Open the nickname dialog. ``required``: the page has no accepted nickname to
 * fall back on (a first visit, or the chosen one is taken everywhere), so the
 * dialog cannot be cancelled and nothing is sent until a join succeeds.
 */
function askNick(message = null, required = !S.wantNick) {
  const dialog = $("nick-dialog");
  const first = !S.wantNick;
  $("nick-title").textContent = first ? "Welcome to hubbub" : required ? "Choose another nickname" : "Your nickname";
  $("nick-sub").textContent = first
    ? "Choose a nickname to start chatting. It is remembered on this device."
    : "Everyone in your rooms sees this name.";
  $("nick-ok").textContent = required ? "Start chatting" : "Save";
  $("nick-cancel").hidden = required;
  dialog.dataset.required = required ? "true" : "false";
  $("nick-input").value = S.wantNick || "";
  showNickError(message || "");
  if (!dialog.open) dialog.showModal();
  $("nick-input").focus();
  $("nick-input").select();
}

/** Say what is wrong with the nickname (in the dialog, which must be open). */
function showNickError(text) {
  $("nick-error").textContent = text;
  $("nick-input").setAttribute("aria-invalid", text ? "true" : "false");
}

/** Close the dialog; after a required choice, the user goes on in the message box. */
function closeNickDialog() {
  const dialog = $("nick-dialog");
  const required = dialog.dataset.required === "true";
  dialog.dataset.required = "false";
  if (dialog.open) dialog.close();
  if (required) $("input").focus();
}

function submitNick(ev) {
  ev.preventDefault();
  const nick = $("nick-input").value.trim();
  if (!NICK_RE.test(nick)) {
    showNickError(nick ? "Use up to 32 letters, digits, _ . or -, starting with a letter or digit." : "Please enter a nickname.");
    return;
  }
  const firstTime = !S.wantNick;
  S.wantNick = nick;
  store.set(KEYS.nick, nick);
  renderMe();
  for (const room of S.rooms.values()) {
    room.nickWaitSince = 0;
    if (room.joined === "no") room.problem = null;
  }
  if (!S.welcomed) {
    closeNickDialog();
    if (firstTime || !S.ws) connect();
    renderPendingStates();
    return;
  }
  if (anyJoined() && !same(nick, S.me)) {
    wsSend({ type: "nick", nick }); // the answer ("nick" or an error) closes the dialog
  } else {
    closeNickDialog();
  }
  for (const room of S.rooms.values()) {
    if (room.joined === "no") join(room);
  }
  renderRoomHeader();
  renderPendingStates();
}

// ---------------------------------------------------------------------------
// drawers (phone) and composer

function closeDrawers() {
  document.body.classList.remove("drawer-open", "members-open");
  $("scrim").hidden = true;
  $("menu-btn").setAttribute("aria-expanded", "false");
  $("members-btn").setAttribute("aria-expanded", String(!document.body.classList.contains("members-hidden") && wide()));
}

const wide = () => matchMedia("(min-width: 1100px)").matches;
const finePointer = () => matchMedia("(pointer: fine)").matches;

function toggleSidebar() {
  const open = !document.body.classList.contains("drawer-open");
  closeDrawers();
  if (open) {
    document.body.classList.add("drawer-open");
    $("scrim").hidden = false;
    $("menu-btn").setAttribute("aria-expanded", "true");
    wsSend({ type: "rooms" });
    $("sidebar").querySelector("button, input")?.focus();
  }
}

function toggleMembers() {
  if (wide()) {
    const hidden = document.body.classList.toggle("members-hidden");
    $("members-btn").setAttribute("aria-expanded", String(!hidden));
    return;
  }
  const open = !document.body.classList.contains("members-open");
  closeDrawers();
  if (open) {
    document.body.classList.add("members-open");
    $("scrim").hidden = false;
    $("members-btn").setAttribute("aria-expanded", "true");
    $("members").querySelector("button")?.focus();
  }
}

function focusComposer() {
  if (finePointer()) $("input").focus();
}

/** Characters as the server counts them (code points, not UTF-16 units). */
const textLength = (text) => {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
};

function tooLong(text) {
  if (textLength(text) > S.limits.max_text) return true;
  // The whole frame must fit in the server's largest message (UTF-8 bytes).
  const frame = JSON.stringify({ type: "send", room: "x".repeat(S.limits.max_room), id: uuid(), text });
  return new TextEncoder().encode(frame).length > S.limits.max_message_size;
}

const numberFmt = new Intl.NumberFormat();

/** The length counter under the message box: shown near the limit, an error past it. */
function renderCounter(refused = false) {
  const counter = $("char-count");
  const text = $("input").value.replace(/\s+$/u, "");
  const max = S.limits.max_text;
  const length = textLength(text);
  const over = length > max || (length > max * 0.5 && tooLong(text));
  const near = length >= max * 0.9;
  counter.hidden = !(over || near);
  counter.classList.toggle("over", over);
  $("input").setAttribute("aria-invalid", over ? "true" : "false");
  if (counter.hidden) {
    counter.textContent = "";
    return;
  }
  let note = `${numberFmt.format(length)} / ${numberFmt.format(max)} characters`;
  if (over) {
    const extra = length - max;
    note += extra > 0
      ? ` · ${numberFmt.format(extra)} too many: shorten the message to send it`
      : " · too large to send: shorten the message";
    if (refused) note = `Not sent. ${note}`;
  }
  counter.textContent = note;
  if (refused) announce(note);
}

function autosize() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, Math.max(120, innerHeight * 0.35))}px`;
}

function bindUi() {
  const input = $("input");
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  input.addEventListener("input", () => {
    autosize();
    renderCounter();
    if (input.value) startTyping();
    else if (S.typing.room) stopTyping();
  });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.replace(/\s+$/u, "");
    if (!text.trim()) return;
    if (tooLong(text)) {
      // Refused here, kept in the box: nothing is cut off behind the user's back.
      renderCounter(true);
      input.focus();
      return;
    }
    sendText(text);
    input.value = "";
    autosize();
    renderCounter();
    input.focus();
  });
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const field = $("join-input");
    const name = field.value.trim().replace(/^#/, "");
    if (!ROOM_RE.test(name)) {
      field.setCustomValidity("Letters, digits, _ . - (starts with a letter or digit, at most 64)");
      field.reportValidity();
      return;
    }
    field.setCustomValidity("");
    field.value = "";
    openRoom(name);
    focusComposer();
  });
  $("join-input").addEventListener("input", () => $("join-input").setCustomValidity(""));
  $("menu-btn").addEventListener("click", toggleSidebar);
  $("sidebar-close").addEventListener("click", closeDrawers);
  $("members-btn").addEventListener("click", toggleMembers);
  $("members-close").addEventListener("click", closeDrawers);
  $("scrim").addEventListener("click", closeDrawers);
  $("leave-btn").addEventListener("click", leaveCurrent);
  $("retry-btn").addEventListener("click", retryNow);
  $("nick-edit").addEventListener("click", () => askNick());
  $("nick-form").addEventListener("submit", submitNick);
  $("nick-cancel").addEventListener("click", () => $("nick-dialog").close());
  $("nick-dialog").addEventListener("cancel", (ev) => {
    // A first run, or a nickname taken everywhere: there is no name to go on with.
    if ($("nick-dialog").dataset.required === "true") ev.preventDefault();
  });
  $("jump").addEventListener("click", () => {
    if (!S.current) return;
    S.current.stick = true;
    scrollToBottom(S.current);
    $("jump").hidden = true;
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && document.body.matches(".drawer-open, .members-open")) {
      closeDrawers();
      $("menu-btn").focus();
    }
  });
  addEventListener("online", () => {
    if (!S.ws) {
      S.attempt = 0;
      retryNow();
    }
  });
  addEventListener("offline", () => {
    if (!S.ws) setStatus("offline");
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    S.hiddenNew = 0;
    renderTitle();
    if (!S.ws && S.status !== "failed" && S.retryAt - Date.now() > 2000) retryNow();
  });
  new ResizeObserver(() => {
    const view = S.current;
    if (view?.stick) scrollToBottom(view);
  }).observe($("views"));
  setInterval(() => {
    if (S.status === "reconnecting") renderStatus();
  }, 1000);
  setInterval(heartbeat, 2500);
  setInterval(() => wsSend({ type: "rooms" }), ROOMS_REFRESH);
  setInterval(relabelDays, 60000);
}

// ---------------------------------------------------------------------------
// start

function start() {
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
