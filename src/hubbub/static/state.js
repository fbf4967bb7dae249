import { dayKey, storage } from "./util.js";

export const PROTOCOL = "hubbub.v1";

export const DEFAULT_ROOM = "lobby";

export const PAGE_SIZE = 50;

export const NICK_RE = /^[\p{L}\p{N}][\p{L}\p{N}_.\-]{0,31}$/u;

export const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$/;

export const GROUP_WINDOW = 5 * 60; // seconds: consecutive messages of one author are grouped

export const BACKOFF_BASE = 500; // ms

export const BACKOFF_CAP = 30000; // ms

export const STABLE_AFTER = 10000; // ms a connection must live before it no longer counts as a flap

export const PING_AFTER = 25000; // ms of silence before an application ping

export const DEAD_AFTER = 45000; // ms of silence after which the connection is presumed dead

export const CONNECT_TIMEOUT = 10000; // ms for the handshake and the welcome frame

export const AUTH_GRACE = 5000; // ms more for the welcome once the channel is open (a server's auth timeout closes first)

export const FALLBACK_AFTER = 2; // failures before the first frame, server reachable: try the next transport

export const PROBE_TIMEOUT = 3000; // ms for GET /healthz, which tells a blocked transport from a server that is away

export const ROOMS_REFRESH = 30000; // ms between room list refreshes

export const TYPING_SEND_EVERY = 3000; // ms

export const TYPING_IDLE = 4000; // ms after the last keystroke: typing stops

export const TYPING_SHOWN = 6000; // ms a remote typing indicator lives without renewal

export const GHOST_WAIT = 60000; // ms to wait for our own dead connection to release the nick

export const KEEP_MAX = 1500; // messages kept per room in a page open all day...

export const KEEP_AFTER_PRUNE = 1000; // ...when the reader is at the bottom (older ones reload on scroll)

export const SLOW_LINGER = 2000; // ms the "slow down" note stays after the last message held back

// A large room's member list (docs/protocol.md, who) is read a page at a time, and
// the panel keeps at most MEMBERS_KEEP names: past that, the earliest make room.
export const MEMBERS_PAGE = 100;

export const MEMBERS_KEEP = 500;

export const RETRY_SEND = [1000, 2000]; // ms before a send refused as unavailable is tried again

// The server's limits until its welcome frame tells the real ones (docs/protocol.md).
export const DEFAULT_LIMITS = {
  max_message_size: 65536, rate: 0, burst: 0, max_text: 8000, max_nick: 32, max_room: 64, history_page: 200,
};
// The name rules in words until the welcome frame says them (its `rules`).
export const DEFAULT_RULES = {
  nick: "Use up to 32 letters, digits, _ . or -, starting with a letter or digit.",
  room: "Letters, digits, _ . - (starts with a letter or digit, at most 64)",
};

export const KEYS = {
  nick: "hubbub.nick",
  rooms: "hubbub.rooms",
  current: "hubbub.current",
  pending: "hubbub.pending", // sessionStorage: unsent messages survive a reload of this tab
  token: "hubbub.token", // sessionStorage: the sign-in token (from #token= or hubbub.setToken)
};

export const store = storage("localStorage");

export const session = storage("sessionStorage");

export const S = {
  me: null, // the nickname the server confirmed
  wantNick: null, // the nickname the user chose (localStorage)
  link: null, // the transport (transport.js) of the current connection
  get ws() {
    return this.link?.socket ?? null; // the WebSocket under it, for tests
  },
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
  // Transports (transport.js): the kind in use, and the fallback ladder's position.
  transport: null, // "websocket" | "sse" | "poll"
  kindIndex: 0, // index into availableKinds(): kept once a fallback worked
  kindFailures: 0, // failures before a first frame on that kind, server reachable
  gotFrame: false, // the current link has delivered a frame
  channelOpen: false, // the current link is open (the welcome may still be due)
  probing: false, // asking /healthz whether the server is up (noteTransportFailure)
  connectAfterProbe: false, // a reconnect came due during that
  // Sign-in (docs/security.md): a token from #token= or window.hubbub.setToken().
  token: null,
  linkToken: null, // the token the current connection authenticated with
  signIn: false, // the server wants a (new) token: "Sign-in needed"
  refreshing: false, // waiting for window.hubbub.onTokenExpired's new token
  onTokenExpired: null, // the embedding site's hook: () => Promise<token>
  setToken: null, // window.hubbub.setToken (connection.js)
  rooms: new Map(), // name -> Room
  dms: new Map(), // lowercased peer -> Dm
  pending: new Map(), // client id -> pending item, in the order typed
  limits: { ...DEFAULT_LIMITS },
  rules: { ...DEFAULT_RULES },
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

/** A positive whole number from the server's limits, else the default. */
export const limit = (key) => {
  const n = Number(S.limits[key]);
  return Number.isInteger(n) && n > 0 ? n : DEFAULT_LIMITS[key];
};

// The name checks keep the patterns' shapes (NICK_RE, ROOM_RE) with the
// server's lengths (welcome's limits; the defaults before it).
export const nickOk = (nick) =>
  new RegExp(`^[\\p{L}\\p{N}][\\p{L}\\p{N}_.\\-]{0,${limit("max_nick") - 1}}$`, "u").test(nick);
export const roomOk = (name) =>
  new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,${limit("max_room") - 1}}$`).test(name);
/** Messages per history request: ours, never more than the server's largest page. */
export const pageSize = () => Math.min(PAGE_SIZE, limit("history_page"));
