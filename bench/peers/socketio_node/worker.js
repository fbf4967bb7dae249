// One generator process for `hubbub bench --protocol socket.io`: many
// socket.io-client clients (WebSocket transport only) in one Node process.
//
//   node worker.js          (started and driven by hubbub.bench.nodegen)
//
// The port of src/hubbub/bench/worker.py's fan-out / latency commands, with
// the same arguments, the same replies and the same checks, as JSON lines:
// one command per line on stdin, {"cmd": "connect", "args": {...}}, one reply
// per command on stdout. Between replies, {"progress": N} lines (at most
// every 100 ms) carry what worker.py puts in its progress slot: clients
// connected during `connect`, deliveries received during `run`.
//
// The socket.io side of the chat protocol (bench/peers/socketio_node/server.js):
//
//   join {room, nick} + ack       -> ack {room, members}: the client's greeting
//   send {room, id, text} + ack   -> every member gets "message" {..., text};
//                                    the sender's ack {id, seq} plays the seed's
//                                    "server: ..." echo (window mode sends the
//                                    next message on it; acks must come back
//                                    in order: echo_errors)
//
// Message bodies are those of src/hubbub/bench/checker.py: `size` bytes that
// end in "<send time ns, 20 digits>|<sender, 4 digits>|<seq, 10 digits>".
// Send times come from process.hrtime.bigint(), CLOCK_MONOTONIC on Linux: the
// clock of Python's time.monotonic_ns(), which the parent uses for t_start.
// Times are plain Numbers (exact up to 2^53 ns, 104 days of uptime; beyond
// that off by a few ns); latencies are computed exactly, from seconds and
// nanoseconds apart.
'use strict';

const readline = require('readline');
const { io, Manager } = require('socket.io-client');

// socket.io-client, engine.io-client and socket.io-parser all dispatch
// through @socket.io/component-emitter, whose emit() builds the key
// '$' + event and copies the listener array on every call: about 8 emits per
// received message, the largest item of the generator's profile. The same
// emit, minus those two costs (same listeners, same order, same `this` and
// arguments; the copy is only skipped when a single listener is called).
function speedUpEmitter() {
  const proto = Object.getPrototypeOf(Manager.prototype);
  if (typeof proto.emit !== 'function' || proto.emitReserved !== proto.emit) return;
  const keys = new Map();
  function emit(event, ...args) {
    const all = this._callbacks || (this._callbacks = {});
    let key = keys.get(event);
    if (key === undefined) keys.set(event, (key = '$' + event));
    const callbacks = all[key];
    if (callbacks === undefined) return this;
    if (callbacks.length === 1) {
      callbacks[0].apply(this, args);
    } else {
      const copy = callbacks.slice(0);
      for (let i = 0; i < copy.length; i++) copy[i].apply(this, args);
    }
    return this;
  }
  proto.emit = emit;
  proto.emitReserved = emit;
}
speedUpEmitter();

const FILLER = 'hubbub bench payload ';
const TAIL = 36;
const MIN_SIZE = TAIL + 4;
const MAX_ERRORS = 8;
const PROGRESS_MS = 100;
const ZEROS = '00000000000000000000';

const hrtime = process.hrtime;
const hrbig = process.hrtime.bigint;

function nowNs() {
  return Number(hrbig());
}

function filler(size) {
  if (size < MIN_SIZE) {
    throw new RangeError(`message size must be at least ${MIN_SIZE} bytes, got ${size}`);
  }
  const n = size - TAIL;
  return FILLER.repeat(Math.ceil(n / FILLER.length) + 1).slice(0, n);
}

function pad(s, width) {
  return s.length >= width ? s : ZEROS.slice(0, width - s.length) + s;
}

