// How frames travel between the page and the server. Every transport has the
// same small interface, so the rest of the client does not care which one
// carries its frames (docs/transports.md has the wire contract):
//
//   const t = new WebSocketTransport(url, protocol);   // or SseTransport / PollTransport
//   t.onopen = () => {};             // the channel is up (no frame yet)
//   t.onframe = (frame) => {};       // one server frame: an object with a string `type`
//   t.onclose = ({ code, fatal }) => {}; // the channel went away by itself (once);
//                                    // fatal: a reason why retrying is pointless
//   t.open();                        // callbacks never run inside open()
//   t.send(frame);                   // -> true if it was accepted for sending, in order
//   t.isOpen;                        // frames can be sent now
//   t.close();                       // ours: onclose is not called for it
//   t.kind;                          // "websocket" | "sse" | "poll"
//   t.stats;                         // { requests, bytesIn, bytesOut }: what it cost so far
//
// The HTTP fallbacks (server-sent events and long polling) open a *session*
// (POST /v1/sessions) that the server treats exactly like a WebSocket
// connection; client frames go out as NDJSON in POST .../frames, one request at
// a time so that they arrive in the order they were sent.
//
// stats.bytesIn counts what the page can see: WebSocket payloads (+2..4 bytes
// of frame header), SSE event lines, HTTP response bodies and the response
// headers the browser exposes (+ a status line). Request headers are not
// visible to a page and are not counted; bytesOut counts WebSocket payloads and
// HTTP request bodies.

/** Bytes of a string in UTF-8. */
export function utf8Length(text) {
  let n = 0;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00) {
      n += 4; // a surrogate pair is one 4-byte character
      i += 1;
    } else n += 3;
  }
  return n;
}

/** A frame object from a text (or an object already parsed), else null. */
function asFrame(data) {
  let frame = data;
  if (typeof data === "string") {
    try {
      frame = JSON.parse(data);
    } catch {
      return null;
    }
  }
  return frame && typeof frame === "object" && typeof frame.type === "string" ? frame : null;
}

const newStats = () => ({ requests: 0, bytesIn: 0, bytesOut: 0 });

export class WebSocketTransport {
  constructor(url, protocol) {
    this.kind = "websocket";
    this.url = url;
    this.protocol = protocol;
    this.socket = null; // the WebSocket (tests dispatch events on it)
    this.closed = false;
    this.fatal = null;
    this.stats = newStats();
    this.onopen = null;
    this.onframe = null;
    this.onclose = null;
  }

  open() {
    let ws;
    this.stats.requests += 1; // the upgrade request
    try {
      ws = new WebSocket(this.url, this.protocol);
    } catch {
      queueMicrotask(() => this._gone(0));
      return;
    }
    this.socket = ws;
    ws.addEventListener("open", () => {
      if (this.closed) return;
      if (ws.protocol !== this.protocol) {
        this.fatal = `This server does not speak the ${this.protocol} protocol.`;
        ws.close();
        return;
      }
      this.onopen?.();
    });
    ws.addEventListener("message", (ev) => {
      if (this.closed || typeof ev.data !== "string") return;
      const size = utf8Length(ev.data);
      this.stats.bytesIn += size + (size < 126 ? 2 : 4);
      const frame = asFrame(ev.data);
      if (frame) this.onframe?.(frame);
    });
    ws.addEventListener("close", (ev) => this._gone(ev.code));
  }

  get isOpen() {
    return !this.closed && this.socket?.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (!this.isOpen) return false;
    const text = JSON.stringify(frame);
    this.stats.bytesOut += utf8Length(text) + 6; // + a masked frame's header
    this.socket.send(text);
    return true;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    const ws = this.socket;
    if (ws && ws.readyState < WebSocket.CLOSING) {
      try {
        ws.close();
      } catch {
        /* already closing */
      }
    }
  }

  _gone(code) {
    if (this.closed) return;
    this.closed = true;
    this.onclose?.({ code, fatal: this.fatal });
  }
}

/** At most this many frames in one POST .../frames (the server's limit, docs/transports.md). */
export const MAX_FRAMES_PER_POST = 64;

/**
 * What SSE and long polling share: the session (POST /v1/sessions), client
 * frames in order (POST .../frames, one request at a time), DELETE on close.
 * A 404 anywhere means the session is gone: the transport closes and the
 * connection opens a new one and resumes, as after a dropped WebSocket.
 */
