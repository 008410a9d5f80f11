/**
 * `error.code` values sent in `{"type":"error"}` frames. The socket always stays open after one of
 * these: the frame that caused it was dropped and nothing was persisted.
 */
export const ErrorCode = {
  /** The text frame is not JSON. (A text frame that is not valid UTF-8 fails the connection instead: see CloseCode.dropped.) */
  invalid_json: "invalid_json",
  /** Binary frames carry nothing in this protocol; send text. */
  binary_not_supported: "binary_not_supported",
  /** The frame was larger than the gateway's frame limit (CHAT_MAX_FRAME_BYTES). */
  frame_too_large: "frame_too_large",
  /** `type` is missing or names no client event of this endpoint. */
  unknown_type: "unknown_type",
  /** The frame has the right `type` but violates its schema (wrong field type, unknown field...). */
  invalid_frame: "invalid_frame",
  /** A `chat_message` with neither text nor `multimedia_url`. */
  empty_message: "empty_message",
  /** A `chat_message` whose text is longer than CHAT_MAX_MESSAGE_LENGTH characters. */
  message_too_long: "message_too_long",
  /** The cluster could not accept the frame (Redis unreachable); nothing was stored, retry later. */
  unavailable: "unavailable",
  /**
   * A `chat_message` whose `multimedia_url` or `file_identifier` is refused: not an http(s) URL or a
   * /chat-media/ path, a non-public address, or not the sender's own upload at its own location.
   */
  invalid_media_url: "invalid_media_url",
  /** The user sends faster than CHAT_RATE_MESSAGES_PER_SECOND (bursts of CHAT_RATE_MESSAGES_BURST); nothing was stored, retry later. */
  rate_limited: "rate_limited",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** HTTP statuses with which the gateway refuses a WebSocket upgrade (no socket opens). */
export const UpgradeRefusal = {
  /** Bad path: unknown endpoint, invalid username, or a chat with oneself. */
  bad_request: 400,
  /** Missing, malformed, wrongly signed, expired or not-yet-valid token. */
  unauthorized: 401,
  /** The Origin header is not in CHAT_ALLOWED_ORIGINS. */
  forbidden_origin: 403,
  /** Too many open sockets for this user (CHAT_MAX_CONNECTIONS_PER_USER) or upgrades from this address. */
  too_many: 429,
  /** The node is not ready (Redis unreachable, or draining); try another node. */
  unavailable: 503,
} as const;
export type UpgradeRefusal = keyof typeof UpgradeRefusal;

/** WebSocket close codes the gateway uses. */
export const CloseCode = {
  /** The node is shutting down; reconnect (to any node). */
  going_away: 1001,
  /**
   * Not sent but seen by clients: uWebSockets.js drops the connection without a close frame when a text
   * frame is not valid UTF-8 (RFC 6455), when a
   * frame exceeds the hard transport limit (16 x CHAT_MAX_FRAME_BYTES) or more than
   * CHAT_MAX_BACKPRESSURE_BYTES queue up for a socket that does not read. Reconnect.
   */
  dropped: 1006,
  /** The node could not set up the socket's subscriptions (Redis refused); reconnect. */
  try_again_later: 1013,
  /** The token expired while the socket was open: reconnect with a fresh token. */
  token_expired: 4001,
  /**
   * The node may have missed live events of this conversation (its Redis shard failed over, or the
   * node's subscription there was lost for a while): reconnect with `?since=` to get them.
   */
  resync: 4002,
  /** You were removed from the group (or left it, from another socket) while this socket was open: do not reconnect. */
  removed_from_group: 4003,
  /**
   * No such group among yours: sent before any event on /ws/groups/{id}/ and
   * /ws/notifications/groups/{id}/ to anyone who is not a member, whether the group exists or not.
   * (Membership is a database read, which this uWebSockets.js build cannot wait for before the
   * upgrade: see docs/protocol.md.)
   */
  not_a_member: 4004,
  /**
   * The user already has CHAT_MAX_CONNECTIONS_PER_USER sockets open across the cluster (the count is
   * taken once the socket is open; a node refuses the upgrade with 429 when it alone holds that many).
   * Sent before any event; do not reconnect until one of the user's sockets has closed.
   */
  too_many_connections: 4029,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];
