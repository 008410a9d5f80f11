// Reference browser client of the chat cluster. It uses only the public protocol (docs/protocol.md:
// the chat sockets /ws/{other}/ and /ws/groups/{id}/ and the notifications socket /ws/notifications/) and the HTTP API
// (docs/openapi.yaml, bearer tokens). User text only ever goes through textContent and attribute
// setters, never parsed as markup.
//
// One file on purpose: the client is a single ES module served as is (no bundler, no build step),
// in sections: session and API, reconnecting socket, conversation list, conversation view, wiring.

/** Messages per history page (GET /api/rooms/{other}/messages?limit=). */
const PAGE_SIZE = 25;
/** Conversations per page of GET /api/conversations. */
const CONVERSATION_PAGE = 50;
/** Reconnect backoff: first delay, cap (ms); each attempt doubles it, with jitter. */
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const USERNAME = /^[A-Za-z0-9@.+\-_]{1,150}$/;
const GROUP_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * A conversation's key in this client: the partner's username, or `#<group id>` for a group (no
 * username starts with '#').
 */
const groupKey = (id) => `#${id}`;
const groupOf = (key) => (key.startsWith("#") ? key.slice(1) : null);
const keyOf = (c) => (c.kind === "group" ? groupKey(c.id) : c.other_user.username);
const STORAGE_TOKEN = "chat.token";
const STORAGE_USER = "chat.username";
/** The tab's title; `(N) chat-cluster` while N messages are unread. */
const TITLE = "chat-cluster";
/**
 * Longest message text, in Unicode code points: the server's default CHAT_MAX_MESSAGE_LENGTH (4096,
 * docs/protocol.md), which the client cannot ask for. The server stays the authority: a gateway set
 * lower refuses with `message_too_long` ("message is longer than N characters") and the client
 * adopts that N from then on (learnMessageLimit).
 */
let maxMessageLength = 4096;
/** The length counter shows from this share of the limit on. */
const COUNTER_FROM = 0.9;

/** The element with data-testid=`id`, under `root`. */
function el(id, root = document) {
  const found = root.querySelector(`[data-testid="${id}"]`);
  if (!found) throw new Error(`missing element ${id}`);
  return found;
}

/** A new element with a class, a data-testid and text (as textContent). */
function make(tag, { cls, testid, text } = {}) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (testid) node.dataset.testid = testid;
  if (text !== undefined) node.textContent = text;
  return node;
}

function wsUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

/** The `exp` of a JWT (seconds), or null; the token is only decoded, the server verifies it. */
function tokenExpiry(token) {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.exp === "number" ? payload.exp : null;
  } catch {
    return null;
  }
}

function formatTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

// ---------------------------------------------------------------------------------------------
// Session: the token lives in sessionStorage (per tab, gone when the tab closes).
// ---------------------------------------------------------------------------------------------

const session = {
  token: sessionStorage.getItem(STORAGE_TOKEN),
  username: sessionStorage.getItem(STORAGE_USER),
  renewTimer: 0,
};

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the HTTP API with the bearer token; JSON in and out, refusals thrown as HttpError. */
async function api(path, { method = "GET", body, json } = {}) {
  const headers = {};
  if (session.token) headers.authorization = `Bearer ${session.token}`;
  if (json !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: json !== undefined ? JSON.stringify(json) : body });
  const isJson = (res.headers.get("content-type") || "").startsWith("application/json");
  const data = isJson ? await res.json() : null;
  if (!res.ok) {
    if (res.status === 401 && session.token) void renewOrSignOut("session expired");
    throw new HttpError(res.status, data?.error ?? "http_error", data?.message ?? `HTTP ${res.status}`);
  }
  return data;
}

/** POST /api/dev/token (development gateways only). */
async function devToken(username) {
  const { token } = await api("/api/dev/token", { method: "POST", json: { username } });
  return token;
}

function storeSession(username, token) {
  session.username = username;
  session.token = token;
  sessionStorage.setItem(STORAGE_USER, username);
  sessionStorage.setItem(STORAGE_TOKEN, token);
  clearTimeout(session.renewTimer);
  const exp = tokenExpiry(token);
  // Renew five minutes before expiry, so open sockets are never closed with 4001 in practice.
  if (exp) session.renewTimer = setTimeout(() => void renewOrSignOut(), Math.max(0, exp * 1000 - Date.now() - 300_000));
}

let renewing = null;
/** Gets a fresh development token for the same user; signs out when that is refused. */
function renewOrSignOut(reason) {
  if (!renewing) {
    const username = session.username;
    session.token = null;
    renewing = devToken(username)
      .then((token) => storeSession(username, token))
      .catch(() => signOut(reason ?? "session expired: sign in again", { keepHash: true }))
      .finally(() => (renewing = null));
  }
  return renewing;
}

// ---------------------------------------------------------------------------------------------
// A socket that reconnects with exponential backoff and jitter.
// ---------------------------------------------------------------------------------------------

class ReconnectingSocket {
  /**
   * @param {() => string} path path and query of the next attempt (asked again at every attempt, so
   *   the token and ?since= are current)
   * @param {{ onEvent(e: object): void, onStatus(s: "connecting" | "open" | "closed"): void }} handlers
   */
  constructor(path, handlers) {
    this.path = path;
    this.handlers = handlers;
    this.ws = null;
    this.attempt = 0;
    this.timer = 0;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    this.handlers.onStatus("connecting");
    const ws = new WebSocket(wsUrl(this.path()));
    this.ws = ws;
    let sawEvent = false;
    ws.onmessage = (m) => {
      let event;
      try {
        event = JSON.parse(m.data);
      } catch {
        return;
      }
      if (!sawEvent) {
        // The first event means the socket is fully subscribed (docs/protocol.md, Guarantees).
        sawEvent = true;
        this.attempt = 0;
        this.handlers.onStatus("open");
      }
      this.handlers.onEvent(event);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      // Removed from the group (4003), or not a member (4004): reconnecting cannot help.
      if ((e.code === 4003 || e.code === 4004) && this.handlers.onGone) {
        this.stopped = true;
        return this.handlers.onGone(e.code);
      }
      this.handlers.onStatus("closed");
      void this.retry(e.code);
    };
  }