// The decimal number in s[a:b], or -1 if anything there is not a digit.
function digits(s, a, b) {
  let v = 0;
  for (let i = a; i < b; i++) {
    const d = s.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function snippet(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch {
    text = String(value);
  }
  return String(text).slice(0, 60);
}

// State shared by all clients of the worker.
class Shared {
  constructor() {
    this.greeted = 0;
    this.greetTarget = 0;
    this.onGreeted = null;
    // Deliveries received by all clients (the sum of their counts).
    this.total = 0;
    // Latencies (ns) of deliveries sent at or after latFrom; null: not recorded.
    this.lat = null;
    this.latN = 0;
    this.latFrom = 0;
    // Connections that went away while they were supposed to be open.
    this.lost = 0;
    this.errors = [];
  }

  error(text) {
    if (this.errors.length < MAX_ERRORS && !this.errors.includes(text)) this.errors.push(text);
  }

  record(ns) {
    let lat = this.lat;
    if (this.latN === lat.length) {
      const bigger = new Float64Array(lat.length * 2);
      bigger.set(lat);
      this.lat = lat = bigger;
    }
    lat[this.latN++] = ns;
  }
}

// The per-sender ordering check of checker.SeqChecker.
class SeqChecker {
  constructor(senders) {
    // Highest sequence number seen per sender (0: none yet).
    this.last = new Float64Array(senders);
    // Per sender, numbers skipped by a gap and not seen since.
    this.missing = null;
    this.duplicated = 0;
    this.reordered = 0;
  }

  // Anything but the next expected number (the slow path).
  irregular(sender, seq) {
    const top = this.last[sender];
    if (seq > top + 1) {
      if (this.missing === null) this.missing = new Map();
      let set = this.missing.get(sender);
      if (set === undefined) this.missing.set(sender, (set = new Set()));
      for (let q = top + 1; q < seq; q++) set.add(q);
      this.last[sender] = seq;
      return;
    }
    const waiting = this.missing === null ? undefined : this.missing.get(sender);
    if (waiting !== undefined && waiting.has(seq)) {
      waiting.delete(seq);
      this.reordered++;
    } else {
      this.duplicated++;
    }
  }

  complete(sent) {
    const last = this.last;
    for (let s = 0; s < sent.length; s++) if (last[s] < sent[s]) return false;
    return true;
  }

  gaps() {
    let n = 0;
    if (this.missing !== null) for (const set of this.missing.values()) n += set.size;
    return n;
  }

  lost(sent) {
    let tail = 0;
    for (let s = 0; s < sent.length; s++) tail += Math.max(0, sent[s] - this.last[s]);
    return this.gaps() + tail;
  }
}

// The sending side of one client: a window of messages in flight, or a fixed rate.
class Sender {
  constructor(sid, head, room) {
    this.sid = sid;
    this.head = head;
    this.room = room;
    this.mid = '|' + pad(String(sid), 4) + '|';
    this.seq = 0;
    this.inflight = 0;
    this.echoes = 0;
    this.echoLast = 0;
    this.echoBad = 0;
    this.running = false;
    this.windowed = false;
    this.socket = null;
    this.onAck = (ack) => this.echo(ack);
  }

  send() {
    const seq = ++this.seq;
    this.inflight++;
    const id = String(seq);
    const text = this.head + pad(hrbig().toString(), 20) + this.mid + pad(id, 10);
    this.socket.emit('send', { room: this.room, id, text }, this.onAck);
  }

  // The ack of one `send`: {id, seq}; `id` is our sequence number as text.
  echo(ack) {
    this.echoes++;
    this.inflight--;
    const seq = ack !== null && typeof ack === 'object' && typeof ack.id === 'string' ? +ack.id : -1;
    if (seq === this.echoLast + 1) this.echoLast = seq;
    else this.echoBad++;
    if (this.running && this.windowed) this.send();
  }
}

// One receiving client (and, for a few, a sender too).
class Client {
  constructor(shared, nsenders, sender, room) {
    this.shared = shared;
    this.nsenders = nsenders;
    this.room = room;
    this.chk = new SeqChecker(nsenders);
    this.sender = sender;
    this.count = 0;
    this.malformed = 0;
    this.greeted = false;
    this.closing = false;
    this.dropped = false;
    this.socket = null;
    this.onMessage = (msg) => this.message(msg);
    this.onJoin = (ack) => this.joined(ack);
    this.onDisconnect = (reason) => this.disconnected(reason);
  }

  // One "message" event: a delivery.
  message(msg) {
    let t;
    if (
      msg === null ||
      typeof msg !== 'object' ||
      typeof (t = msg.text) !== 'string' ||
      msg.room !== this.room
    ) {
      this.bad(msg);
      return;
    }
    const n = t.length;
    if (n < TAIL || t.charCodeAt(n - 16) !== 124 || t.charCodeAt(n - 11) !== 124) {
      this.bad(msg);
      return;
    }
    const s = digits(t, n - 15, n - 11);
    const q = digits(t, n - 10, n);
    if (s < 0 || s >= this.nsenders || q < 0) {
      this.bad(msg);
      return;
    }
    const chk = this.chk;
    const last = chk.last;
    if (q === last[s] + 1) last[s] = q;
    else chk.irregular(s, q);
    this.count++;
    const sh = this.shared;
    sh.total++;
    if (sh.lat !== null) {
      const sec = digits(t, n - 36, n - 25);
      const ns = digits(t, n - 25, n - 16);
      if (sec < 0 || ns < 0) this.bad(msg);
      else if (sec * 1e9 + ns >= sh.latFrom) {
        const now = hrtime();
        sh.record((now[0] - sec) * 1e9 + (now[1] - ns));
      }
    }
  }

  bad(msg) {
    this.malformed++;
    this.shared.error(`unexpected message: ${snippet(msg)}`);
  }

  // The ack of `join`: the client's greeting.
  joined(ack) {
    if (
      !this.greeted &&
      ack !== null &&
      typeof ack === 'object' &&
      ack.room === this.room &&
      typeof ack.members === 'number'
    ) {
      this.greeted = true;
      const sh = this.shared;
      sh.greeted++;
      if (sh.greeted >= sh.greetTarget && sh.onGreeted !== null) sh.onGreeted();
      return;
    }
    this.malformed++;
    this.shared.error(`unexpected join ack: ${snippet(ack)}`);
  }

  disconnected(reason) {
    if (!this.closing) {
      this.dropped = true;
      this.shared.lost++;
      this.shared.error(`a connection went away: ${reason}`);
    }
    if (this.sender !== null) this.sender.running = false;
  }
}

class Worker {
  constructor() {
    this.shared = new Shared();
    this.clients = [];
    this.senders = [];
    this.progress = 0;
    this.reported = 0;
    setInterval(() => this.flushProgress(), PROGRESS_MS).unref();
  }

  report(value) {
    this.progress = value;
  }

  flushProgress() {
    if (this.progress !== this.reported) {
      this.reported = this.progress;
      write({ progress: this.progress });
    }
  }

  // -- fan-out / latency ----------------------------------------------------

  // Open `count` clients; client i sends as sender `senders[i]` and joins
  // `room` as nick "c<first + i>".
  async connect({
    url,
    count,
    senders,
    nsenders,
    size = 100,
    concurrency = 128,
    wait_s = 30.0,
    protocol = 'socket.io',
    room = 'bench',
    first = 0,
  }) {
    if (protocol !== 'socket.io') throw new Error(`this worker speaks socket.io, not ${protocol}`);
    const senderOf = new Map(Object.entries(senders || {}).map(([k, v]) => [Number(k), v]));
    const head = senderOf.size ? filler(size) : '';
    const sh = this.shared;
    sh.greetTarget = sh.greeted + count;
    const greetedAll = new Promise((resolve) => {
      sh.onGreeted = resolve;
    });
    if (sh.greeted >= sh.greetTarget) sh.onGreeted();
    let failed = 0;
    const base = this.clients.length;
    const t0 = performance.now();

    const one = (i) =>
      new Promise((resolve) => {
        let sender = null;
        if (senderOf.has(i)) {
          sender = new Sender(senderOf.get(i), head, room);
          this.senders.push(sender);
        }
        const client = new Client(sh, nsenders, sender, room);
        const socket = io(url, {
          transports: ['websocket'],
          forceNew: true,
          reconnection: false,
          perMessageDeflate: false,
          timeout: wait_s * 1000,
        });
        client.socket = socket;
        if (sender !== null) sender.socket = socket;
        let settled = false;
        socket.on('message', client.onMessage);
        socket.on('disconnect', client.onDisconnect);
        socket.once('connect', () => {
          if (settled) return;
          settled = true;
          this.clients.push(client);
          this.report(this.clients.length - base);
          socket.emit('join', { room, nick: `c${first + i}` }, client.onJoin);
          resolve();
        });
        socket.once('connect_error', (err) => {
          if (settled) return;
          settled = true;
          failed++;
          sh.error(`connect failed: ${err && err.message}`);
          client.closing = true;
          socket.close();
          if (sender !== null) this.senders.splice(this.senders.indexOf(sender), 1);
          resolve();
        });
      });

    let next = 0;
    const lane = async () => {
      while (next < count) await one(next++);
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, count)) }, lane));
    const connected = this.clients.length - base;
    sh.greetTarget -= failed;
    if (sh.greeted < sh.greetTarget) {
      let timer;
      const timeout = new Promise((resolve) => {
        timer = setTimeout(() => resolve(false), wait_s * 1000);
      });
      const ok = await Promise.race([greetedAll.then(() => true), timeout]);
      clearTimeout(timer);
      if (!ok) sh.error('not every client got the ack of its join');
    }
    sh.onGreeted = null;
    let greeted = 0;
    for (let k = base; k < this.clients.length; k++) if (this.clients[k].greeted) greeted++;
    return {
      connected,
      failed,
      greeted,
      seconds: (performance.now() - t0) / 1000,
      errors: [...sh.errors],
    };
  }

  // Send from t_start (monotonic ns) for warmup + duration seconds.
  //
  // window > 0: each sender keeps `window` messages in flight (a new one on
  // each ack). Otherwise each sender sends one message every `interval`
  // seconds, starting offsets[sid] after t_start. Delivery counters are
  // sampled every `dt` seconds.
  async run({
    t_start,
    warmup,
    duration,
    dt,
    window = 0,
    interval = 0.0,
    offsets = null,
    latency = false,
    drain = 10.0,
  }) {
    const sh = this.shared;
    const t0 = t_start + Math.trunc(warmup * 1e9);
    const tEnd = t0 + Math.trunc(duration * 1e9);
    if (latency) {
      sh.lat = new Float64Array(1 << 16);
      sh.latN = 0;
      sh.latFrom = t0;
    }
    const step = Math.trunc(dt * 1e9);
    const timeSet = new Set([t0, tEnd]);
    for (let t = t_start; t < tEnd; t += step) timeSet.add(t);
    const times = [...timeSet].sort((a, b) => a - b);
    const samples = [];
    const senders = this.senders;
    const offsetOf = new Map(Object.entries(offsets || {}).map(([k, v]) => [Number(k), v]));
    const intervalNs = Math.trunc(interval * 1e9);
    let lagMax = 0;
    let finish;
    const finished = new Promise((resolve) => {
      finish = resolve;
    });

    const sample = (k) => {
      samples.push([nowNs(), sh.total]);
      this.report(sh.total);
      if (k + 1 < times.length) {
        at(times[k + 1], () => sample(k + 1));
      } else {
        for (const s of senders) s.running = false;
        finish();
      }
    };

    const tick = (sender, k) => {
      if (!sender.running) return;
      const due = t_start + Math.trunc((offsetOf.get(sender.sid) + k * interval) * 1e9);
      if (due >= tEnd) return;
      lagMax = Math.max(lagMax, nowNs() - due);
      sender.send();
      at(due + intervalNs, () => tick(sender, k + 1));
    };

    const start = () => {
      for (const s of senders) {
        s.running = true;
        if (window > 0) {
          s.windowed = true;
          for (let i = 0; i < window; i++) s.send();
        }
      }
      if (window <= 0) for (const s of senders) tick(s, 0);
    };

    at(t_start, start);
    at(times[0], () => sample(0));
    await finished;
    // Let every sender's last messages come back (their acks).
    const deadline = performance.now() + drain * 1000;
    while (senders.some((s) => s.inflight > 0 && s.socket.connected)) {
      if (performance.now() > deadline) {
        sh.error('some acks of send never came back');
        break;
      }
      await sleep(10);
    }
    const sent = {};
    for (const s of senders) sent[s.sid] = s.seq;
    return { sent, samples, send_lag_max_ns: lagMax };
  }

  // Wait until every receiver has the last message of every sender; report.
  //
  // Gives up after wait_s, or once nothing has arrived for quiet_s (what is
  // still missing then is lost, not late).
  async finish({ sent, wait_s = 10.0, quiet_s = 1.0 }) {
    let now = performance.now();
    const deadline = now + wait_s * 1000;
    const sh = this.shared;
    let seen = -1;
    let seenAt = now;
    let pending;
    for (;;) {
      pending = this.clients.filter((c) => !c.dropped && !c.chk.complete(sent));
      now = performance.now();
      if (pending.length === 0 || now > deadline) break;
      if (sh.total !== seen) {
        seen = sh.total;
        seenAt = now;
      } else if (now - seenAt > quiet_s * 1000) {
        break;
      }
      await sleep(20);
    }
    let expected = 0;
    for (const n of sent) expected += n;
    let latencies = '';
    if (sh.lat !== null) {
      const out = new BigInt64Array(sh.latN);
      for (let i = 0; i < sh.latN; i++) out[i] = BigInt(sh.lat[i]);
      latencies = Buffer.from(out.buffer).toString('base64');
      sh.lat = null;
    }
    const clients = this.clients;
    const sum = (fn) => clients.reduce((a, c) => a + fn(c), 0);
    let echoErrors = 0;
    for (const s of this.senders) echoErrors += s.echoBad + (s.seq - s.echoes);
    return {
      receivers: clients.length,
      deliveries: sum((c) => c.count),
      expected: expected * clients.length,
      lost: sum((c) => c.chk.lost(sent)),
      duplicated: sum((c) => c.chk.duplicated),
      reordered: sum((c) => c.chk.reordered),
      malformed: sum((c) => c.malformed),
      disconnected: sum((c) => (c.dropped ? 1 : 0)),
      echo_errors: echoErrors,
      incomplete: pending.length,
      // Base64 of little-endian int64 nanoseconds (hubbub.bench.nodegen decodes it).
      latencies,
      errors: [...sh.errors],
    };
  }

  // Disconnect every client, then wait (up to wait_s) for their TCP connections to close.
  async close({ wait_s = 5.0 } = {}) {
    const clients = this.clients;
    this.clients = [];
    this.senders = [];
    const sockets = [];
    for (const c of clients) {
      c.closing = true;
      // The `ws` WebSocket under engine.io-client (internal: only used to wait for the close).
      const engine = c.socket.io.engine;
      const ws = engine && engine.transport && engine.transport.ws;
      c.socket.disconnect();
      if (ws && typeof ws.readyState === 'number') sockets.push(ws);
    }
    const deadline = performance.now() + wait_s * 1000;
    while (sockets.some((ws) => ws.readyState !== 3) && performance.now() < deadline) {
      await sleep(10);
    }
    for (const ws of sockets) if (ws.readyState !== 3) ws.terminate();
    this.shared = new Shared();
    this.report(0);
    return { closed: clients.length };
  }
}

