// The live push-vs-polling page (/demo/push-vs-polling): five clients of one
// room, each with running counters of what it costs to hear the same news.
//
//   ws     WebSocket: the server pushes (transport.js, as the chat page uses it)
//   sse    server-sent events: pushed down one long HTTP response
//   long   long polling: "any news?" held by the server until there is some
//   poll1  short polling every 1 s: GET /api/rooms/{room}/messages?since=<seq>
//   poll5  short polling every 5 s
//
// The WebSocket panel also sends: the message box and the auto-sender (1/s).
// No dependencies, no inline script (the server's CSP), text only (no innerHTML).

import { WebSocketTransport, SseTransport, PollTransport, utf8Length } from "../transport.js";

const PROTOCOL = "hubbub.v1";
const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const FEED_MAX = 40; // messages kept in each panel's list
const DELAYS_MAX = 200; // delays kept for the median
const AUTO_EVERY = 1000; // ms between auto-sender messages

const $ = (sel, root = document) => root.querySelector(sel);

const wanted = new URLSearchParams(location.search).get("room") || "demo";
const ROOM = ROOM_RE.test(wanted) ? wanted : "demo";
const TAG = Math.random().toString(16).slice(2, 6);
let token = null;
try {
  token = sessionStorage.getItem("hubbub.token"); // the chat page's sign-in, if any
} catch {
  token = null;
}
let clockOffset = 0; // ms: server clock minus ours (ping/pong over the WebSocket)
let bestRtt = Infinity;
let sent = 0;

const numberFmt = new Intl.NumberFormat();

function bytesText(n) {
  if (n < 10000) return `${numberFmt.format(n)} B`;
  if (n < 10_000_000) return `${numberFmt.format(Math.round(n / 1000))} kB`;
  return `${numberFmt.format(Math.round(n / 1_000_000))} MB`;
}

function msText(ms) {
  if (ms === null) return "—";
  return ms < 10000 ? `${numberFmt.format(Math.max(0, Math.round(ms)))} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

class Panel {
  constructor(key) {
    this.key = key;
    this.el = $(`[data-panel="${key}"]`);
    this.state = $("[data-state]", this.el);
    this.feed = $(".feed", this.el);
    // The list scrolls: keyboard users reach it too (and hear what it is).
    this.feed.tabIndex = 0;
    this.feed.setAttribute("aria-label", `${$("h2", this.el).firstChild.textContent.trim()}: messages arrived`);
    this.delays = [];
    this.seen = new Set(); // seqs shown (a message is counted once)
    this.messages = 0;
    this.lastDelay = null;
    this.startedAt = Date.now();
    this.cells = {};
    const list = $(".counters", this.el);
    for (const [name, label] of [
      ["requests", "Requests"],
      ["perMin", "Requests per minute"],
      ["bytes", "Bytes received"],
      ["messages", "Messages"],
      ["last", "Delay, last"],
      ["median", "Delay, median"],
      ["asks", "“Any news?”"],
      ["noes", "“No.”"],
    ]) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.dataset.counter = name;
      dd.textContent = "0";
      list.append(dt, dd);
      this.cells[name] = dd;
    }
  }

  setState(text, ok = false) {
    this.state.textContent = text;
    this.state.classList.toggle("ok", ok);
  }

  /** A room message reached this client (now). */
  arrived(m) {
    if (typeof m.seq !== "number" || this.seen.has(m.seq)) return;
    this.seen.add(m.seq);
    this.messages += 1;
    const delay = typeof m.ts === "number" ? Date.now() - (m.ts * 1000 + clockOffset) : null;
    if (delay !== null) {
      this.lastDelay = delay;
      this.delays.push(delay);
      if (this.delays.length > DELAYS_MAX) this.delays.shift();
    }
    const li = document.createElement("li");
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = `#${m.seq} ${m.text}`;
    const took = document.createElement("span");
    took.className = "delay";
    took.textContent = msText(delay);
    li.append(text, took);
    this.feed.prepend(li);
    while (this.feed.children.length > FEED_MAX) this.feed.lastElementChild.remove();
    this.render();
  }

  /** What the panel paid so far: { requests, bytes, asks, noes }. */
  cost() {
    return { requests: 0, bytes: 0, asks: 0, noes: 0 };
  }

  render() {
    const c = this.cost();
    const minutes = Math.max(1 / 60, (Date.now() - this.startedAt) / 60000);
    this.cells.requests.textContent = numberFmt.format(c.requests);
    this.cells.perMin.textContent = numberFmt.format(Math.round(c.requests / minutes));
    this.cells.bytes.textContent = bytesText(c.bytes);
    this.cells.messages.textContent = numberFmt.format(this.messages);
    this.cells.last.textContent = msText(this.lastDelay);
    this.cells.median.textContent = msText(median(this.delays));
    this.cells.asks.textContent = numberFmt.format(c.asks);
    this.cells.noes.textContent = numberFmt.format(c.noes);
  }
}