  async retry(code) {
    // 4001: the token expired while open; an upgrade refused with 401 shows up as 1006 too, so the
    // expiry is checked before every attempt.
    const exp = session.token ? tokenExpiry(session.token) : null;
    if (code === 4001 || (exp !== null && exp * 1000 <= Date.now())) await renewOrSignOut();
    if (this.stopped || !session.token) return;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt++;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Skips the backoff wait: connects now unless a socket is already open or opening. */
  reconnectNow() {
    if (this.stopped || this.ws || !session.token) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    this.connect();
  }

  /** Sends a frame; false when the socket is not open (the caller keeps it for later). */
  send(frame) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000, "closed by the client");
  }
}

// ---------------------------------------------------------------------------------------------
// Connection banner: shown while a socket that was open is down, or the browser says it is offline.
// ---------------------------------------------------------------------------------------------

/** Names of the sockets ("notifications", "chat") that closed and are not open again yet. */
const downSockets = new Set();

function socketStatus(name, s) {
  if (s === "closed") downSockets.add(name);
  else if (s === "open") downSockets.delete(name);
  renderBanner();
}

function forgetSocket(name) {
  downSockets.delete(name);
  renderBanner();
}

function renderBanner() {
  const offline = !navigator.onLine;
  const banner = el("offline-banner");
  banner.hidden = !offline && downSockets.size === 0;
  banner.dataset.state = offline ? "offline" : "reconnecting";
  el("offline-banner-text").textContent = offline
    ? "You are offline. Messages you write are kept and sent when the connection is back."
    : "Connection lost. Reconnecting… Messages you write are sent once it is back.";
}

function reconnectAll() {
  list.socket?.reconnectNow();
  view.current?.socket.reconnectNow();
}

// ---------------------------------------------------------------------------------------------
// Conversation list: GET /api/conversations, kept live by /ws/notifications/.
// ---------------------------------------------------------------------------------------------

const list = {
  /** conversation key → { other (the key), name, group (id or null), unread, last: { content, multimedia_url, date_added, from } | null } */
  entries: new Map(),
  nextCursor: null,
  socket: null,
  loading: null,
  again: false,
  /** The first page arrived (until then the empty state would be a guess). */
  loaded: false,
  /**
   * other username → online, from the notifications socket's presence events since it opened: newer
   * than any conversations page read meanwhile, so a page's `online` only fills in the others.
   */
  presence: new Map(),
};

/** Reloads the first page(s) of the list; calls made while one runs are merged into one rerun. */
async function refreshConversations() {
  if (list.loading) {
    list.again = true;
    return list.loading;
  }
  list.loading = (async () => {
    do {
      list.again = false;
      const limit = Math.min(100, Math.max(CONVERSATION_PAGE, list.entries.size));
      try {
        const page = await api(`/api/conversations?limit=${limit}`);
        const local = [...list.entries.values()].filter((e) => e.localOnly && !page.conversations.some((c) => keyOf(c) === e.other));
        list.entries = new Map();
        for (const e of local) list.entries.set(e.other, e);
        addConversations(page.conversations);
        list.nextCursor = page.next_cursor;
        list.loaded = true;
        el("list-error").textContent = "";
      } catch (err) {
        el("list-error").textContent = `conversations: ${err.message}`;
      }
      renderConversations();
    } while (list.again);
  })().finally(() => (list.loading = null));
  return list.loading;
}

function addConversations(conversations) {
  for (const c of conversations) {
    const m = c.last_message;
    const key = keyOf(c);
    list.entries.set(key, {
      other: key,
      name: c.kind === "group" ? c.name : key,
      group: c.kind === "group" ? c.id : null,
      online: c.online === true,
      unread: c.unread_count,
      last: m ? { content: m.content, multimedia_url: m.multimedia_url, date_added: m.date_added, from: m.from_user.username } : null,
      localOnly: false,
    });
  }
}

async function moreConversations() {
  if (!list.nextCursor) return;
  try {
    const page = await api(`/api/conversations?limit=${CONVERSATION_PAGE}&cursor=${encodeURIComponent(list.nextCursor)}`);
    addConversations(page.conversations);
    list.nextCursor = page.next_cursor;
  } catch (err) {
    el("list-error").textContent = `conversations: ${err.message}`;
  }
  renderConversations();
}

function renderConversations() {
  const ul = el("conversation-list");
  const items = [...list.entries.values()].sort((a, b) => {
    if (a.localOnly !== b.localOnly) return a.localOnly ? -1 : 1;
    return (b.last?.date_added ?? "").localeCompare(a.last?.date_added ?? "");
  });
  ul.replaceChildren(
    ...items.map((entry) => {
      const li = make("li", { cls: "conversation-item", testid: "conversation-item" });
      li.dataset.username = entry.other;
      li.tabIndex = 0;
      li.setAttribute("role", "button");
      if (view.current?.other === entry.other) li.classList.add("active");
      const online = !entry.group && (list.presence.get(entry.other) ?? entry.online === true);
      const dot = make("span", { cls: "online-dot", testid: "online-dot" });
      dot.title = "online";
      dot.hidden = !online;
      li.dataset.kind = entry.group ? "group" : "direct";
      li.dataset.online = String(online);
      const badge = make("span", { cls: "badge", testid: "unread-badge", text: String(entry.unread) });
      badge.hidden = entry.unread === 0;
      let last = "No messages yet";
      if (entry.last) {
        const what = entry.last.content || (entry.last.multimedia_url ? "[attachment]" : "");
        last = `${entry.last.from === session.username ? "You: " : ""}${what} · ${formatTime(entry.last.date_added)}`;
      }
      const name = make("span", { cls: "name", testid: "conversation-name" });
      name.append(dot, entry.name ?? entry.other);
      li.append(name, badge, make("span", { cls: "last", testid: "last-message", text: last }));
      li.addEventListener("click", () => openConversation(entry.other));
      li.addEventListener("keydown", (e) => {
        if (e.key === "Enter") openConversation(entry.other);
      });
      return li;
    }),
  );
  el("conversations-more").hidden = !list.nextCursor;
  el("conversations-empty").hidden = !list.loaded || items.length > 0;
  // The header says "online" from what the list knows.
  showPresence();
}

