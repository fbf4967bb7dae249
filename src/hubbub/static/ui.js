import { $, uuid, same } from "./util.js";
import { limit, nickOk, roomOk, ROOMS_REFRESH, KEYS, store, S } from "./state.js";
import { wsSend, connect, retryNow, heartbeat, setStatus, join } from "./connection.js";
import { Room, maybeLoadOlder, anyJoined, openRoom, leaveCurrent } from "./rooms.js";
import { sendText, startTyping, stopTyping } from "./outbox.js";
import { renderStatus, renderPendingStates, relabelDays, scrollToBottom, announce, renderRoomList, renderDmList, renderTitle, renderRoomHeader, renderMembers, renderTyping, renderMe, viewKey } from "./render.js";

export function show(view) {
  const prev = S.current;
  if (prev && prev !== view) {
    prev.savedTop = prev.el.scrollTop;
    prev.el.hidden = true;
    prev.draft = $("input").value;
    $("input").value = view.draft;
    autosize();
    renderCounter();
    if (S.typing.room) stopTyping();
  }
  S.current = view;
  view.el.hidden = false;
  view.unread = 0;
  // A "new direct message… Open" toast is done once its conversation is open.
  for (const el of $("toasts").querySelectorAll(".toast[data-view]")) {
    if (el.dataset.view === viewKey(view)) el.remove();
  }
  if (view.stick) scrollToBottom(view);
  else view.el.scrollTop = view.savedTop;
  store.set(KEYS.current, view instanceof Room ? `#${view.name}` : `@${view.peer}`);
  $("jump").hidden = true;
  renderRoomHeader();
  renderMembers();
  renderTyping();
  renderRoomList();
  renderDmList();
  renderTitle();
  closeDrawers();
  if (view instanceof Room) maybeLoadOlder(view);
}

/**
 * Open the nickname dialog. ``required``: the page has no accepted nickname to
 * fall back on (a first visit, or the chosen one is taken everywhere), so the
 * dialog cannot be cancelled and nothing is sent until a join succeeds.
 */
export function askNick(message = null, required = !S.wantNick) {
  const dialog = $("nick-dialog");
  const first = !S.wantNick;
  $("nick-title").textContent = first ? "Welcome to hubbub" : required ? "Choose another nickname" : "Your nickname";
  $("nick-sub").textContent = first
    ? "Choose a nickname to start chatting. It is remembered on this device."
    : "Everyone in your rooms sees this name.";
  $("nick-ok").textContent = required ? "Start chatting" : "Save";
  $("nick-cancel").hidden = required;
  dialog.dataset.required = required ? "true" : "false";
  $("nick-input").value = S.wantNick || "";
  showNickError(message || "");
  if (!dialog.open) dialog.showModal();
  $("nick-input").focus();
  $("nick-input").select();
}

/** Say what is wrong with the nickname (in the dialog, which must be open). */
export function showNickError(text) {
  $("nick-error").textContent = text;
  $("nick-input").setAttribute("aria-invalid", text ? "true" : "false");
}

/** Close the dialog; after a required choice, the user goes on in the message box. */
export function closeNickDialog() {
  const dialog = $("nick-dialog");
  const required = dialog.dataset.required === "true";
  dialog.dataset.required = "false";
  if (dialog.open) dialog.close();
  if (required) $("input").focus();
}

export function submitNick(ev) {
  ev.preventDefault();
  const nick = $("nick-input").value.trim();
  if (!nickOk(nick)) {
    showNickError(nick ? S.rules.nick : "Please enter a nickname.");
    return;
  }
  const firstTime = !S.wantNick;
  S.wantNick = nick;
  store.set(KEYS.nick, nick);
  renderMe();
  for (const room of S.rooms.values()) {
    room.nickWaitSince = 0;
    if (room.joined === "no") room.problem = null;
  }
  if (!S.welcomed) {
    closeNickDialog();
    if (firstTime || !S.link) connect();
    renderPendingStates();
    return;
  }
  if (anyJoined() && !same(nick, S.me)) {
    wsSend({ type: "nick", nick }); // the answer ("nick" or an error) closes the dialog
  } else {
    closeNickDialog();
  }
  for (const room of S.rooms.values()) {
    if (room.joined === "no") join(room);
  }
  renderRoomHeader();
  renderPendingStates();
}

export function closeDrawers() {
  document.body.classList.remove("drawer-open", "members-open");
  $("scrim").hidden = true;
  $("menu-btn").setAttribute("aria-expanded", "false");
  $("members-btn").setAttribute("aria-expanded", String(!document.body.classList.contains("members-hidden") && wide()));
}

export const wide = () => matchMedia("(min-width: 1100px)").matches;

export const finePointer = () => matchMedia("(pointer: fine)").matches;

export function toggleSidebar() {
  const open = !document.body.classList.contains("drawer-open");
  closeDrawers();
  if (open) {
    document.body.classList.add("drawer-open");
    $("scrim").hidden = false;
    $("menu-btn").setAttribute("aria-expanded", "true");
    wsSend({ type: "rooms" });
    $("sidebar").querySelector("button, input")?.focus();
  }
}

