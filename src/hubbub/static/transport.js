// How frames travel between the page and the server. Every transport has the
// same small interface, so that a fallback (server-sent events, long polling)
// can later slot in behind it without the rest of the client changing:
//
//   const t = new WebSocketTransport(url, protocol);
//   t.onopen = () => {};             // the channel is up (no frame yet)
//   t.onframe = (frame) => {};       // one server frame: an object with a string `type`
//   t.onclose = ({ code, fatal }) => {}; // the channel went away by itself (once);
//                                    // fatal: a reason why retrying is pointless
//   t.open();                        // callbacks never run inside open()
//   t.send(frame);                   // -> true if it went out
//   t.isOpen;                        // frames can be sent now
//   t.close();                       // ours: onclose is not called for it

export class WebSocketTransport {
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.socket = null; // the WebSocket (tests dispatch events on it)
    this.closed = false;
    this.fatal = null;
    this.onopen = null;
    this.onframe = null;
    this.onclose = null;
  }

  open() {
    let ws;
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
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame && typeof frame.type === "string") this.onframe?.(frame);
    });
    ws.addEventListener("close", (ev) => this._gone(ev.code));
  }

  get isOpen() {
    return !this.closed && this.socket?.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.socket.send(JSON.stringify(frame));
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