function setTotalUnread(n) {
  const badge = el("unread-total");
  badge.textContent = String(n);
  badge.title = `${n} unread`;
  badge.hidden = n === 0;
  document.title = n > 0 ? `(${n}) ${TITLE}` : TITLE;
}

/** The locally known last message of a conversation (our own sends get no notification). */
function noteLastMessage(other, m) {
  const entry = list.entries.get(other) ?? { other, name: other, group: groupOf(other), unread: 0, last: null, localOnly: false };
  if (!entry.last || entry.last.date_added <= m.date_added) {
    entry.last = { content: m.message, multimedia_url: m.multimedia_url, date_added: m.date_added, from: m.from_user.username };
  }
  entry.localOnly = false;
  list.entries.set(other, entry);
  renderConversations();
}

function startNotifications() {
  list.socket = new ReconnectingSocket(() => `/ws/notifications/?presence=1&token=${encodeURIComponent(session.token ?? "")}`, {
    onStatus: (s) => {
      el("notifications-status").dataset.state = s;
      socketStatus("notifications", s);
      // Events may have been missed while closed: the list is reloaded once the socket is back.
      if (s === "open") void refreshConversations();
      // Presence is resent when it opens; until then the pages' `online` is all there is.
      if (s !== "open") list.presence.clear();
    },
    onEvent: (e) => {
      if (e.type === "presence") {
        list.presence.set(e.user, e.online);
        renderConversations();
        return;
      }
      if (e.type === "unread_count" || e.type === "new_message_notification") {
        setTotalUnread(e.unread_count);
        // The notice carries only the total: the list (per-conversation counts, last messages) is re-read.
        void refreshConversations();
      }
    },
  });
  list.socket.start();
}

// ---------------------------------------------------------------------------------------------
// Conversation view: history pages, the chat socket, presence, sending and reading.
// ---------------------------------------------------------------------------------------------

/** How often a typist's client sends `typing`, and how long the other side shows it (docs/protocol.md). */
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 5000;

const view = {
  /** The open conversation, or null. */
  current: null,
};

class Conversation {
  /** @param {string} other the conversation's key: the partner's username, or `#<group id>` */
  constructor(other) {
    this.other = other;
    /** The group's id; null in a 1:1 conversation. */
    this.group = groupOf(other);
    /** Group: who has the conversation open (its online_user_list and joins). */
    this.here = new Set();
    /** Group: each other member's newest read message id (read receipts, history read_by). */
    this.readers = new Map();
    /** id → <li> of every message shown. */
    this.shown = new Map();
    /** client_id → { frame, li } of sends not yet echoed; resent (idempotently) after a reconnect. */
    this.pending = new Map();
    /** Newest message id seen: the ?since= of the next reconnect. */
    this.newestId = null;
    /** `before` cursor of the next older page; null once the first message is shown. */
    this.olderCursor = null;
    this.historyDone = false;
    this.loadingOlder = null;
    this.readTimer = 0;
    /** Hides "… is typing" when no typing event renewed it (the typist sends one every few seconds). */
    this.typingTimer = 0;
    /** When this user last told the other one that they are typing. */
    this.typingSentAt = 0;
    /** "Seen" under the newest of this user's messages the other has read, and that message's id. */
    this.seenMark = make("span", { cls: "seen", testid: "seen-mark", text: "Seen" });
    this.seenId = null;
    this.closed = false;
    this.socket = new ReconnectingSocket(() => this.socketPath(), {
      onStatus: (s) => this.onStatus(s),
      onEvent: (e) => this.onEvent(e),
      onGone: (code) => this.gone(code),
    });
  }

  socketPath() {
    const q = new URLSearchParams({ token: session.token ?? "" });
    if (this.newestId) q.set("since", this.newestId);
    return this.group ? `/ws/groups/${this.group}/?${q}` : `/ws/${encodeURIComponent(this.other)}/?${q}`;
  }

  historyPath() {
    return this.group ? `/api/groups/${this.group}/messages` : `/api/rooms/${encodeURIComponent(this.other)}/messages`;
  }

  /** Removed from the group, or not in it: the view closes, and the list no longer shows it. */
  gone(code) {
    if (view.current !== this) return;
    list.entries.delete(this.other);
    closeConversation();
    // After the list is read again, which clears the list's error line.
    void refreshConversations().then(() => {
      el("list-error").textContent = code === 4003 ? "You are no longer a member of that group." : "No such group among yours.";
    });
  }

  start() {
    this.socket.start();
    void this.loadOlder();
  }

  close() {
    this.closed = true;
    clearTimeout(this.readTimer);
    this.showTyping(false);
    this.socket.stop();
    forgetSocket("chat");
  }

  onStatus(s) {
    const status = el("connection-status");
    status.dataset.state = s;
    status.textContent = s === "open" ? "connected" : s === "connecting" ? "connecting…" : "reconnecting…";
    if (s !== "open") setPresence(false);
    if (!this.closed) socketStatus("chat", s);
  }

