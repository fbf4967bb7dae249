import { $, h, icon, avatar, renderText, same, timeFmt, fullFmt, dayKey, dayLabel } from "./util.js";
import { GROUP_WINDOW, KEEP_MAX, KEEP_AFTER_PRUNE, MEMBERS_KEEP, S } from "./state.js";
import { join } from "./connection.js";
import { KIND_NAMES } from "./transport.js";
import { Room, Dm, loadOlder, maybeLoadOlder, ensureDm, openRoom, askMembers, showMoreMembers } from "./rooms.js";
import { show, focusComposer } from "./ui.js";

export function renderStatus() {
  const conn = $("conn");
  const secs = Math.max(1, Math.ceil((S.retryAt - Date.now()) / 1000));
  const text = {
    connected: "Connected",
    connecting: "Connecting…",
    reconnecting: `Reconnecting in ${secs}s`,
    offline: "Offline",
    failed: S.signIn ? "Sign-in needed" : "Not connected",
  }[S.status];
  conn.dataset.state = S.status;
  conn.dataset.transport = S.transport || "";
  $("conn-text").textContent = text;
  // Which transport carries the chat: WebSocket, or a fallback when the network blocks it.
  const via = S.status === "connected" && S.transport ? `via ${KIND_NAMES[S.transport]}` : "";
  $("conn-via").textContent = via;
  $("conn-via").hidden = !via;
  $("me-state").textContent = S.status === "connected" ? `Online${S.transport === "websocket" ? "" : ` (${via})`}` : text;
  document.body.dataset.conn = S.status;
  const banner = $("banner");
  const queued = [...S.pending.values()].filter((p) => p.state !== "failed").length;
  let message = null;
  if (S.status === "failed") message = S.fatal || "Not connected.";
  else if (S.refreshing) message = "Signing in again…";
  else if (S.status === "offline") message = "You are offline. We'll reconnect as soon as the network is back.";
  else if (S.status === "reconnecting") message = `Connection lost. Reconnecting in ${secs}s…`;
  else if (S.status === "connecting" && S.attempt > 0) message = "Reconnecting…";
  if (message && queued) {
    message += ` ${queued} message${queued === 1 ? "" : "s"} will be sent when you're back.`;
  }
  banner.hidden = !message;
  document.body.classList.toggle("banner-on", Boolean(message));
  if (message) $("banner-text").textContent = message;
  $("retry-btn").hidden = !(S.status === "reconnecting" || S.status === "offline" || S.status === "failed");
}

export function renderPendingStates() {
  for (const item of S.pending.values()) {
    const status = item.el?.querySelector(".msg-status");
    if (!status) continue;
    let label;
    let name = "clock";
    if (item.state === "failed") {
      label = `Not delivered: ${item.error}`;
      name = "alert";
      item.el.classList.add("failed");
    } else if (item.state === "sent") {
      label = "Sending…";
    } else if (S.status !== "connected") {
      label = "Waiting for connection";
    } else if (item.held) {
      label = "Slowed down: waiting to send";
    } else if (item.kind === "send" && S.rooms.get(item.room)?.joined !== "yes") {
      const problem = S.rooms.get(item.room)?.problem;
      label = problem ? `Not sent: ${problem}` : `Waiting to join #${item.room}`;
    } else {
      label = "Waiting to send";
    }
    status.replaceChildren(icon(name), h("span", { text: label }));
  }
  renderStatus();
}

export function renderMessage(m, mine, isDm = false) {
  const ts = typeof m.ts === "number" ? m.ts : Date.now() / 1000;
  const date = new Date(ts * 1000);
  const text = h("div", { class: "msg-text" });
  renderText(text, String(m.text ?? ""));
  const time = h("time", { datetime: date.toISOString(), title: fullFmt.format(date), text: timeFmt.format(date) });
  const el = h(
    "article",
    { class: `msg${mine ? " own" : ""}${isDm ? " dm" : ""}` },
    avatar(m.nick),
    h("span", { class: "gutter-time", "aria-hidden": "true", text: timeFmt.format(date) }),
    h(
      "div",
      { class: "msg-body" },
      h("div", { class: "msg-meta" }, h("span", { class: "author", text: m.nick }), time),
      text,
    ),
  );
  el.dataset.author = (m.nick || "").toLowerCase();
  el.dataset.ts = String(ts);
  el.dataset.day = dayKey(ts);
  if (m.seq !== undefined) el.dataset.seq = String(m.seq);
  if (m.client_id) el.dataset.clientId = m.client_id;
  return el;
}

