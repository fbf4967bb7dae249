"use strict";
// The seed's socket.html: one WebSocket to the page's own host, every
// message the server pushes appended as text (never as HTML).
const log = document.getElementById("log");
const state = document.getElementById("state");
const input = document.getElementById("text");
const go = document.getElementById("go");
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
let ws;

function show(text) {
  const li = document.createElement("li");
  li.textContent = text.replace(/\n$/, "");
  if (text.startsWith("server: ")) li.className = "server";
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.appendChild(li);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function connect() {
  ws = new WebSocket(scheme + location.host + "/");
  ws.onopen = () => { state.textContent = "connected"; state.className = "open"; go.disabled = false; };
  ws.onmessage = (ev) => show(typeof ev.data === "string" ? ev.data : "[binary message]");
  ws.onclose = () => {
    state.textContent = "offline, retrying…"; state.className = "closed"; go.disabled = true;
    setTimeout(connect, 1000 + Math.random() * 1000);
  };
}

document.getElementById("send").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (input.value && ws.readyState === WebSocket.OPEN) { ws.send(input.value); input.value = ""; }
});
connect();