  onEvent(e) {
    switch (e.type) {
      case "online_user_list":
        this.here = new Set(e.users);
        setPresence(e.users.includes(this.other));
        this.markRead();
        for (const { frame } of this.pending.values()) this.socket.send(frame);
        break;
      case "user_join":
        this.here.add(e.user);
        if (e.user === this.other) setPresence(true);
        else showPresence();
        break;
      case "user_leave":
        this.here.delete(e.user);
        if (e.user === this.other) setPresence(false);
        else showPresence();
        break;
      case "chat_message":
        if (e.from_user?.username !== session.username && this.typist === e.from_user?.username) this.showTyping(false);
        this.receive(e);
        break;
      case "typing":
        if (e.user !== session.username && (this.group || e.user === this.other)) this.showTyping(true, e.user);
        break;
      case "read_receipt":
        if (this.group) {
          if (e.last_read_id) this.readers.set(e.user, e.last_read_id);
          this.showGroupSeen();
        } else if (e.user === this.other) this.markSeen(e.last_read_id);
        break;
      case "group_event":
        this.system(e.id, e.text);
        if (e.event === "renamed") {
          el("conversation-title").textContent = e.name;
          const entry = list.entries.get(this.other);
          if (entry) entry.name = e.name;
          renderConversations();
        }
        if (!el("group-panel").hidden) void showGroupPanel();
        break;
      case "catch_up_end":
        // Incomplete replay (too many missed, or an unknown since id): read the history again.
        if (!e.recovered) this.reloadHistory();
        break;
      case "error": {
        if (e.code === "message_too_long") learnMessageLimit(e.message);
        const p = e.client_id ? this.pending.get(e.client_id) : undefined;
        if (p) {
          this.pending.delete(e.client_id);
          this.fail(e.client_id, p, e);
        } else if (e.code === "rate_limited" && !e.client_id) {
          // A read receipt over the rate limit: read again a moment later.
          clearTimeout(this.readTimer);
          this.readTimer = setTimeout(() => this.markRead(), 1000);
        } else {
          el("chat-error").textContent = e.client_id ? describeRefusal(e) : `The server refused an update: ${e.message || e.code}.`;
        }
        break;
      }
    }
  }

  /**
   * Moves "Seen" under message `id` (the newest of this user's that the other has read), unless a
   * newer one already has it: receipts and history pages may come in any order.
   */
  markSeen(id) {
    const li = id ? this.shown.get(id) : undefined;
    if (!li) return;
    const current = this.seenId ? this.shown.get(this.seenId) : undefined;
    if (current && current !== li && current.compareDocumentPosition(li) & Node.DOCUMENT_POSITION_PRECEDING) return;
    this.seenId = id;
    li.append(this.seenMark);
  }

  /** "… is typing" under the header, for a few seconds after each typing event of another member. */
  showTyping(on, user = this.other) {
    clearTimeout(this.typingTimer);
    this.typist = on ? user : null;
    const line = el("typing-indicator");
    line.hidden = !on;
    line.textContent = on ? `${user} is typing…` : "";
    if (on) this.typingTimer = setTimeout(() => this.showTyping(false), TYPING_SHOWN_MS);
  }

  /**
   * Group: "Seen by …" under the newest of this user's messages that another member has read, naming
   * every member who read that far (a receipt names the newest message of the others they read: the
   * mark goes under the last of this user's messages at or before it).
   */
  showGroupSeen() {
    let target = null;
    const reached = new Map();
    for (const [user, id] of this.readers) {
      let li = this.shown.get(id) ?? null;
      while (li && !(li.classList.contains("mine") && li.dataset.id)) li = li.previousElementSibling;
      if (!li) continue;
      reached.set(user, li);
      if (!target || target.compareDocumentPosition(li) & Node.DOCUMENT_POSITION_FOLLOWING) target = li;
    }
    if (!target) return;
    const names = [...reached].filter(([, li]) => li === target || target.compareDocumentPosition(li) & Node.DOCUMENT_POSITION_FOLLOWING).map(([u]) => u).sort();
    this.seenMark.textContent = `Seen by ${names.join(", ")}`;
    this.seenId = target.dataset.id;
    target.append(this.seenMark);
  }

  /** A group's system event (someone added, removed, left; renamed), as a line of the history. */
  system(id, text) {
    if (this.shown.has(id)) return;
    const li = make("li", { cls: "system", testid: "system-event", text });
    li.dataset.id = id;
    this.shown.set(id, li);
    el("message-list").append(li);
    const scroller = el("message-scroller");
    scroller.scrollTop = scroller.scrollHeight;
  }

  /** Called on every edit of the message box: tells the other user, at most every TYPING_EVERY_MS. */
  typed() {
    const now = Date.now();
    if (now - this.typingSentAt < TYPING_EVERY_MS) return;
    if (this.socket.send({ type: "typing" })) this.typingSentAt = now;
  }

  /**
   * A send the server refused (nothing was stored): the message stays, marked, with why and what
   * the user can do: retry (same client_id: idempotent), edit (back into the composer), delete.
   */
  fail(clientId, p, e) {
    p.li.classList.remove("pending");
    p.li.classList.add("failed");
    p.li.querySelector(".failure")?.remove();
    const box = make("span", { cls: "failure", testid: "message-failure" });
    box.append(make("span", { testid: "message-failure-reason", text: describeRefusal(e) }));
    const retryable = !NOT_RETRYABLE.has(e.code);
    if (retryable) {
      const retry = make("button", { testid: "message-retry", text: "Retry" });
      retry.type = "button";
      retry.addEventListener("click", () => {
        if (this.closed) return;
        box.remove();
        p.li.classList.remove("failed");
        p.li.classList.add("pending");
        this.pending.set(clientId, p);
        this.socket.send(p.frame);
      });
      box.append(retry);
    } else if (p.frame.message && !p.frame.multimedia_url) {
      const edit = make("button", { testid: "message-edit", text: "Edit" });
      edit.type = "button";
      edit.addEventListener("click", () => {
        const input = el("message-input");
        input.value = p.frame.message;
        updateCounter();
        p.li.remove();
        input.focus();
      });
      box.append(edit);
    }
    const del = make("button", { cls: "secondary", testid: "message-delete", text: "Delete" });
    del.type = "button";
    del.title = "Remove this unsent message";
    del.addEventListener("click", () => p.li.remove());
    box.append(del);
    p.li.append(box);
  }