/** A pushed (or long-polled) client: a hubbub.v1 connection that joins the room. */
class LinkPanel extends Panel {
  constructor(key, make) {
    super(key);
    this.make = make;
    this.link = null;
    this.spent = { requests: 0, bytesIn: 0, polls: 0, empty: 0 }; // of links gone before
    this.joined = false;
    this.nick = `${key}-${TAG}`;
    this.onjoined = null;
  }

  connect() {
    const link = this.make();
    this.link = link;
    this.joined = false;
    link.onopen = () => {
      if (token) link.send({ type: "auth", token });
    };
    link.onframe = (f) => this.frame(f);
    link.onclose = () => {
      this.keep(link);
      this.joined = false;
      const missing = link.unsupported;
      this.setState(missing ? "this server does not offer this transport" : "reconnecting…");
      setTimeout(() => this.connect(), (missing ? 10000 : 1000) + Math.random() * 1000);
    };
    link.open();
  }

  keep(link) {
    this.spent.requests += link.stats.requests;
    this.spent.bytesIn += link.stats.bytesIn;
    this.spent.polls += link.polls || 0;
    this.spent.empty += link.empty || 0;
    this.link = null;
  }

  frame(f) {
    if (f.type === "welcome") {
      this.link.send({ type: "join", room: ROOM, nick: this.nick });
    } else if (f.type === "room" && f.room === ROOM) {
      this.joined = true;
      this.setState(`in #${ROOM} as ${f.nick}`, true);
      this.onjoined?.();
    } else if (f.type === "message" && f.room === ROOM) {
      this.arrived(f);
    } else if (f.type === "error" && f.ref === "join" && f.code === "nick_taken") {
      this.nick = `${this.key}-${Math.random().toString(16).slice(2, 6)}`;
      this.link.send({ type: "join", room: ROOM, nick: this.nick });
    } else if (f.type === "error") {
      this.setState(`error: ${f.message || f.code}`);
    } else if (f.type === "pong") {
      onPong(f);
    }
  }

  cost() {
    const s = this.link?.stats ?? { requests: 0, bytesIn: 0 };
    const asks = this.spent.polls + (this.link?.polls || 0);
    const noes = this.spent.empty + (this.link?.empty || 0);
    return { requests: this.spent.requests + s.requests, bytes: this.spent.bytesIn + s.bytesIn, asks, noes };
  }
}

/** Short polling: GET /api/rooms/{room}/messages?since=<seq> on a timer. */
class PollPanel extends Panel {
  constructor(key, every) {
    super(key);
    this.every = every;
    this.since = null; // the newest seq seen (null: not asked yet)
    this.epoch = null;
    this.busy = false;
    this.c = { requests: 0, bytes: 0, asks: 0, noes: 0 };
  }

  start() {
    void this.ask();
    setInterval(() => void this.ask(), this.every);
  }

  async ask() {
    if (this.busy) return; // the previous question is still out: no pile-up
    this.busy = true;
    try {
      await this.askOnce();
    } catch {
      this.setState("the server does not answer; asking again…");
    } finally {
      this.busy = false;
    }
  }