class HttpSessionTransport {
  constructor(base, protocol, kind) {
    this.kind = kind;
    this.base = base; // "" (this origin) or "https://host:port"
    this.protocol = protocol;
    this.id = null; // the session id: its possession is the session's credential
    this.closed = false;
    this.fatal = null;
    this.unsupported = false; // the server has no fallback transports (404 on POST /v1/sessions)
    this.maxBody = 65536;
    this.pollTimeout = 25;
    this.outbox = []; // frame texts not yet posted
    this.posting = false;
    this.aborter = new AbortController();
    this.stats = newStats();
    this.onopen = null;
    this.onframe = null;
    this.onclose = null;
  }

  open() {
    void this._create();
  }

  get isOpen() {
    return !this.closed && this.id !== null;
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.outbox.push(JSON.stringify(frame));
    if (!this.posting) void this._post();
    return true;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this._stop();
    this._delete();
  }

  /**
   * End the session on the server now (the app's close event runs: our
   * nickname is free for the next session) instead of after its timeout.
   * keepalive: it goes out even while the page unloads. A session the server
   * already forgot answers 404, which is fine.
   */
  _delete() {
    if (this.id === null) return;
    fetch(this._url(""), { method: "DELETE", keepalive: true }).catch(() => {});
  }

  _url(suffix) {
    return `${this.base}/v1/sessions/${encodeURIComponent(this.id)}${suffix}`;
  }

  /** fetch with the cost counted, and cancelled by close(). */
  async _fetch(url, init = {}, timeoutMs = 0) {
    const signals = [this.aborter.signal];
    if (timeoutMs > 0) signals.push(AbortSignal.timeout(timeoutMs));
    const signal = signals.length > 1 && AbortSignal.any ? AbortSignal.any(signals) : signals[0];
    this.stats.requests += 1;
    if (typeof init.body === "string") this.stats.bytesOut += utf8Length(init.body);
    const res = await fetch(url, { cache: "no-store", ...init, signal });
    const text = await res.text();
    let head = 17; // "HTTP/1.1 200 OK\r\n"
    for (const [name, value] of res.headers) head += name.length + value.length + 4;
    this.stats.bytesIn += head + utf8Length(text);
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    return { status: res.status, body };
  }

  async _create() {
    const query = `transport=${this.kind}&protocol=${encodeURIComponent(this.protocol)}`;
    let res;
    try {
      res = await this._fetch(`${this.base}/v1/sessions?${query}`, { method: "POST" }, 15000);
    } catch {
      return this._gone(0);
    }
    if (this.closed) {
      if (res.status === 201 && typeof res.body?.session === "string") this.id = res.body.session;
      this._delete();
      return undefined;
    }
    if (res.status !== 201 || typeof res.body?.session !== "string") {
      if (res.status === 404 || res.status === 405) this.unsupported = true;
      if (res.status === 403) this.fatal = res.body?.message || "This page may not connect to this server (403).";
      // 401: the server wants a token (a refused upgrade), like close code 4401.
      return this._gone(res.status === 401 ? 4401 : 0);
    }
    this.id = res.body.session;
    if (Number(res.body.max_body) > 0) this.maxBody = Number(res.body.max_body);
    if (Number(res.body.poll_timeout) > 0) this.pollTimeout = Number(res.body.poll_timeout);
    this._start();
    return undefined;
  }

  /** POST what waits, in order: one request at a time, at most max_body bytes and 64 frames. */
  async _post() {
    this.posting = true;
    while (this.outbox.length && !this.closed) {
      const lines = [];
      let bytes = 0;
      while (this.outbox.length && lines.length < MAX_FRAMES_PER_POST) {
        const size = utf8Length(this.outbox[0]) + 1;
        if (lines.length && bytes + size > this.maxBody) break;
        lines.push(this.outbox.shift());
        bytes += size;
      }
      let res;
      try {
        const headers = { "Content-Type": "application/x-ndjson" };
        res = await this._fetch(this._url("/frames"), { method: "POST", headers, body: lines.join("\n") }, 30000);
      } catch {
        // Maybe delivered, maybe not: the connection resumes and resends (same ids).
        this.posting = false;
        return this._gone(0);
      }
      // 413: one frame larger than the server takes; it can never go (the page
      // checks sizes before sending, so this is a bug, not a user's message).
      if (res.status !== 202 && res.status !== 413) {
        this.posting = false;
        return this._gone(0);
      }
    }
    this.posting = false;
    return undefined;
  }

  _deliver(data) {
    if (this.closed) return;
    const frame = asFrame(data);
    if (frame) this.onframe?.(frame);
  }

  _stop() {
    this.aborter.abort();
  }