  /** A live or replayed chat_message. */
  receive(m) {
    const p = m.client_id ? this.pending.get(m.client_id) : undefined;
    if (p && m.from_user.username === session.username) {
      this.pending.delete(m.client_id);
      p.li.remove();
    }
    this.newestId = m.id;
    noteLastMessage(this.other, m);
    if (this.shown.has(m.id)) return;
    const scroller = el("message-scroller");
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
    const li = renderMessage({ id: m.id, from: m.from_user.username, content: m.message, multimedia_url: m.multimedia_url, date_added: m.date_added, group: this.group !== null });
    this.shown.set(m.id, li);
    el("message-list").append(li);
    if (atBottom || m.from_user.username === session.username) scroller.scrollTop = scroller.scrollHeight;
    if (m.from_user.username !== session.username) this.scheduleRead();
  }

  /** One more page of history, older than what is shown; the first call loads the newest page. */
  loadOlder() {
    if (this.historyDone || this.loadingOlder) return this.loadingOlder;
    this.loadingOlder = (async () => {
      const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (this.olderCursor) q.set("before", this.olderCursor);
      try {
        const page = await api(`${this.historyPath()}?${q}`);
        if (this.closed) return;
        this.prepend(page.messages);
        this.olderCursor = page.next_cursor;
        this.historyDone = page.next_cursor === null;
        el("load-older").hidden = this.historyDone;
        el("history-start").hidden = !this.historyDone;
      } catch (err) {
        el("chat-error").textContent = `history: ${err.message}`;
      }
    })().finally(() => (this.loadingOlder = null));
    return this.loadingOlder.then(() => {
      // A first page that does not fill the view leaves nothing to scroll: load on.
      const scroller = el("message-scroller");
      if (!this.closed && !this.historyDone && scroller.scrollHeight <= scroller.clientHeight) return this.loadOlder();
    });
  }

  /** Inserts a page (newest first, as the API returns it) above what is shown, keeping the scroll position. */
  prepend(messages) {
    const scroller = el("message-scroller");
    const first = this.shown.size === 0;
    const heightBefore = scroller.scrollHeight;
    const fragment = document.createDocumentFragment();
    for (const m of [...messages].reverse()) {
      if (this.shown.has(m.id)) continue;
      const li = m.event
        ? make("li", { cls: "system", testid: "system-event", text: m.content })
        : renderMessage({ id: m.id, from: m.from_user.username, content: m.content, multimedia_url: m.multimedia_url, date_added: m.date_added, group: this.group !== null });
      li.dataset.id = m.id;
      this.shown.set(m.id, li);
      fragment.append(li);
    }
    el("message-list").prepend(fragment);
    if (!this.newestId && messages[0]) this.newestId = messages[0].id;
    if (this.group) {
      // Newest first: the first message each member read is their newest read (unless a receipt said more).
      for (const m of messages) for (const user of m.read_by ?? []) if (!this.readers.has(user)) this.readers.set(user, m.id);
      this.showGroupSeen();
    } else {
      // The page is newest first: the first of this user's messages the other has read gets "Seen".
      const read = messages.find((m) => m.from_user.username === session.username && m.read_by?.includes(this.other));
      if (read) this.markSeen(read.id);
    }
    if (first) scroller.scrollTop = scroller.scrollHeight;
    else scroller.scrollTop += scroller.scrollHeight - heightBefore;
  }

  reloadHistory() {
    this.shown.clear();
    this.seenId = null;
    this.readers.clear();
    el("message-list").replaceChildren();
    this.olderCursor = null;
    this.historyDone = false;
    void this.loadOlder();
  }

  /** read_messages once the other's messages are on screen (debounced: reads count toward the rate limit). */
  scheduleRead() {
    clearTimeout(this.readTimer);
    this.readTimer = setTimeout(() => this.markRead(), 250);
  }

  markRead() {
    if (document.visibilityState === "hidden") {
      this.readWhenVisible = true;
      return;
    }
    this.readWhenVisible = false;
    this.socket.send({ type: "read_messages" });
  }

  /** Sends a chat_message; kept as pending until its echo, and resent with the same client_id after a reconnect. */
  send(text, media) {
    const clientId = `c-${crypto.randomUUID()}`;
    const frame = { type: "chat_message", client_id: clientId };
    if (text) frame.message = text;
    if (media) {
      frame.multimedia_url = media.file_location;
      frame.file_identifier = media.file_identifier;
      if (media.expiration_time) frame.multimedia_url_expiration = media.expiration_time;
    }
    const li = renderMessage({ id: null, from: session.username, content: text, multimedia_url: media?.file_location ?? null, date_added: new Date().toISOString() });
    li.classList.add("pending");
    el("message-list").append(li);
    const scroller = el("message-scroller");
    scroller.scrollTop = scroller.scrollHeight;
    this.pending.set(clientId, { frame, li });
    this.socket.send(frame);
  }
}

/** Whether the open conversation's partner has it open too (its chat socket's online_user_list and joins). */
let partnerHere = false;

function setPresence(here) {
  partnerHere = here;
  showPresence();
}

/**
 * The header's presence: "in this chat" while the partner has the conversation open, else "online"
 * while they are signed in anywhere (the list's presence, from ?presence=1), else "offline".
 */
function showPresence() {
  const current = view.current;
  if (current?.group) {
    const others = [...current.here].filter((u) => u !== session.username).length;
    const p = el("presence");
    p.dataset.state = others > 0 ? "here" : "offline";
    p.textContent = `${others} other${others === 1 ? "" : "s"} in this chat`;
    return;
  }
  const other = current?.other;
  const online = other !== undefined && (list.presence.get(other) ?? list.entries.get(other)?.online === true);
  const state = partnerHere ? "here" : online ? "online" : "offline";
  const p = el("presence");
  p.dataset.state = state;
  p.textContent = state === "here" ? "in this chat" : state;
}

