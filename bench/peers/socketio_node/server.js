// A socket.io chat server (a benchmark peer for `hubbub bench --protocol
// socket.io`; see docs/benchmarks.md). bench/peers/python_socketio_peer.py is
// the same server on python-socketio.
//
//   node server.js PORT
//
// Listens on 127.0.0.1 only, permessage-deflate off. Two events, each with an
// acknowledgement callback:
//
//   join {room, nick}      -> joins the room; ack {room, members}
//   send {room, id, text}  -> every member of the room, the sender included,
//                             gets "message" {room, seq, id, nick, text, ts,
//                             client_id}; then ack {id, seq}
//
// seq counts the messages of one room from 1; id is unique for the server's
// lifetime; client_id is the id the client sent. `bufferutil` (installed
// next to ws) does the WebSocket masking work in C.
'use strict';

const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 9502);

const httpServer = http.createServer();
const io = new Server(httpServer, {
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  // No CORS headers: the benchmark's clients are not browsers.
});

const counters = new Map(); // room -> last seq
let nextId = 0;

io.on('connection', (socket) => {
  let nick = '';
  socket.on('join', (data, ack) => {
    const room = String(data.room);
    nick = String(data.nick);
    socket.join(room);
    if (typeof ack === 'function') {
      ack({ room, members: io.sockets.adapter.rooms.get(room).size });
    }
  });
  socket.on('send', (data, ack) => {
    const room = data.room;
    const seq = (counters.get(room) || 0) + 1;
    counters.set(room, seq);
    const id = String(++nextId);
    io.to(room).emit('message', {
      room,
      seq,
      id,
      nick,
      text: data.text,
      ts: Date.now() / 1000,
      client_id: data.id,
    });
    if (typeof ack === 'function') ack({ id: data.id, seq });
  });
});

httpServer.listen(port, '127.0.0.1', 4096, () => {
  process.stderr.write(`node socket.io peer listening on 127.0.0.1:${port}\n`);
});

function stop() {
  io.close();
  process.exit(0);
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