/** Insert a room message in seq order; null if that seq is already shown. */
export function addRoomMessage(room, m, mine) {
  if (typeof m.seq !== "number" || room.bySeq.has(m.seq)) return null;
  const el = renderMessage(m, mine);
  const seq = m.seq;
  let prev = null;
  if (room.bySeq.size === 0 || seq > room.maxSeq) {
    prev = room.list.lastElementChild;
  } else if (seq < room.minSeq) {
    prev = null;
  } else {
    for (let node = room.list.lastElementChild; node; node = node.previousElementSibling) {
      if (node.classList.contains("msg") && Number(node.dataset.seq) < seq) {
        prev = node;
        break;
      }
    }
  }
  if (prev) prev.after(el);
  else room.list.prepend(el);
  room.bySeq.set(seq, el);
  if (room.bySeq.size === 1) renderHistoryTop(room);
  room.minSeq = Math.min(room.minSeq, seq);
  room.maxSeq = Math.max(room.maxSeq, seq);
  tidy(el);
  tidy(nextMsg(el));
  return el;
}

export function placeAtEnd(view, el) {
  view.list.append(el);
  tidy(el);
}

export function prevMsg(el) {
  let node = el.previousElementSibling;
  while (node && !node.classList.contains("msg")) node = node.previousElementSibling;
  return node;
}

export function nextMsg(el) {
  let node = el.nextElementSibling;
  while (node && !node.classList.contains("msg")) node = node.nextElementSibling;
  return node;
}

/** Day separator before a message, and grouping with the message before it. */
export function tidy(el) {
  if (!el) return;
  const prev = prevMsg(el);
  const sep = el.previousElementSibling?.classList.contains("day") ? el.previousElementSibling : null;
  const newDay = !prev || prev.dataset.day !== el.dataset.day;
  if (newDay && !sep) el.before(daySeparator(Number(el.dataset.ts)));
  if (!newDay && sep) sep.remove();
  if (newDay && sep && sep.dataset.day !== el.dataset.day) sep.replaceWith(daySeparator(Number(el.dataset.ts)));
  const grouped =
    !newDay &&
    prev.dataset.author === el.dataset.author &&
    Number(el.dataset.ts) - Number(prev.dataset.ts) < GROUP_WINDOW;
  el.classList.toggle("cont", grouped);
}

export function daySeparator(ts) {
  const el = h("div", { class: "day", role: "separator" }, h("span", { text: dayLabel(ts) }));
  el.dataset.day = dayKey(ts);
  el.dataset.ts = String(ts);
  return el;
}

export function relabelDays() {
  const today = dayKey(Date.now() / 1000);
  if (today === S.today) return;
  S.today = today;
  for (const sep of document.querySelectorAll(".day")) {
    sep.firstElementChild.textContent = dayLabel(Number(sep.dataset.ts));
  }
}

export function renderHistoryTop(room) {
  if (!(room instanceof Room)) return;
  const top = room.top;
  top.replaceChildren();
  // "Load earlier messages" and "Loading messages…" take the same slot of the
  // same height: starting a load must not move what the reader is looking at.
  if (room.historyBusy) {
    top.append(
      h(
        "div",
        { class: "history-slot" },
        h("div", { class: "history-note", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), h("span", { text: "Loading messages…" })),
      ),
    );
  } else if (room.hasMore === false) {
    top.append(
      h(
        "div",
        { class: "room-intro" },
        h("div", { class: "intro-icon", "aria-hidden": "true" }, icon("hash")),
        h("h2", { text: `Welcome to #${room.name}` }),
        h("p", { text: room.bySeq.size ? `This is the very beginning of #${room.name}.` : "No messages yet. Say hello!" }),
      ),
    );
  } else if (room.hasMore) {
    top.append(
      h(
        "div",
        { class: "history-slot" },
        h("button", { type: "button", class: "link-btn load-older", text: "Load earlier messages", onclick: () => loadOlder(room) }),
      ),
    );
  }
}