/**
 * Only http(s) URLs (absolute, or relative to this gateway). Our own /chat-media/ URLs are signed and
 * short-lived (?expires=&sig=): the bearer token never goes into a URL a user could open or share.
 */
function mediaHref(url) {
  let u;
  try {
    u = new URL(url, location.origin);
  } catch {
    return null;
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") return null;
  return u.href;
}

/** Whether a signed media URL of this gateway expires within a minute (so it must be renewed before use). */
function expiresSoon(href) {
  const u = new URL(href);
  const expires = Number(u.searchParams.get("expires"));
  return u.origin === location.origin && u.pathname.startsWith("/chat-media/") && (!expires || expires * 1000 - Date.now() < 60_000);
}

/** A fresh URL for a message's file through check-url / refresh-url (bearer token in the header), or null. */
async function renewedMediaHref(messageId) {
  const check = await api(`/api/rooms/check-url/?message_id=${encodeURIComponent(messageId)}`);
  if (!check.refresh_url) return null;
  const { file_location } = await api(`/api/rooms/refresh-url/?message_id=${encodeURIComponent(messageId)}`);
  return mediaHref(file_location);
}

function renderMessage(m) {
  const mine = m.from === session.username;
  const li = make("li", { cls: mine ? "message mine" : "message theirs", testid: "message" });
  if (m.id) li.dataset.id = m.id;
  li.dataset.from = m.from;
  if (m.group && !mine) li.append(make("span", { cls: "author", testid: "message-author", text: m.from }));
  if (m.content) li.append(make("span", { cls: "text", testid: "message-text", text: m.content }));
  if (m.multimedia_url) {
    const href = mediaHref(m.multimedia_url);
    if (href) {
      const a = make("a", { testid: "message-attachment" });
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      // An old message's signed URL may have expired: renew it before opening.
      a.addEventListener("click", (e) => {
        if (!m.id || !expiresSoon(a.href)) return;
        e.preventDefault();
        renewedMediaHref(m.id)
          .then((fresh) => {
            if (fresh) a.href = fresh;
            window.open(a.href, "_blank", "noopener,noreferrer");
          })
          .catch(() => window.open(a.href, "_blank", "noopener,noreferrer"));
      });
      if (/\.(png|jpe?g|gif|webp)(\?|$)/i.test(new URL(href).pathname)) {
        const img = make("img", { testid: "message-image" });
        img.alt = "attachment";
        img.src = href;
        if (m.id) watchImage(m.id, img, a);
        // The picture grows the message after it was placed: keep the newest in view.
        img.addEventListener("load", () => {
          const scroller = el("message-scroller");
          if (li.nextElementSibling === null && scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < img.height + 80) {
            scroller.scrollTop = scroller.scrollHeight;
          }
        });
        a.append(img);
      } else {
        a.textContent = "Attachment";
      }
      li.append(a);
    }
  }
  li.append(make("span", { cls: "meta", text: `${mine ? "you" : m.from} · ${formatTime(m.date_added)}` }));
  return li;
}

/**
 * Retries an image that failed to load, a few times with backoff: a file sent a moment ago becomes
 * visible to the recipient once its message is persisted (typically milliseconds after the live
 * chat_message), and a presigned URL that expired is renewed through check-url / refresh-url.
 */
function watchImage(messageId, img, a) {
  let attempt = 0;
  img.addEventListener("error", () => {
    if (attempt >= 5) return;
    const delay = 250 * 2 ** attempt++;
    setTimeout(async () => {
      let href = img.src;
      try {
        href = (await renewedMediaHref(messageId)) ?? href;
      } catch {
        // Not persisted yet (404) or unreachable: try the same URL again.
      }
      const u = new URL(href);
      if (u.origin === location.origin) u.searchParams.set("attempt", String(attempt));
      img.src = u.href;
      a.href = href;
    }, delay);
  });
}

function openConversation(other, name) {
  if (view.current?.other === other) return;
  closeConversation(false);
  const group = groupOf(other);
  el("chat-error").textContent = "";
  el("conversation-title").textContent = name ?? list.entries.get(other)?.name ?? (group ? "Group" : other);
  el("group-members-toggle").hidden = !group;
  el("group-panel").hidden = true;
  el("message-list").replaceChildren();
  el("load-older").hidden = true;
  el("history-start").hidden = true;
  setPresence(false);
  el("no-conversation").hidden = true;
  el("conversation-view").hidden = false;
  el("app").classList.add("has-conversation");
  if (!list.entries.has(other)) list.entries.set(other, { other, name: name ?? other, group, unread: 0, last: null, localOnly: true });
  view.current = new Conversation(other);
  view.current.start();
  renderConversations();
  const hash = group ? `#/groups/${group}` : `#/${encodeURIComponent(other)}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
  el("message-input").focus();
}

function closeConversation(updateHash = true) {
  view.current?.close();
  view.current = null;
  el("conversation-view").hidden = true;
  el("no-conversation").hidden = false;
  el("app").classList.remove("has-conversation");
  if (updateHash && location.hash) history.replaceState(null, "", location.pathname);
  renderConversations();
}

// ---------------------------------------------------------------------------------------------
// Composer: the length counter, the attachment chip, refusals in words.
// ---------------------------------------------------------------------------------------------

/** Refusals a resend cannot fix: the message itself must change. */
const NOT_RETRYABLE = new Set(["message_too_long", "empty_message", "invalid_frame", "invalid_media_url", "frame_too_large", "invalid_json", "unknown_type"]);

/** Length as the server counts it: Unicode code points. */
function codePoints(text) {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

const number = (n) => n.toLocaleString();

/** Adopts the server's limit from its `message_too_long` refusal ("message is longer than N characters"). */
function learnMessageLimit(message) {
  const m = /longer than (\d+) characters/.exec(message ?? "");
  if (m && Number(m[1]) > 0) {
    maxMessageLength = Number(m[1]);
    updateCounter();
  }
}

/** An `error` frame in words, for a person. */
function describeRefusal(e) {
  switch (e.code) {
    case "message_too_long":
      return `Not sent: longer than this server's limit of ${number(maxMessageLength)} characters.`;
    case "rate_limited":
      return "Not sent: you are sending too fast. Retry in a moment.";
    case "unavailable":
      return "Not sent: the server cannot take messages right now. Retry in a moment.";
    case "empty_message":
      return "Not sent: the message is empty.";
    case "frame_too_large":
      return "Not sent: the message is too large.";
    default:
      return `Not sent: ${e.message || e.code}.`;
  }
}

