// One-room chat server speaking the hubbub seed protocol, on uWebSockets.js
// (a benchmark peer: see docs/benchmarks.md). uWebSockets is a C++ engine;
// `app.publish` runs the whole fan-out in C++, so this peer is the floor
// of what user space adds to a steady-rate delivery, standing in for Swoole
// (a C engine, not installable from the registries this project reaches).
//
//   node server.js PORT
//
// On connect: "Hello, welcome\n". A text message T from connection fd goes
// to every connected client (the sender too) as "from <fd>: T"; the sender
// also gets "server: T" (after the broadcast, as the seed). Binary messages
// are relayed the same way as binary. uWebSockets checks that text is valid
// UTF-8 (it drops a connection that sends invalid UTF-8, without the Close
// frame 1007 the other servers send) and answers Close frames itself.
'use strict';

const uWS = require('@trufflesuite/uws-js-unofficial');

const port = Number(process.argv[2] || 9502);
const GREETING = 'Hello, welcome\n';
const SERVER = Buffer.from('server: ');
const ROOM = 'room';

let nextFd = 1;
const app = uWS.App();

app.ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 1 << 20,
  // Like the other peers: a slow client is buffered for, not dropped or skipped.
  maxBackpressure: 64 << 20,
  closeOnBackpressureLimit: false,
  idleTimeout: 0,
  open: (ws) => {
    ws.prefix = Buffer.from(`from ${nextFd++}: `);
    ws.subscribe(ROOM);
    ws.send(GREETING, false);
  },
  message: (ws, message, isBinary) => {
    // `message` is only valid during this call: copy it once.
    const data = Buffer.from(message);
    app.publish(ROOM, Buffer.concat([ws.prefix, data]), isBinary);
    ws.send(Buffer.concat([SERVER, data]), isBinary);
  },
});

let listenSocket = null;
app.listen('127.0.0.1', port, (token) => {
  if (!token) {
    process.stderr.write(`uws peer could not listen on 127.0.0.1:${port}\n`);
    process.exit(1);
  }
  listenSocket = token;
  process.stderr.write(`uws peer listening on 127.0.0.1:${port}\n`);
});

function stop() {
  if (listenSocket) uWS.us_listen_socket_close(listenSocket);
  process.exit(0);
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
