import { createHash } from "node:crypto";

/**
 * Every Redis key, channel and stream name the cluster uses, built from one prefix (CHAT_REDIS_PREFIX)
 * so that several deployments or test runs share a Redis without seeing each other.
 * Usernames never contain ':' or '|' (see @chat/protocol USERNAME_PATTERN), so both are safe separators.
 */
export interface RedisNames {
  readonly prefix: string;
  /** The stream every accepted message and read receipt is appended to. */
  readonly stream: string;
  /** The consumer group of the persistence workers on that stream. */
  readonly group: string;
  /** Entries the worker could not persist however often it tried (invalid data), kept for an operator. */
  readonly deadLetterStream: string;
  /** Identifies a conversation independently of who addresses whom: the two usernames in order. */
  roomId(a: string, b: string): string;
  /** Pub/sub channel carrying a conversation's chat events (chat_message, user_join, user_leave). */
  roomChannel(roomId: string): string;
  /** Pub/sub channel carrying one user's notification events. */
  userChannel(username: string): string;
  /** Sorted set of a conversation's open chat sockets, scored by expiry time (ms). */
  presenceRoom(roomId: string): string;
  /** Sorted set of every presence entry of the deployment, scored by expiry, for the expiry sweep. */
  readonly presenceIndex: string;
  /** Token bucket of a user's sends (messages and reads), shared by every node. */
  rateBucket(username: string): string;
  /**
   * The chat_message frame of a sender's client_id in one conversation (from `from` to `to`), so a
   * retried send is not accepted twice. Scoped to the conversation: the same client_id sent to
   * another partner is another message.
   */
  clientMessage(from: string, to: string, clientId: string): string;
  /** Sorted set of a user's open sockets on any node, scored by expiry, for the per-user limit. */
  userConnections(username: string): string;
}

export function redisNames(prefix: string): RedisNames {
  return {
    prefix,
    stream: `${prefix}messages`,
    group: `${prefix}persisters`,
    deadLetterStream: `${prefix}messages-dead`,
    roomId: (a, b) => (a < b ? `${a}:${b}` : `${b}:${a}`),
    roomChannel: (roomId) => `${prefix}room:${roomId}`,
    userChannel: (username) => `${prefix}user:${username}`,
    presenceRoom: (roomId) => `${prefix}presence:${roomId}`,
    presenceIndex: `${prefix}presence-expiry`,
    rateBucket: (username) => `${prefix}rate:${username}`,
    // The client_id is the client's: hashed so no byte of it reaches a key name.
    clientMessage: (from, to, clientId) => `${prefix}client-msg:${from}:${to}:${createHash("sha256").update(clientId).digest("base64url")}`,
    userConnections: (username) => `${prefix}connections:${username}`,
  };
}