export function onViewScroll(view) {
  const el = view.el;
  view.stick = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
  if (view.stick && S.current === view) $("jump").hidden = true;
  if (view instanceof Room) maybeLoadOlder(view);
}

export function scrollToBottom(view) {
  view.el.scrollTop = view.el.scrollHeight;
}

/** A message arrived live: follow it, count it, announce it. */
export function liveArrival(view, el, mine, announcement) {
  const isCurrent = S.current === view;
  if (mine || (isCurrent && view.stick)) {
    if (mine) view.stick = true;
    if (isCurrent || mine) scrollToBottom(view);
  } else if (isCurrent) {
    $("jump").hidden = false;
  }
  if (view.stick) prune(view);
  if (!mine) {
    if (!isCurrent) {
      view.unread += 1;
      view instanceof Room ? renderRoomList() : renderDmList();
    } else if (document.hidden) {
      S.hiddenNew += 1;
    }
    if (announcement && (isCurrent || view instanceof Dm)) announce(announcement);
    renderTitle();
  }
  void el;
}

/** A page open all day: drop the oldest rows (they come back by scrolling up). */
export function prune(view) {
  const rows = view.messages();
  if (rows.length <= KEEP_MAX) return;
  const cut = rows.length - KEEP_AFTER_PRUNE;
  for (let i = 0; i < cut; i++) {
    const el = rows[i];
    if (el.previousElementSibling?.classList.contains("day")) el.previousElementSibling.remove();
    if (view instanceof Room) view.bySeq.delete(Number(el.dataset.seq));
    el.remove();
  }
  tidy(rows[cut]);
  if (view instanceof Room) {
    view.minSeq = Number(rows[cut].dataset.seq);
    view.hasMore = true;
    renderHistoryTop(view);
  }
  if (S.current === view) scrollToBottom(view);
}

export function announce(text) {
  const region = $("announcer");
  region.append(h("p", { text }));
  while (region.childElementCount > 5) region.firstElementChild.remove();
}

export function sideItem({ label, iconEl, active, unread, onclick, cls = "" }) {
  const badge = unread
    ? h("span", { class: "badge" }, unread > 99 ? "99+" : String(unread), h("span", { class: "sr-only", text: " unread" }))
    : null;
  return h(
    "li",
    {},
    h(
      "button",
      { type: "button", class: `side-item ${cls}${unread ? " has-unread" : ""}`, "aria-current": active ? "page" : null, onclick },
      iconEl,
      h("span", { class: "side-name", text: label }),
      badge,
    ),
  );
}

export function renderRoomList() {
  const list = $("room-list");
  list.replaceChildren(
    ...[...S.rooms.values()].map((room) =>
      sideItem({
        label: room.name,
        iconEl: icon("hash"),
        active: S.current === room,
        unread: room.unread,
        onclick: () => show(room),
      }),
    ),
  );
  renderMenuBadge();
}

export function renderBrowse() {
  const others = S.directory.filter((r) => !S.rooms.has(r.name));
  $("browse-list").replaceChildren(
    ...others.map((r) => {
      const li = sideItem({ label: r.name, iconEl: icon("hash"), cls: "browse", onclick: () => openRoom(r.name) });
      const btn = li.firstElementChild;
      btn.setAttribute("aria-label", `Join #${r.name}, ${r.members} online`);
      btn.append(h("span", { class: "count", "aria-hidden": "true", text: r.members ? `${r.members} online` : "" }));
      return li;
    }),
  );
  $("browse-empty").hidden = others.length > 0;
}