// Call fn at monotonic time `when` (ns), never before; like loop.call_later,
// never synchronously. Node timers have 1 ms resolution: up to ~1 ms late.
function at(when, fn) {
  const wait = () => {
    const ms = (when - nowNs()) / 1e6;
    if (ms <= 0) fn();
    else setTimeout(wait, Math.ceil(ms));
  };
  const ms = (when - nowNs()) / 1e6;
  if (ms <= 0) setImmediate(fn);
  else setTimeout(wait, Math.ceil(ms));
}

function write(obj) {
  // stdout is a pipe: synchronous on Linux, so replies go out in order and whole.
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function main() {
  const worker = new Worker();
  const commands = { connect: true, run: true, finish: true, close: true };
  let chain = Promise.resolve();
  const handle = async (line) => {
    if (!line.trim()) return;
    let cmd = '?';
    let result;
    try {
      const msg = JSON.parse(line);
      cmd = msg.cmd;
      if (cmd === 'exit') {
        worker.flushProgress();
        write({ ok: true });
        process.exit(0);
      }
      if (!Object.hasOwn(commands, cmd)) throw new Error(`unknown command ${JSON.stringify(cmd)}`);
      result = await worker[cmd](msg.args || {});
    } catch (err) {
      result = { error: `${cmd}: ${(err && err.name) || 'Error'}: ${err && err.message}` };
    }
    worker.flushProgress();
    write(result);
  };
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on('line', (line) => {
    chain = chain.then(() => handle(line));
  });
  // The parent went away: nothing more to do.
  rl.on('close', () => {
    chain.then(() => process.exit(0));
  });
}

main();
