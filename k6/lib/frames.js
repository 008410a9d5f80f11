/**
 * Everything the k6 scripts put on the wire or read from it, as plain JavaScript without k6 imports:
 * packages/infra-checks imports this file in Node and validates every frame against the protocol's
 * JSON schemas (@chat/protocol), every path against the gateway's router and every field read below
 * against the server event schemas, so that a protocol change cannot silently break the scripts.
 */

/**
 * @typedef {{ type: "chat_message", message: string, client_id: string }} ChatMessageFrame
 * @typedef {{ type: "read_messages" }} ReadMessagesFrame
 * @typedef {{ type: string, [field: string]: unknown }} ServerEvent
 */

/**
 * Server events the scripts react to, and the fields they read from each (docs/protocol.md).
 * @type {Record<string, string[]>}
 */
export const SERVER_FIELDS_READ = {
  online_user_list: ["users"],
  user_join: ["user"],
  user_leave: ["user"],
  chat_message: ["id", "client_id", "from_user", "to_user", "message"],
  error: ["code", "message", "client_id"],
  unread_count: ["unread_count"],
  new_message_notification: ["unread_count"],
  single_conversation_unread_count: ["unread_count"],
  single_conversation_new_message_notification: [],
  single_conversation_last_message: ["last_message", "last_datetime"],
};

/** The first event of each endpoint: once it arrives, the socket is fully subscribed. */
export const FIRST_EVENT = {
  chat: "online_user_list",
  notifications: "unread_count",
  conversationNotifications: "single_conversation_unread_count",
};

/**
 * A chat message whose client_id carries the send time, so that any socket of the same k6 process
 * can compute send-to-deliver latency on receipt.
 * @param {string} text
 * @param {string} clientId
 * @returns {ChatMessageFrame}
 */
export function chatMessage(text, clientId) {
  return { type: "chat_message", message: text, client_id: clientId };
}

/** @returns {ReadMessagesFrame} */
export function readMessages() {
  return { type: "read_messages" };
}

/**
 * @param {ChatMessageFrame | ReadMessagesFrame} frame
 * @returns {string}
 */
export function encode(frame) {
  return JSON.stringify(frame);
}

/**
 * `k6.<vu>.<iteration>.<seq>.<send time in ms>`: unique per message of a run, at most 128 characters.
 * @param {number} vu
 * @param {number} iteration
 * @param {number} seq
 * @param {number} sentAtMs
 * @returns {string}
 */
export function clientId(vu, iteration, seq, sentAtMs) {
  return `k6.${vu}.${iteration}.${seq}.${sentAtMs}`;
}

/**
 * The parts of a clientId(), or null for a client_id these scripts did not make.
 * @param {unknown} id
 * @returns {{ vu: number, iteration: number, seq: number, sentAtMs: number } | null}
 */
export function parseClientId(id) {
  if (typeof id !== "string") return null;
  const m = /^k6\.(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(id);
  if (!m) return null;
  return { vu: Number(m[1]), iteration: Number(m[2]), seq: Number(m[3]), sentAtMs: Number(m[4]) };
}

/**
 * Message text of about `bytes` characters; `seq` first, so that a notification's last_message can
 * be matched to its message.
 * @param {number} seq
 * @param {number} bytes
 * @returns {string}
 */
export function messageText(seq, bytes) {
  const head = `k6 message ${seq} `;
  return head + "x".repeat(Math.max(0, bytes - head.length));
}

/**
 * The seq of a messageText(), or null.
 * @param {unknown} text
 * @returns {number | null}
 */
export function seqOfText(text) {
  const m = typeof text === "string" ? /^k6 message (\d+) /.exec(text) : null;
  return m ? Number(m[1]) : null;
}

/**
 * A server frame as an object with a type, or null when it is not JSON of that shape.
 * @param {unknown} data
 * @returns {ServerEvent | null}
 */
export function parseServerFrame(data) {
  if (typeof data !== "string") return null;
  try {
    const frame = JSON.parse(data);
    return frame !== null && typeof frame === "object" && typeof frame.type === "string" ? frame : null;
  } catch (_) {
    return null;
  }
}

/**
 * The sender of a chat_message event.
 * @param {ServerEvent} event
 * @returns {string | undefined}
 */
export function senderOf(event) {
  const from = /** @type {{ username?: unknown } | undefined} */ (event.from_user);
  return typeof from?.username === "string" ? from.username : undefined;
}

/**
 * A username unique to a run, VU, iteration and role: letters, digits and `_` only (the protocol
 * allows 1 to 150 of letters, digits and `@.+-_`).
 * @param {string} runId
 * @param {number} vu
 * @param {number} iteration
 * @param {string} role
 * @returns {string}
 */
export function username(runId, vu, iteration, role) {
  return `k6_${runId}_${vu}_${iteration}_${role}`.slice(0, 150);
}

/** @param {string} other */
export const chatPath = (other) => `/ws/${encodeURIComponent(other)}/`;
export const notificationsPath = () => "/ws/notifications/";
/** @param {string} other */
export const conversationNotificationsPath = (other) => `/ws/notifications/${encodeURIComponent(other)}/`;

/**
 * @param {string} base e.g. ws://127.0.0.1:8000 or wss://chat.example.com
 * @param {string} path
 * @param {string} token
 * @returns {string}
 */
export function socketUrl(base, path, token) {
  return `${base.replace(/\/+$/, "")}${path}?token=${encodeURIComponent(token)}`;
}
