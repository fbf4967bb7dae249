import { WebSocketTransport } from "./transport.js";
import { DEFAULT_RULES, PROTOCOL, BACKOFF_BASE, BACKOFF_CAP, STABLE_AFTER, PING_AFTER, DEAD_AFTER, CONNECT_TIMEOUT, DEFAULT_LIMITS, S } from "./state.js";
import { onMessage, onAck, onHistory, requestHistory, onPresence, setMembers, onTyping, onDm, onNickSet, confirmNick, onError, onLeftRoom, clearRoom } from "./rooms.js";
import { flush, setSlowed } from "./outbox.js";
import { renderStatus, renderPendingStates, renderHistoryTop, renderBrowse, renderRoomHeader, renderTyping, renderMe } from "./render.js";
import { renderCounter, applyLimits } from "./ui.js";

export function wsSend(frame) {
  if (!S.link || !S.welcomed || !S.link.send(frame)) return false;
  takeToken();
  return true;
}

/** Tokens left in our mirror of the server's rate-limit bucket (Infinity: no limit). */
export function tokens() {
  const b = S.bucket;
  if (!(b.rate > 0)) return Infinity;
  const now = Date.now();
  b.tokens = Math.min(b.burst, b.tokens + ((now - b.at) / 1000) * b.rate);
  b.at = now;
  return b.tokens;
}

export function takeToken() {
  if (tokens() !== Infinity) S.bucket.tokens -= 1; // every frame costs one, as on the server
}

/** ms until a message may go out without being refused (0: now). */
export function sendWait() {
  const paused = S.pausedUntil - Date.now();
  if (paused > 0) return paused;
  const left = tokens();
  return left >= 1 ? 0 : Math.ceil(((1 - left) / S.bucket.rate) * 1000);
}

export function connect() {
  clearTimeout(S.retryTimer);
  S.retryTimer = null;
  if (S.link || S.fatal) return;
  setStatus("connecting");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const link = new WebSocketTransport(`${scheme}//${location.host}/`, PROTOCOL);
  link.onopen = () => {
    S.openedAt = Date.now();
    S.lastFrameAt = Date.now();
  };
  link.onframe = (frame) => {
    if (S.link !== link) return;
    S.lastFrameAt = Date.now();
    handle(frame);
  };
  link.onclose = ({ code, fatal }) => {
    if (S.link !== link) return;
    if (fatal) S.fatal = fatal;
    disconnected(code);
  };
  S.link = link;
  S.startedAt = Date.now();
  link.open();
}

/** The connection is gone (closed, failed, or presumed dead): prepare the resume. */
export function disconnected(code = 0) {
  const link = S.link;
  S.link = null;
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
  link?.close();
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
export function reconnectDelay() {
  const failures = S.attempt + S.flaps;
  const ceiling = Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** Math.max(0, failures - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2); // jitter: no thundering herd
}

export function scheduleReconnect() {
  const delay = reconnectDelay();
  S.retryAt = Date.now() + delay;
  clearTimeout(S.retryTimer);
  S.retryTimer = setTimeout(connect, delay);
  setStatus(navigator.onLine === false ? "offline" : "reconnecting");
}

export function retryNow() {
  if (S.link) return;
  S.fatal = null;
  connect();
}

export function heartbeat() {
  if (!S.link) return;
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

export function setStatus(status) {
  S.status = status;
  renderStatus();
  renderRoomHeader();
}

export function handle(f) {
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
    case "left_room":
      return onLeftRoom(f);
    case "error":
      return onError(f);
    default:
      return; // pong, and frame types of later versions
  }
}

export function onWelcome(f) {
  S.welcomed = true;
  S.me = f.nick;
  S.pingSentAt = 0;
  S.limits = { ...DEFAULT_LIMITS, ...(f.limits && typeof f.limits === "object" ? f.limits : {}) };
  S.rules = { ...DEFAULT_RULES };
  for (const key of ["nick", "room"]) if (typeof f.rules?.[key] === "string" && f.rules[key]) S.rules[key] = f.rules[key];
  applyLimits();
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

export function join(room) {
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

export function onRoom(f) {
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

export function onResumed(f) {
  const room = S.rooms.get(f.room);
  if (!room) return;
  room.resuming = false;
  room.lastSeq = Math.max(room.lastSeq ?? 0, f.seq);
  flush(room);
}

export function onReset(f) {
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

/** ms the server asked us to wait after "rate_limited" (its message says "retry in 0.35s"). */
export function retryAfter(f) {
  let secs = Number(f.retry_after);
  if (!(secs > 0)) {
    const m = /retry in ([0-9.]+)\s*s/i.exec(f.message || "");
    secs = m ? Number(m[1]) : 0;
  }
  if (!(secs > 0)) secs = S.bucket.rate > 0 ? 1 / S.bucket.rate : 1;
  return Math.min(10000, Math.max(50, secs * 1000));
}