export function toggleMembers() {
  if (wide()) {
    const hidden = document.body.classList.toggle("members-hidden");
    $("members-btn").setAttribute("aria-expanded", String(!hidden));
    return;
  }
  const open = !document.body.classList.contains("members-open");
  closeDrawers();
  if (open) {
    document.body.classList.add("members-open");
    $("scrim").hidden = false;
    $("members-btn").setAttribute("aria-expanded", "true");
    $("members").querySelector("button")?.focus();
  }
}

export function focusComposer() {
  if (finePointer()) $("input").focus();
}

/** Characters as the server counts them (code points, not UTF-16 units). */
export const textLength = (text) => {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
};

export function tooLong(text) {
  if (textLength(text) > S.limits.max_text) return true;
  // The whole frame must fit in the server's largest message (UTF-8 bytes).
  const frame = JSON.stringify({ type: "send", room: "x".repeat(S.limits.max_room), id: uuid(), text });
  return new TextEncoder().encode(frame).length > S.limits.max_message_size;
}

export const numberFmt = new Intl.NumberFormat();

/** The length counter under the message box: shown near the limit, an error past it. */
export function renderCounter(refused = false) {
  const counter = $("char-count");
  const text = $("input").value.replace(/\s+$/u, "");
  const max = S.limits.max_text;
  const length = textLength(text);
  const over = length > max || (length > max * 0.5 && tooLong(text));
  const near = length >= max * 0.9;
  counter.hidden = !(over || near);
  counter.classList.toggle("over", over);
  $("input").setAttribute("aria-invalid", over ? "true" : "false");
  if (counter.hidden) {
    counter.textContent = "";
    return;
  }
  let note = `${numberFmt.format(length)} / ${numberFmt.format(max)} characters`;
  if (over) {
    const extra = length - max;
    note += extra > 0
      ? ` · ${numberFmt.format(extra)} too many: shorten the message to send it`
      : " · too large to send: shorten the message";
    if (refused) note = `Not sent. ${note}`;
  }
  counter.textContent = note;
  if (refused) announce(note);
}

export function autosize() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, Math.max(120, innerHeight * 0.35))}px`;
}

export function bindUi() {
  const input = $("input");
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  input.addEventListener("input", () => {
    autosize();
    renderCounter();
    if (input.value) startTyping();
    else if (S.typing.room) stopTyping();
  });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.replace(/\s+$/u, "");
    if (!text.trim()) return;
    if (tooLong(text)) {
      // Refused here, kept in the box: nothing is cut off behind the user's back.
      renderCounter(true);
      input.focus();
      return;
    }
    sendText(text);
    input.value = "";
    autosize();
    renderCounter();
    input.focus();
  });
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const field = $("join-input");
    const name = field.value.trim().replace(/^#/, "");
    if (!roomOk(name)) {
      field.setCustomValidity(S.rules.room);
      field.reportValidity();
      return;
    }
    field.setCustomValidity("");
    field.value = "";
    openRoom(name);
    focusComposer();
  });
  $("join-input").addEventListener("input", () => $("join-input").setCustomValidity(""));
  $("menu-btn").addEventListener("click", toggleSidebar);
  $("sidebar-close").addEventListener("click", closeDrawers);
  $("members-btn").addEventListener("click", toggleMembers);
  $("members-close").addEventListener("click", closeDrawers);
  $("scrim").addEventListener("click", closeDrawers);
  $("leave-btn").addEventListener("click", leaveCurrent);
  $("retry-btn").addEventListener("click", retryNow);
  $("nick-edit").addEventListener("click", () => askNick());
  $("nick-form").addEventListener("submit", submitNick);
  $("nick-cancel").addEventListener("click", () => $("nick-dialog").close());
  $("nick-dialog").addEventListener("cancel", (ev) => {
    // A first run, or a nickname taken everywhere: there is no name to go on with.
    if ($("nick-dialog").dataset.required === "true") ev.preventDefault();
  });
  $("jump").addEventListener("click", () => {
    if (!S.current) return;
    S.current.stick = true;
    scrollToBottom(S.current);
    $("jump").hidden = true;
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && document.body.matches(".drawer-open, .members-open")) {
      closeDrawers();
      $("menu-btn").focus();
    }
  });
  addEventListener("online", () => {
    if (!S.link) {
      S.attempt = 0;
      retryNow();
    }
  });
  addEventListener("offline", () => {
    if (!S.link) setStatus("offline");
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    S.hiddenNew = 0;
    renderTitle();
    if (!S.link && S.status !== "failed" && S.retryAt - Date.now() > 2000) retryNow();
  });
  new ResizeObserver(() => {
    const view = S.current;
    if (view?.stick) scrollToBottom(view);
  }).observe($("views"));
  setInterval(() => {
    if (S.status === "reconnecting") renderStatus();
  }, 1000);
  setInterval(heartbeat, 2500);
  setInterval(() => wsSend({ type: "rooms" }), ROOMS_REFRESH);
  setInterval(relabelDays, 60000);
}

/** The name fields take the server's lengths (welcome's limits). */
export function applyLimits() {
  $("nick-input").maxLength = limit("max_nick");
  $("join-input").maxLength = limit("max_room");
}