export function renderDmList() {
  const dms = [...S.dms.values()];
  $("dm-list").replaceChildren(
    ...dms.map((dm) =>
      sideItem({
        label: dm.peer,
        iconEl: avatar(dm.peer, "avatar small"),
        active: S.current === dm,
        unread: dm.unread,
        cls: "dm-item",
        onclick: () => show(dm),
      }),
    ),
  );
  $("dm-empty").hidden = dms.length > 0;
  renderMenuBadge();
}

export function renderMenuBadge() {
  let total = 0;
  for (const v of [...S.rooms.values(), ...S.dms.values()]) if (v !== S.current) total += v.unread;
  const badge = $("menu-badge");
  badge.hidden = total === 0;
  // Visible count, and in the button's name: "Rooms menu 3 unread".
  badge.replaceChildren(total > 99 ? "99+" : String(total), h("span", { class: "sr-only", text: " unread" }));
  renderTitle();
}

export function renderTitle() {
  let total = S.hiddenNew;
  for (const v of [...S.rooms.values(), ...S.dms.values()]) if (v !== S.current) total += v.unread;
  const name = S.current instanceof Room ? `#${S.current.name}` : S.current ? S.current.peer : "hubbub";
  document.title = `${total ? `(${total}) ` : ""}${name} · hubbub`;
}

export function renderRoomHeader() {
  const view = S.current;
  if (!view) return;
  const isRoom = view instanceof Room;
  $("conv-name").textContent = isRoom ? view.name : view.peer;
  $("conv-icon").firstElementChild.setAttribute("href", isRoom ? "#i-hash" : "#i-lock");
  document.body.dataset.view = view.kind;
  const room = isRoom ? view : view.room ? S.rooms.get(view.room) : null;
  const count = room ? room.memberCount() : 0;
  const live = room && room.joined === "yes";
  let sub;
  if (!isRoom) sub = "Direct message · private, not saved";
  else if (live) sub = `${count.toLocaleString()} ${count === 1 ? "member" : "members"} online`;
  else if (S.status !== "connected") sub = "Not connected";
  else sub = room.problem ? `Not joined: ${room.problem}` : "Joining…";
  $("conv-sub").textContent = sub;
  // The badge is small: 12.3K past 9,999 (the header line has the exact number).
  const badge = count > 9999 ? new Intl.NumberFormat(undefined, { notation: "compact" }).format(count) : String(count);
  $("members-count").textContent = live ? badge : "";
  $("members-label").textContent = live ? "Members online:" : "Members";
  document.body.classList.toggle("members-stale", !live);
  $("leave-btn").setAttribute("aria-label", isRoom ? `Leave #${view.name}` : `Close conversation with ${view.peer}`);
  $("leave-btn").title = isRoom ? "Leave room" : "Close conversation";
  const label = isRoom ? `Message #${view.name}` : `Message ${view.peer} (direct)`;
  $("input").placeholder = label;
  $("input-label").textContent = label;
}

/** The room whose members the panel shows: the current one, or the DM's. */
const panelRoom = () => {
  const view = S.current;
  return view instanceof Room ? view : view?.room ? S.rooms.get(view.room) : null;
};

/**
 * The member list: a small room's whole list in name order, or a large room's
 * loaded pages in the server's order (at most MEMBERS_KEEP names either way).
 * ``firstNew``: scroll to this member (the first of a page just loaded).
 */
export function renderMembers(firstNew = null) {
  const view = S.current;
  const room = panelRoom();
  const list = $("member-list");
  renderMembersFoot();
  if (!room) {
    list.replaceChildren(h("li", { class: "side-empty", text: "No shared room." }));
    return;
  }
  let names = [...room.members.values()];
  if (!room.paged) names.sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
  names = names.slice(0, MEMBERS_KEEP);
  list.replaceChildren(...names.map((nick) => memberItem(room, nick)));
  $("members-h").textContent = view instanceof Dm ? `Members of #${room.name}` : "Members";
  if (firstNew) {
    const at = names.indexOf(firstNew);
    if (at >= 0) list.scrollTop += list.children[at].getBoundingClientRect().top - list.getBoundingClientRect().top;
  }
}