/** Shows the length counter near the limit, and marks the input once over it. */
function updateCounter() {
  const input = el("message-input");
  const n = codePoints(input.value);
  const over = n > maxMessageLength;
  const counter = el("message-counter");
  counter.hidden = n < Math.floor(maxMessageLength * COUNTER_FROM);
  counter.dataset.state = over ? "over" : "near";
  counter.textContent = `${number(n)} / ${number(maxMessageLength)}`;
  counter.title = over ? `${number(n - maxMessageLength)} characters too many` : `${number(maxMessageLength - n)} characters left`;
  input.setAttribute("aria-invalid", String(over));
}

function tooLongText(n) {
  return `This message is ${number(n)} characters long; the limit is ${number(maxMessageLength)}. Shorten it by ${number(n - maxMessageLength)} characters, or send it in parts.`;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MB`;
}

/** A refused or failed upload in words, with what to do about it. */
function uploadRefusal(err) {
  const fix = "Remove it (✕) to send your text alone, or attach another file.";
  if (!(err instanceof HttpError)) return "The file could not be uploaded (connection problem). Send again, or remove it (✕).";
  if (err.status === 413) {
    const m = /larger than (\d+) bytes/.exec(err.message);
    return `This file is too large to send${m ? ` (the limit is ${formatBytes(Number(m[1]))})` : ""}. ${fix}`;
  }
  if (err.status === 415) return `This kind of file cannot be sent. Images, video, audio, PDF and plain text usually can. ${fix}`;
  if (err.code === "upload_quota_exceeded") return `You have uploaded too much in the last hour; try again later. ${fix}`;
  return `The file was refused: ${err.message}. ${fix}`;
}

/** Shows the chosen file as a chip with a remove button (or nothing when none is chosen). */
function showAttachment() {
  const file = el("attach-input").files?.[0];
  const row = el("attachment-row");
  row.hidden = !file;
  row.dataset.state = "";
  el("attachment-name").textContent = file ? `${file.name} · ${formatBytes(file.size)}` : "";
  el("attachment-name").title = file?.name ?? "";
  el("attachment-error").textContent = "";
}

function removeAttachment() {
  el("attach-input").value = "";
  showAttachment();
  el("message-input").focus();
}

// ---------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------

/** The conversation named by the location hash (`#/bob`, `#/groups/<id>`), as its key, or null. */
function hashUser() {
  const group = /^#\/groups\/(.+)$/.exec(location.hash)?.[1];
  if (group !== undefined) return GROUP_ID.test(group) ? groupKey(group) : null;
  let other;
  try {
    other = decodeURIComponent(location.hash.replace(/^#\//, ""));
  } catch {
    return null;
  }
  return USERNAME.test(other) && other !== "notifications" && other !== session.username ? other : null;
}

function showSignIn(message = "") {
  el("app").hidden = true;
  el("signin").hidden = false;
  el("signin-error").textContent = message;
  showDeepLink();
  el("signin-username").focus();
}

/** On the sign-in form: the conversation a link (`/#/bob`) leads to, opened once signed in. */
function showDeepLink() {
  const other = hashUser();
  const note = el("signin-deep-link");
  note.hidden = !other;
  note.textContent = other ? (groupOf(other) ? "Sign in to open your group conversation." : `Sign in to open your conversation with ${other}.`) : "";
}

function showApp() {
  el("signin").hidden = true;
  el("app").hidden = false;
  el("current-user").textContent = session.username;
  startNotifications();
  void refreshConversations();
  const fromHash = hashUser();
  if (fromHash) openConversation(fromHash);
}

/** Signs out; `keepHash` keeps the conversation of the address (`#/bob`) for the next sign-in. */
function signOut(message, { keepHash = false } = {}) {
  closeConversation(!keepHash);
  list.socket?.stop();
  list.socket = null;
  list.entries.clear();
  list.loaded = false;
  renderConversations();
  setTotalUnread(0);
  downSockets.clear();
  renderBanner();
  clearTimeout(session.renewTimer);
  session.token = null;
  session.username = null;
  sessionStorage.removeItem(STORAGE_TOKEN);
  sessionStorage.removeItem(STORAGE_USER);
  showSignIn(message);
}

el("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const username = el("signin-username").value.trim();
  if (!USERNAME.test(username) || username === "notifications") {
    el("signin-error").textContent = "1-150 letters, digits and @.+-_ only";
    return;
  }
  el("signin-submit").disabled = true;
  try {
    storeSession(username, await devToken(username));
    showApp();
  } catch (err) {
    el("signin-error").textContent =
      err instanceof HttpError && err.status === 404 ? "this gateway does not issue development tokens (NODE_ENV is not development)" : `sign-in failed: ${err.message}`;
  } finally {
    el("signin-submit").disabled = false;
  }
});

el("signout").addEventListener("click", () => signOut(""));
el("conversations-more").addEventListener("click", () => void moreConversations());
el("close-conversation").addEventListener("click", () => closeConversation());
el("load-older").addEventListener("click", () => void view.current?.loadOlder());
el("message-scroller").addEventListener("scroll", (e) => {
  if (e.currentTarget.scrollTop < 40) void view.current?.loadOlder();
});

el("new-conversation").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = el("new-conversation-input");
  const other = input.value.trim();
  if (!USERNAME.test(other) || other === "notifications" || other === session.username) {
    el("list-error").textContent = other === session.username ? "that is you" : "not a valid username";
    return;
  }
  el("list-error").textContent = "";
  input.value = "";
  openConversation(other);
});