  _gone(code) {
    if (this.closed) return;
    this.closed = true;
    this._stop();
    // The connection will resume in a new session: this one must not hold our
    // place meanwhile (a stream cut by a proxy, or by the page unloading).
    this._delete();
    this.onclose?.({ code, fatal: this.fatal });
  }
}

/** Server-sent events: GET .../events for the server's frames, POST for ours. */
export class SseTransport extends HttpSessionTransport {
  constructor(base, protocol) {
    super(base, protocol, "sse");
    this.source = null;
    this.opened = false;
    this.retryTimer = null;
  }

  _start() {
    const es = new EventSource(this._url("/events"));
    this.source = es;
    this.stats.requests += 1;
    es.addEventListener("open", () => {
      clearTimeout(this.retryTimer);
      if (this.closed || this.opened) return;
      this.opened = true;
      this.onopen?.();
    });
    es.addEventListener("message", (ev) => {
      this.stats.bytesIn += utf8Length(ev.data) + String(ev.lastEventId).length + 13; // "id: n\ndata: ...\n\n"
      this._deliver(ev.data);
    });
    // The session's frames are no longer buffered (Last-Event-ID too old): resume in a new one.
    es.addEventListener("gone", () => this._gone(0));
    es.addEventListener("close", (ev) => {
      let code = 1000;
      try {
        code = Number(JSON.parse(ev.data).code) || 1000;
      } catch {
        code = 1000;
      }
      this._gone(code);
    });
    es.addEventListener("error", () => {
      if (this.closed) return;
      // CLOSED: the server answered the stream with an error (404: the session
      // is gone). CONNECTING: EventSource reconnects by itself with
      // Last-Event-ID (nothing lost, nothing twice); if that does not work
      // within a few seconds, the server is away: give up like a dead socket.
      if (es.readyState === EventSource.CLOSED) return this._gone(0);
      this.stats.requests += 1;
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => {
        if (es.readyState !== EventSource.OPEN) this._gone(0);
      }, 5000);
      return undefined;
    });
  }

  _stop() {
    super._stop();
    clearTimeout(this.retryTimer);
    this.source?.close();
  }
}

/** Long polling: GET .../poll?after=n waits for the server's frames, POST for ours. */
export class PollTransport extends HttpSessionTransport {
  constructor(base, protocol) {
    super(base, protocol, "poll");
    this.after = 0; // frames up to here are acknowledged (the server forgets them)
    this.polls = 0; // GET .../poll requests made ("any news?"): for the demo page
    this.empty = 0; // polls that came back with nothing ("no news"): for the demo page
  }

  _start() {
    queueMicrotask(() => {
      if (this.closed) return;
      this.onopen?.();
      void this._loop();
    });
  }

  async _loop() {
    let failures = 0;
    while (!this.closed) {
      let res;
      this.polls += 1;
      try {
        // The server answers within poll_timeout; a proxy that holds the answer longer is a dead link.
        res = await this._fetch(this._url(`/poll?after=${this.after}`), {}, (this.pollTimeout + 15) * 1000);
      } catch {
        res = null;
      }
      if (this.closed) return;
      if (res?.status === 404) return this._gone(0);
      const body = res?.status === 200 ? res.body : null;
      if (!body || !Array.isArray(body.frames)) {
        // A lost answer is fetched again with the same `after`; twice more, then the server is away.
        failures += 1;
        if (failures > 2) return this._gone(0);
        await new Promise((resolve) => setTimeout(resolve, 500 * failures));
        continue;
      }
      failures = 0;
      if (!body.frames.length && !body.closed) this.empty += 1;
      for (const frame of body.frames) this._deliver(frame);
      if (this.closed) return;
      if (Number.isInteger(body.last) && body.last >= this.after) this.after = body.last;
      if (body.closed) return this._gone(Number(body.closed.code) || 1000);
    }
  }
}

/** The transports a browser can use, best first (a page may lack WebSocket or EventSource). */
export function availableKinds() {
  const kinds = [];
  if (typeof globalThis.WebSocket === "function") kinds.push("websocket");
  if (typeof globalThis.EventSource === "function") kinds.push("sse");
  if (typeof globalThis.fetch === "function") kinds.push("poll");
  return kinds;
}

/** A transport of one kind to this page's server. */
export function makeTransport(kind, protocol) {
  if (kind === "sse") return new SseTransport("", protocol);
  if (kind === "poll") return new PollTransport("", protocol);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return new WebSocketTransport(`${scheme}//${location.host}/`, protocol);
}

export const KIND_NAMES = { websocket: "WebSocket", sse: "server-sent events", poll: "long polling" };