function memberItem(room, nick) {
  const me = same(nick, S.me);
  const content = [avatar(nick, "avatar small"), h("span", { class: "member-name", text: nick })];
  if (me) {
    return h("li", {}, h("div", { class: "member me-member" }, ...content, h("span", { class: "you", text: "you" })));
  }
  return h(
    "li",
    {},
    h(
      "button",
      {
        type: "button",
        class: "member",
        title: `Send ${nick} a direct message`,
        onclick: () => {
          const dm = ensureDm(nick);
          if (!dm) return;
          dm.room = room.name;
          show(dm);
          focusComposer();
        },
      },
      ...content,
      // The name comes from the visible text (so voice control finds "bob"), plus:
      h("span", { class: "sr-only", text: "(direct message)" }),
      icon("chat", "icon member-dm"),
    ),
  );
}

/** Under the list: how many are not listed, and the buttons that page through a large room. */
export function renderMembersFoot() {
  const room = panelRoom();
  const foot = $("members-foot");
  const listed = room ? Math.min(room.members.size, MEMBERS_KEEP) : 0;
  const earlier = room && room.paged ? room.membersSkipped : 0;
  const more = room ? Math.max(0, room.memberCount() - earlier - listed) : 0;
  foot.hidden = !room || (!earlier && !more && !room.membersMore);
  if (foot.hidden) return;
  const parts = [];
  if (earlier) parts.push(`${earlier.toLocaleString()} earlier`);
  if (more) parts.push(`${more.toLocaleString()} more`);
  else if (room.membersMore) parts.push("more");
  $("members-more-text").textContent = parts.join(" · ");
  const busy = Boolean(room.whoBusy);
  const live = room.joined === "yes";
  const moreBtn = $("members-more");
  moreBtn.hidden = !(room.paged && room.membersMore);
  moreBtn.disabled = busy || !live;
  moreBtn.textContent = busy && room.whoBusy.after !== null ? "Loading…" : "Show more";
  const topBtn = $("members-top");
  topBtn.hidden = !earlier;
  topBtn.disabled = busy || !live;
  moreBtn.onclick = () => showMoreMembers(room);
  topBtn.onclick = () => askMembers(room, null, true);
}

export function renderTyping() {
  const el = $("typing");
  const room = S.current instanceof Room ? S.current : null;
  const names = room ? [...room.typers.keys()] : [];
  if (!names.length) {
    el.replaceChildren();
    el.classList.remove("on");
    return;
  }
  let text;
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else text = "Several people are typing…";
  el.replaceChildren(h("span", { class: "dots", "aria-hidden": "true" }, h("i"), h("i"), h("i")), h("span", { text }));
  el.classList.add("on");
}

export function renderMe() {
  const nick = S.me && (!S.wantNick || same(S.me, S.wantNick)) ? S.me : S.wantNick || S.me || "…";
  $("me-nick").textContent = nick;
  $("me-avatar").replaceWith(Object.assign(avatar(nick), { id: "me-avatar" }));
}

export const viewKey = (view) => (view instanceof Room ? `#${view.name}` : `@${view.key}`);

/** A short notice; ``view``: it is about that conversation (and goes when it is opened). */
export function toast(text, kind = "info", action = null, view = null) {
  const box = $("toasts");
  const el = h("div", { class: `toast ${kind}` }, icon(kind === "error" ? "alert" : "chat"), h("span", { text }));
  if (view) el.dataset.view = viewKey(view);
  if (action) {
    el.append(h("button", { type: "button", class: "link-btn", text: action.label, onclick: () => { el.remove(); action.run(); } }));
  }
  el.append(h("button", { type: "button", class: "icon-btn toast-x", "aria-label": "Dismiss", onclick: () => el.remove() }, icon("x")));
  box.append(el);
  while (box.childElementCount > 3) box.firstElementChild.remove();
  setTimeout(() => el.remove(), 7000);
}
