// One-room chat server speaking the hubbub seed protocol, on the npm `ws`
// package (a benchmark peer: see docs/benchmarks.md).
//
//   node server.js PORT
//
// On connect: "Hello, welcome\n". A text message T from connection fd goes
// to every connected client (the sender too) as "from <fd>: T"; the sender
// also gets "server: T". Binary messages are relayed the same way as binary.
// `bufferutil` (installed next to ws) does the masking work in C.
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 9502);
const GREETING = 'Hello, welcome\n';
const SERVER = Buffer.from('server: ');

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: false,
  clientTracking: true,
});

let nextFd = 1;

wss.on('connection', (ws) => {
  const fd = nextFd++;
  const prefix = Buffer.from(`from ${fd}: `);
  // An 'error' listener is required: without it, an invalid frame (for
  // example invalid UTF-8 in a text message, closed with 1007) would throw.
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    // `data` is a Buffer; ws has already checked that text is valid UTF-8.
    const out = Buffer.concat([prefix, data]);
    const opts = { binary: isBinary };
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(out, opts);
    }
    ws.send(Buffer.concat([SERVER, data]), opts);
  });
  ws.send(GREETING);
});

wss.on('listening', () => {
  process.stderr.write(`node ws peer listening on 127.0.0.1:${port}\n`);
});

function stop() {
  wss.close();
  for (const client of wss.clients) client.terminate();
  process.exit(0);
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
