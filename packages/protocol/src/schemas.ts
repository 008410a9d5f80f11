/**
 * JSON schemas of every frame. Client schemas are enforced by the gateway; server schemas document
 * what clients receive and let tests (and k6 checks) verify real frames against the contract.
 */

const clientId = { type: "string", minLength: 0, maxLength: 128 } as const;
const username = { type: "string", pattern: "^[A-Za-z0-9@.+\\-_]{1,150}$" } as const;
const userRef = {
  type: "object",
  required: ["username"],
  additionalProperties: false,
  properties: { username },
} as const;
const count = { type: "integer", minimum: 0 } as const;
const isoDate = { type: "string", pattern: "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?Z$" } as const;

export const chatMessageFrameSchema = {
  $id: "client/chat_message",
  type: "object",
  required: ["type"],
  additionalProperties: false,
  properties: {
    type: { const: "chat_message" },
    // Length in characters is checked by the parser against the configured limit.
    message: { type: "string" },
    multimedia_url: { type: "string", maxLength: 4096 },
    file_identifier: { type: "string", maxLength: 512 },
    multimedia_url_expiration: { type: "string", maxLength: 64 },
    client_id: clientId,
  },
} as const;

/** A client frame that carries nothing but its type. */
function typeOnlyFrame<T extends string>(type: T) {
  return {
    $id: `client/${type}`,
    type: "object",
    required: ["type"],
    additionalProperties: false,
    properties: { type: { const: type } },
  } as const;
}

export const readMessagesFrameSchema = typeOnlyFrame("read_messages");
export const typingFrameSchema = typeOnlyFrame("typing");

function event(type: string, properties: Record<string, unknown>, required: string[] = []) {
  return {
    $id: `server/${type}`,
    type: "object",
    required: ["type", ...required],
    additionalProperties: false,
    properties: { type: { const: type }, ...properties },
  } as const;
}

const messageId = { type: "string", pattern: "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$" } as const;
/** A conversation as its frames name it: the partner's username (1:1) or the group's id. */
const room = { anyOf: [username, messageId] } as const;

export const serverEventSchemas = {
  chat_message: event(
    "chat_message",
    {
      id: messageId,
      message: { type: "string" },
      multimedia_url: { type: ["string", "null"] },
      date_added: isoDate,
      from_user: userRef,
      // null in a group
      to_user: { anyOf: [userRef, { type: "null" }] },
      room,
      client_id: clientId,
    },
    ["id", "message", "multimedia_url", "date_added", "from_user", "to_user", "room"],
  ),
  user_join: event("user_join", { user: username }, ["user"]),
  user_leave: event("user_leave", { user: username }, ["user"]),
  online_user_list: event("online_user_list", { users: { type: "array", items: username } }, ["users"]),
  unread_count: event("unread_count", { unread_count: count }, ["unread_count"]),
  new_message_notification: event("new_message_notification", { unread_count: count }, ["unread_count"]),
  single_conversation_unread_count: event("single_conversation_unread_count", { unread_count: count }, [
    "unread_count",
  ]),
  single_conversation_new_message_notification: event("single_conversation_new_message_notification", {}),
  single_conversation_last_message: event(
    "single_conversation_last_message",
    { last_message: { type: "string" }, last_datetime: isoDate },
    ["last_message", "last_datetime"],
  ),
  catch_up_end: event("catch_up_end", { recovered: { type: "boolean" }, count: count }, ["recovered", "count"]),
  typing: event("typing", { user: username, room }, ["user", "room"]),
  presence: event("presence", { user: username, online: { type: "boolean" } }, ["user", "online"]),
  read_receipt: event(
    "read_receipt",
    { user: username, room, last_read_id: { anyOf: [messageId, { type: "null" }] }, read_at: isoDate },
    ["user", "room", "last_read_id", "read_at"],
  ),
  group_event: event(
    "group_event",
    {
      id: messageId,
      room: messageId,
      event: { enum: ["created", "renamed", "member_added", "member_removed", "member_left"] },
      by: username,
      user: username,
      name: { type: "string" },
      members: { type: "array", items: username },
      text: { type: "string" },
      date_added: isoDate,
    },
    ["id", "room", "event", "by", "text", "date_added"],
  ),
  error: event(
    "error",
    { code: { type: "string" }, message: { type: "string" }, client_id: clientId },
    ["code", "message"],
  ),
} as const;
