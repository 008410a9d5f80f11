import type { AcceptOptions, AcceptResult, ReceivedEntry, StreamEntry } from "./stream.js";

/**
 * The seams the gateway and the worker run on. Two engines implement them: Redis (a cluster of
 * processes; `*-redis.ts` and the Redis classes) and memory plus an embedded log (one process;
 * `*-memory.ts` here and `@chat/embedded`). Both keep the guarantees written on each method.
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
 * Where accepted client entries wait until a worker has persisted them, shared by every consumer
 * of one group. At-least-once: an entry stays pending until acknowledged, and one pending longer than
 * `claim`'s idle time is handed to another consumer, so consumers must be idempotent (the message id
 * is the key). Positions (`<ms>-<seq>`, see streamPosition) only grow.
 */
export interface MessageLog {
  /**
   * Accepts one client entry atomically: the sender's rate limit, then its client_id (a retry gets
   * the original frame back and stores nothing), then append and publish the live event. A message
   * is accepted exactly when it is in the log.
   */
  accept(entry: StreamEntry, options: AcceptOptions): Promise<AcceptResult>;
  /** Appends one entry without the checks of `accept` (tools that fill a log: benchmarks, tests). */
  append(entry: StreamEntry): Promise<string>;
  /**
   * Entries strictly between `afterId` ("-": the start) and `beforeId` (null: the end), newest first,
   * at most `count`: a reader pages backwards with the last id it got, holding one page at a time.
   */
  rangeBetween(afterId: string, beforeId: string | null, count: number): Promise<ReceivedEntry[]>;
  /**
   * The entry of message `id` if it is still in the log, looked for only among entries appended from
   * `fromMs` to `toMs` (a UUIDv7 id carries its creation time) and among at most `maxEntries` of them:
   * bounded work whatever else the log holds, and only the match is returned. Null when not found.
   */
  findMessage(id: string, window: { fromMs: number; toMs: number; maxEntries: number }): Promise<ReceivedEntry | null>;
  /** Makes sure the consumer group exists, starting at the beginning of the log. */
  ensureGroup(): Promise<void>;
  /** New entries for this consumer; waits up to blockMs when there are none (null: returns at once). */
  read(consumer: string, count: number, blockMs: number | null): Promise<ReceivedEntry[]>;
  /** Takes over entries another consumer left pending for at least minIdleMs. */
  claim(consumer: string, minIdleMs: number, count: number): Promise<ReceivedEntry[]>;
  ack(ids: readonly string[]): Promise<void>;
  /** Drops acknowledged entries; never an unacknowledged one. Returns how many went. */
  trimAcknowledged(): Promise<number>;
  /** Entries not yet delivered to a consumer (lag) and delivered but not acknowledged (pending). */
  backlog(): Promise<{ lag: number; pending: number }>;
  /** Keeps an entry that can never be persisted, for an operator. */
  deadLetter(fields: Readonly<Record<string, string>>): Promise<void>;
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
}

/**
 * Open sockets per user across every node: at most `limit` counted at any time; entries a node
 * stops refreshing expire after the TTL.
 */
export interface ConnectionCounter {
  readonly limit: number;
  /** Counts the socket; null when the user already has `limit` open. */
  acquire(username: string, member: string): Promise<CountedConnection | null>;
  release(connection: CountedConnection): Promise<void>;
  /** Extends the life of live sockets' entries (with the presence refresh). */
  refresh(connections: Iterable<CountedConnection>): Promise<void>;
}
