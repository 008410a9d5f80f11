/**
 * The seams the gateway and the worker run on, besides the message log (message-log.ts). Two engines
 * implement them: Redis (a cluster of processes; `*-redis.ts`) and memory plus an embedded log (one
 * process; `*-memory.ts` here and `@chat/embedded`). Both keep the guarantees written on each method.
 */

/** Publishes to channels. Pub/sub is at-most-once and ordered per channel. */
export interface Publisher {
  publish(channel: string, payload: string): Promise<void>;
  /** Publishes several messages, in order; rejects if any could not be published. */
  publishAll(messages: readonly (readonly [channel: string, payload: string])[]): Promise<void>;
}

/**
 * The receiving side of pub/sub, driven by the SubscriptionRouter: once `subscribe` resolves, every
 * message published on the channel afterwards reaches the handler (while the transport stays up).
 */
export interface ChannelTransport {
  subscribe(channels: readonly string[]): Promise<void>;
  unsubscribe(channel: string): Promise<void>;
  /** Sets the one handler of every message on a subscribed channel. */
  onMessage(handler: (channel: string, payload: Buffer) => void): void;
}

/**
 * Each user's budget of sends (messages and read receipts), shared by every node: a token bucket of
 * `ratePerSecond` tokens per second holding at most `burst`.
 */
export interface RateLimiter {
  /** Takes one send from the user's budget: 0 when taken, else how many ms until one is there (nothing taken). */
  take(username: string): Promise<number>;
}

/** One open chat socket of `user` in conversation `roomId`. */
export interface PresenceEntry {
  roomId: string;
  user: string;
  /** Unique per socket across the cluster: `<user>|<node id>:<socket seq>` (see presenceMember). */
  member: string;
}

export const presenceMember = (user: string, nodeId: string, socketSeq: number): string => `${user}|${nodeId}:${socketSeq}`;

/** The user of a presence member (usernames never contain '|'). */
export const presenceMemberUser = (member: string): string => member.slice(0, member.indexOf("|"));

/**
 * Who has a chat socket open to which conversation, across every node. join/leave are atomic, so
 * exactly one socket sees `first` and exactly one `last` per user and conversation; an entry not
 * refreshed within the TTL is dropped by `sweepExpired`, which reports each user whose last entry
 * vanished exactly once.
 */
export interface Presence {
  /** How long an entry lives without a refresh, in ms. */
  readonly ttlMs: number;
  /** Adds the entry; `first` when the user had no other live socket in the room; `users` is everyone online there. */
  join(entry: PresenceEntry): Promise<{ first: boolean; users: string[] }>;
  /** Removes the entry; `last` when the user has no live socket left in the room. */
  leave(entry: PresenceEntry): Promise<{ last: boolean }>;
  /** Extends the life of live entries (call every TTL/3 or so). */
  refresh(entries: readonly PresenceEntry[]): Promise<void>;
  /** Drops entries whose node stopped refreshing them; returns the users who thereby left a room. */
  sweepExpired(limit?: number): Promise<{ roomId: string; user: string }[]>;
}

/** One open socket counted against its user's limit. */
export interface CountedConnection {
  key: string;
  member: string;
  username: string;
}

/**
 * Open sockets per user across every node: at most `limit` counted at any time; entries a node
 * stops refreshing expire after the TTL. It is also who is online: a user's first counted socket
 * announces them online on their online channel (RedisNames.onlineChannel), and the release of their
 * last one offline, in the order the counter took them, so that concurrent opens and closes on
 * different nodes cannot leave a listener with the wrong state.
 */
/**
 * The limit a ConnectionCounter enforces for CHAT_MAX_CONNECTIONS_PER_USER: 0 turns the refusal off,
 * never the count, which is who is online.
 */
export const socketLimit = (configured: number): number => (configured > 0 ? configured : Number.MAX_SAFE_INTEGER);

export interface ConnectionCounter {
  readonly limit: number;
  /** Counts the socket; null when the user already has `limit` open. */
  acquire(username: string, member: string): Promise<CountedConnection | null>;
  release(connection: CountedConnection): Promise<void>;
  /** Which of these users have a counted socket now. */
  online(usernames: readonly string[]): Promise<Set<string>>;
  /** Extends the life of live sockets' entries (with the presence refresh). */
  refresh(connections: Iterable<CountedConnection>): Promise<void>;
}
