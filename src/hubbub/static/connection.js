import { makeTransport, availableKinds } from "./transport.js";
import { DEFAULT_RULES, PROTOCOL, BACKOFF_BASE, BACKOFF_CAP, STABLE_AFTER, PING_AFTER, DEAD_AFTER, CONNECT_TIMEOUT, AUTH_GRACE, FALLBACK_AFTER, PROBE_TIMEOUT, DEFAULT_LIMITS, KEYS, session, S } from "./state.js";
import { onMessage, onAck, onHistory, requestHistory, onPresence, setMembers, onMembers, onTyping, onDm, onNickSet, confirmNick, onError, onLeftRoom, clearRoom } from "./rooms.js";
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
  if (S.link || S.fatal || S.refreshing) return;
  if (S.probing) {
    S.connectAfterProbe = true; // the transport to use is being decided
    return;
  }
  setStatus("connecting");
  const kinds = availableKinds();
  if (!kinds.length) {
    S.fatal = "This browser cannot connect: it has neither WebSocket nor fetch.";
    setStatus("failed");
    return;
  }
  const kind = kinds[S.kindIndex % kinds.length];
  const link = makeTransport(kind, PROTOCOL);
  S.transport = kind;
  S.linkToken = S.token;
  S.gotFrame = false;
  S.channelOpen = false;
  link.onopen = () => {
    if (S.link !== link) return;
    S.openedAt = Date.now();
    S.lastFrameAt = Date.now();
    S.channelOpen = true;
    // Browsers cannot set Authorization: the token is the first frame, on
    // every (re)connection and every transport; welcome comes after it.
    if (S.token) link.send({ type: "auth", token: S.token });
    // Without a token, a ping asks whether this server wants one: a server with
    // sign-in answers it at once with auth_required ("Sign-in needed") instead
    // of waiting for its auth timeout; any other server welcomes us, then pongs.
    else link.send({ type: "ping", id: "hello" });
  };
  link.onframe = (frame) => {
    if (S.link !== link) return;
    S.lastFrameAt = Date.now();
    S.gotFrame = true;
    handle(frame);
  };
  link.onclose = ({ code, fatal }) => {
    if (S.link !== link) return;
    if (fatal) S.fatal = fatal;
    disconnected(code, link);
  };
  S.link = link;
  S.startedAt = Date.now();
  link.open();
}

/**
 * A connection that failed before its first frame: if the server answers
 * plain HTTP meanwhile, the transport is what is broken (a proxy that blocks
 * WebSocket, say), and after FALLBACK_AFTER such failures in a row the next
 * transport is tried: WebSocket, then server-sent events, then long polling
 * (then WebSocket again). A server that is away does not count: a restart
 * never pushes a page off WebSocket. The transport that worked is kept.
 */
export async function noteTransportFailure(link) {
  const kinds = availableKinds();
  const index = S.kindIndex;
  if (link.unsupported) {
    // The server has no HTTP fallbacks at all: back to WebSocket.
    S.kindIndex = 0;
    S.kindFailures = 0;
    return;
  }
  let reachable = false;
  S.probing = true; // a reconnect due meanwhile waits for the answer (at most PROBE_TIMEOUT)
  try {
    const answer = await fetch("/healthz", { cache: "no-store", signal: AbortSignal.timeout(PROBE_TIMEOUT) });
    reachable = answer.ok;
  } catch {
    reachable = false;
  }
  S.probing = false;
  if (reachable && S.kindIndex === index && !S.welcomed) {
    S.kindFailures += 1;
    if (S.kindFailures >= FALLBACK_AFTER && kinds.length > 1) {
      S.kindIndex = (index + 1) % kinds.length;
      S.kindFailures = 0;
    }
  }
  if (S.connectAfterProbe) {
    S.connectAfterProbe = false;
    connect();
  }
}

export const SIGN_IN_NEEDED = "Sign-in needed: this chat only lets signed-in people in. Open it again from the site that signs you in.";
export const SIGN_IN_EXPIRED = "Sign-in needed: your sign-in has expired. Sign in again to go on chatting.";

/** Use this token from now on (sessionStorage keeps it for this tab); connect if we were not. */
export function setToken(token) {
  if (typeof token !== "string" || !token) throw new TypeError("hubbub.setToken needs the token, a non-empty string");
  S.token = token;
  session.set(KEYS.token, token);
  S.refreshing = false;
  if (S.signIn) {
    S.signIn = false;
    S.fatal = null;
  }
  // A connection that is up keeps the identity it has; the new token is used
  // at the next (re)connection, e.g. when the server says the old one expired.
  if (!S.link && !S.fatal) {
    S.attempt = 0;
    connect();
  }
}

/** Close code 4402: ask the embedding site for a new token (window.hubbub.onTokenExpired), then resume. */
export function tokenExpired() {
  if (S.token && S.token !== S.linkToken) return; // a newer token is there already: just reconnect
  const hook = globalThis.hubbub?.onTokenExpired;
  if (typeof hook !== "function") {
    S.signIn = true;
    S.fatal = SIGN_IN_EXPIRED;
    return;
  }
  S.refreshing = true;
  Promise.resolve()
    .then(() => hook())
    .then((token) => setToken(token))
    .catch(() => {
      S.refreshing = false;
      S.signIn = true;
      S.fatal = SIGN_IN_EXPIRED;
      setStatus("failed");
    });
}

/** The connection is gone (closed, failed, or presumed dead): prepare the resume. */
export function disconnected(code = 0) {
  const link = S.link;
  S.link = null;
  if (code === 4401) {
    S.signIn = true;
    S.fatal = SIGN_IN_NEEDED;
  } else if (code === 4402) {
    tokenExpired();
  } else if (code === 4403) {
    S.fatal = "Your sign-in no longer allows you into this chat.";
  } else if (code === 4000) {
    S.fatal = "You were disconnected by an administrator."; // the admin page's Kick: no retry
  } else if (!S.welcomed && !S.gotFrame && !link?.fatal && link) {
    void noteTransportFailure(link); // it never said a word: maybe the transport is blocked
  }
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
    room.whoBusy = null;
    clearTimeout(room.retryTimer);
    clearTimeout(room.whoTimer);
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
  if (S.refreshing) {
    setStatus("connecting"); // the embedding site is getting a new token; setToken reconnects
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
  S.signIn = false;
  connect();
}

export function heartbeat() {
  if (!S.link) return;
  if (!S.welcomed) {
    // A handshake into a black hole would otherwise hang for minutes.
    // Once the channel is open, a little longer: a server that waits for a token
    // closes with 4401 (sign-in needed) after its own auth timeout.
    const limit = CONNECT_TIMEOUT + (S.channelOpen ? AUTH_GRACE : 0);
    if (Date.now() - S.startedAt > limit) disconnected();
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
    case "presence":
      return onPresence(f);
    case "members":
      return onMembers(f);
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
      return onFrameError(f);
    default:
      return; // pong, and frame types of later versions
  }
}

/** Errors about the token are the connection's business; the rest go to the rooms. */
export function onFrameError(f) {
  if (["auth_required", "auth_failed", "token_expired"].includes(f.code)) {
    // The server closes with 4401 / 4402 next; say it now and stop sending.
    if (f.code === "token_expired") return undefined;
    S.signIn = true;
    S.fatal = SIGN_IN_NEEDED;
    return disconnected(4401);
  }
  if (f.ref === "auth") return undefined; // a server without sign-in ignores our token
  return onError(f);
}

export function onWelcome(f) {
  S.welcomed = true;
  S.kindFailures = 0;
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
  setMembers(room, f);
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