  async askOnce() {
    const first = this.since === null;
    const query = first ? "limit=1" : `since=${this.since}&limit=100`;
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    this.c.requests += 1;
    this.c.asks += 1;
    const res = await fetch(`/api/rooms/${encodeURIComponent(ROOM)}/messages?${query}`, { cache: "no-store", headers });
    const text = await res.text();
    let head = 17;
    for (const [name, value] of res.headers) head += name.length + value.length + 4;
    this.c.bytes += head + utf8Length(text);
    if (res.status === 404) {
      // No such room yet: no news.
      this.since = this.since ?? 0;
      this.c.noes += 1;
      this.setState("asking: no such room yet", true);
      return;
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const page = JSON.parse(text);
    const messages = Array.isArray(page.messages) ? page.messages : [];
    if (this.epoch !== null && page.epoch !== this.epoch) this.since = 0; // the room was recreated
    this.epoch = page.epoch;
    const top = messages.reduce((n, m) => Math.max(n, Number(m.seq) || 0), this.since ?? 0);
    if (first) {
      // The baseline: only what is said from now on counts, as for the other panels.
      this.since = top;
      this.c.noes += 1;
    } else {
      // Older servers ignore `since` and answer the latest page: keep the new ones only.
      const news = messages.filter((m) => m.seq > this.since).sort((a, b) => a.seq - b.seq);
      if (!news.length) this.c.noes += 1;
      for (const m of news) this.arrived(m);
      this.since = top;
    }
    this.setState(`asking every ${this.every / 1000} s`, true);
  }

  cost() {
    return this.c;
  }
}

// -- the clock offset, measured over the WebSocket (smallest round trip wins) --

const pings = new Map();

function ping(link) {
  if (!link?.isOpen) return;
  const id = `clock-${Date.now()}-${Math.random().toString(16).slice(2, 6)}`;
  pings.set(id, Date.now());
  link.send({ type: "ping", id });
}

function onPong(f) {
  const t0 = pings.get(f.id);
  if (t0 === undefined || typeof f.ts !== "number") return;
  pings.delete(f.id);
  const t1 = Date.now();
  if (t1 - t0 < bestRtt) {
    bestRtt = t1 - t0;
    clockOffset = f.ts * 1000 - (t0 + t1) / 2;
  }
}

// -- sending --

function say(ws, text) {
  const link = ws.link;
  if (!link?.isOpen || !ws.joined) {
    $("#send-note").textContent = "Not connected yet: the WebSocket client sends the messages.";
    return false;
  }
  sent += 1;
  link.send({ type: "send", room: ROOM, id: `demo-${TAG}-${sent}-${Date.now()}`, text });
  $("#send-note").textContent = `Sent ${numberFmt.format(sent)} message${sent === 1 ? "" : "s"} from this page.`;
  return true;
}

function bindControls(ws) {
  $("#send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("#send-input");
    const text = input.value.trim();
    if (!text) return;
    if (say(ws, text)) input.value = "";
  });
  const auto = $("#auto-btn");
  let timer = null;
  let n = 0;
  auto.addEventListener("click", () => {
    const on = auto.getAttribute("aria-pressed") !== "true";
    auto.setAttribute("aria-pressed", String(on));
    auto.textContent = on ? "Stop the auto-sender" : "Start the auto-sender (1 message/s)";
    clearInterval(timer);
    timer = on ? setInterval(() => say(ws, `auto message ${(n += 1)}`), AUTO_EVERY) : null;
  });
}

function renderDialogue(panels) {
  const asked = panels.poll1.cost();
  const minutes = Math.max(1 / 60, (Date.now() - panels.poll1.startedAt) / 60000);
  const wsBytes = panels.ws.cost().bytes;
  const pollBytes = asked.bytes;
  $("#dialogue-text").textContent =
    `“La la la, any news?” The 1-second poller has asked ${numberFmt.format(asked.asks)} times ` +
    `(${numberFmt.format(Math.round(asked.asks / minutes))} a minute) and heard “no” ` +
    `${numberFmt.format(asked.noes)} times. For the same ${numberFmt.format(panels.ws.messages)} messages ` +
    `the WebSocket made 1 request and received ${bytesText(wsBytes)}; the poller received ${bytesText(pollBytes)}.`;
}

function start() {
  $("#room-name").textContent = `#${ROOM}`;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const panels = {
    ws: new LinkPanel("ws", () => new WebSocketTransport(`${scheme}//${location.host}/`, PROTOCOL)),
    sse: new LinkPanel("sse", () => new SseTransport("", PROTOCOL)),
    long: new LinkPanel("long", () => new PollTransport("", PROTOCOL)),
    poll1: new PollPanel("poll1", 1000),
    poll5: new PollPanel("poll5", 5000),
  };
  const ws = panels.ws;
  ws.onjoined = () => {
    for (let i = 0; i < 3; i += 1) setTimeout(() => ping(ws.link), i * 300);
  };
  for (const key of ["ws", "sse", "long"]) panels[key].connect();
  for (const key of ["poll1", "poll5"]) panels[key].start();
  bindControls(ws);
  const render = () => {
    for (const panel of Object.values(panels)) panel.render();
    renderDialogue(panels);
  };
  render();
  setInterval(render, 250);
  setInterval(() => ping(ws.link), 30000); // keeps the offset fresh and the link alive
  globalThis.demo = { panels, room: ROOM }; // for tests and the curious
}

start();
