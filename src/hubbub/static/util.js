

export const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;

export const $ = (id) => document.getElementById(id);

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return el;
}

export function icon(name, cls = "icon") {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", cls);
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(ns, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

export function hue(name) {
  let x = 0;
  for (const ch of name.toLowerCase()) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return x % 360;
}

export function avatar(name, cls = "avatar") {
  const first = [...(name || "?")][0] || "?";
  const el = h("span", { class: cls, "aria-hidden": "true", text: first.toUpperCase() });
  el.style.setProperty("--hue", String(hue(name || "?")));
  return el;
}

/** Text with http(s) links made clickable, built from DOM nodes only. */
export function renderText(container, text) {
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let url = match[0];
    // Trailing punctuation belongs to the sentence, not to the link.
    while (/[.,;:!?'")\]}>]$/.test(url)) {
      if (url.endsWith(")") && url.split("(").length > url.split(")").length - 1) break;
      url = url.slice(0, -1);
    }
    const start = match.index;
    let href = null;
    try {
      const parsed = new URL(url);
      if (parsed.protocol === "http:" || parsed.protocol === "https:") href = parsed.href;
    } catch {
      href = null;
    }
    if (!href) continue;
    if (start > last) container.append(document.createTextNode(text.slice(last, start)));
    container.append(
      h("a", { href, target: "_blank", rel: "noopener noreferrer nofollow", text: url }),
    );
    last = start + url.length;
  }
  if (last < text.length) container.append(document.createTextNode(text.slice(last)));
}

export function uuid() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  // Plain-HTTP deployments are not a secure context: no randomUUID there.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

export const same = (a, b) => (a || "").toLowerCase() === (b || "").toLowerCase();

export const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });

export const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });

export const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });

export const dayYearFmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "long", day: "numeric" });

export function dayKey(ts) {
  const d = new Date(ts * 1000);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

export function dayLabel(ts) {
  const key = dayKey(ts);
  const now = Date.now() / 1000;
  if (key === dayKey(now)) return "Today";
  if (key === dayKey(now - 86400)) return "Yesterday";
  const d = new Date(ts * 1000);
  return d.getFullYear() === new Date().getFullYear() ? dayFmt.format(d) : dayYearFmt.format(d);
}

export function storage(area) {
  return {
    get(key) {
      try {
        return globalThis[area].getItem(key);
      } catch {
        return null;
      }
    },
    set(key, value) {
      try {
        globalThis[area].setItem(key, value);
      } catch {
        /* private mode, quota: the page still works, it just forgets */
      }
    },
  };
}