/** Usernames typed as a list ("bob, carol dave"). */
const usernamesIn = (text) => text.split(/[\s,]+/).filter((u) => u !== "");

el("new-group").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = el("new-group-name").value.trim();
  const members = usernamesIn(el("new-group-members").value);
  const bad = members.find((u) => !USERNAME.test(u));
  if (!name || bad !== undefined) {
    el("list-error").textContent = !name ? "a group needs a name" : `not a valid username: ${bad}`;
    return;
  }
  el("new-group-submit").disabled = true;
  try {
    const group = await api("/api/groups", { method: "POST", json: { name, members } });
    el("list-error").textContent = "";
    el("new-group-name").value = "";
    el("new-group-members").value = "";
    el("new-group-details").open = false;
    openConversation(groupKey(group.id), group.name);
    void refreshConversations();
  } catch (err) {
    el("list-error").textContent = `group not created: ${err.message}`;
  } finally {
    el("new-group-submit").disabled = false;
  }
});

/** The open group's members, with what this user may do about them (admins add and remove; anyone leaves). */
async function showGroupPanel() {
  const group = view.current?.group;
  if (!group) return;
  const panel = el("group-panel");
  panel.hidden = false;
  el("group-error").textContent = "";
  let g;
  try {
    g = await api(`/api/groups/${group}`);
  } catch (err) {
    el("group-error").textContent = `members: ${err.message}`;
    return;
  }
  if (view.current?.group !== group) return;
  const admin = g.admins.includes(session.username);
  el("group-members").replaceChildren(
    ...g.members.map((u) => {
      const li = make("li", { testid: "group-member" });
      li.dataset.username = u;
      li.append(make("span", { text: u === session.username ? `${u} (you)` : u }));
      if (g.admins.includes(u)) li.append(make("span", { cls: "role", text: "admin" }));
      if (admin && u !== session.username) {
        const remove = make("button", { cls: "link", testid: "group-member-remove", text: "Remove" });
        remove.type = "button";
        remove.addEventListener("click", () => void changeMembers("DELETE", `/api/groups/${group}/members/${encodeURIComponent(u)}`));
        li.append(remove);
      }
      return li;
    }),
  );
  el("group-add").hidden = !admin;
}

async function changeMembers(method, path, json) {
  try {
    await api(path, { method, json });
    await showGroupPanel();
  } catch (err) {
    el("group-error").textContent = err.message;
  }
}

el("group-members-toggle").addEventListener("click", () => {
  if (el("group-panel").hidden) void showGroupPanel();
  else el("group-panel").hidden = true;
});
el("group-add").addEventListener("submit", (e) => {
  e.preventDefault();
  const group = view.current?.group;
  const username = el("group-add-input").value.trim();
  if (!group) return;
  if (!USERNAME.test(username)) {
    el("group-error").textContent = "not a valid username";
    return;
  }
  el("group-add-input").value = "";
  void changeMembers("POST", `/api/groups/${group}/members`, { username });
});
el("group-leave").addEventListener("click", async () => {
  const group = view.current?.group;
  if (!group) return;
  try {
    await api(`/api/groups/${group}/members/${encodeURIComponent(session.username)}`, { method: "DELETE" });
  } catch (err) {
    el("group-error").textContent = err.message;
  }
});

el("attach-input").addEventListener("change", () => showAttachment());
el("attachment-remove").addEventListener("click", () => removeAttachment());
el("message-input").addEventListener("input", () => {
  updateCounter();
  if (el("message-input").value !== "") view.current?.typed();
});
el("reconnect-now").addEventListener("click", () => reconnectAll());
window.addEventListener("online", () => {
  renderBanner();
  reconnectAll();
});
window.addEventListener("offline", () => renderBanner());

el("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const conversation = view.current;
  if (!conversation) return;
  const input = el("message-input");
  const fileInput = el("attach-input");
  const text = input.value;
  const file = fileInput.files?.[0];
  if (!text && !file) return;
  el("chat-error").textContent = "";
  // Refused here rather than by the server: nothing is sent, the text stays to be shortened.
  const length = codePoints(text);
  if (length > maxMessageLength) {
    el("chat-error").textContent = tooLongText(length);
    input.focus();
    return;
  }
  let media;
  if (file) {
    const form = new FormData();
    form.append("myFile", file);
    el("send-button").disabled = true;
    try {
      media = await api("/api/rooms/upload", { method: "POST", body: form });
    } catch (err) {
      // The file stays attached, marked, with why: the user removes it or picks another.
      el("attachment-row").dataset.state = "refused";
      el("attachment-error").textContent = uploadRefusal(err);
      return;
    } finally {
      el("send-button").disabled = false;
    }
    fileInput.value = "";
    showAttachment();
  }
  input.value = "";
  updateCounter();
  conversation.send(text, media);
  // The message ends the other side's "typing…": the next keystroke announces typing again at once.
  conversation.typingSentAt = 0;
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && view.current?.readWhenVisible) view.current.markRead();
});

window.addEventListener("hashchange", () => {
  if (!session.token) return showDeepLink();
  const other = hashUser();
  if (other) openConversation(other);
  else if (!location.hash) closeConversation();
});

const exp = session.token ? tokenExpiry(session.token) : null;
if (session.token && session.username && exp !== null && exp * 1000 > Date.now()) {
  storeSession(session.username, session.token);
  showApp();
} else {
  // A link to a conversation (`/#/bob`) survives the sign-in.
  signOut("", { keepHash: true });
}
