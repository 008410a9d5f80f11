/**
 * The message log: where accepted client entries wait until a worker has persisted them. The types,
 * the entry codec and the seam; engines implement it (Redis streams: message-log-redis.ts; the
 * embedded engine's table: @chat/embedded).
 */

/** A chat message the gateway accepted. The stream entry is the message's source of truth until persisted. */
export interface MessageEntry {
  kind: "message";
  /** UUIDv7, assigned by the gateway; the idempotency key of the write. */
  id: string;
  from: string;
  /** The recipient: a username, or a group's conversation id (`#<group id>`, see groupConversation). */
  to: string;
  message: string;
  multimedia_url: string | null;
  file_identifier?: string;
  multimedia_url_expiration?: string;
  client_id?: string;
  /** ISO 8601 UTC, as sent to the sockets. */
  date_added: string;
}

/**
 * `reader` read every message `other` sent them that is earlier in the stream than this entry; with
 * a group's conversation id as `other`, every message of the group's.
 */
export interface ReadEntry {
  kind: "read";
  reader: string;
  other: string;
}

export type StreamEntry = MessageEntry | ReadEntry;

/** One entry read from the stream, with its stream id. */
export interface ReceivedEntry {
  streamId: string;
  /** Undefined when the entry could not be decoded (a poison entry: record and acknowledge it). */
  entry: StreamEntry | undefined;
  raw: string;
}

export class PoisonEntryError extends Error {
  override readonly name = "PoisonEntryError";
  readonly code = "stream_entry_invalid";
}

const isStr = (v: unknown): v is string => typeof v === "string";
const isOptStr = (v: unknown): boolean => v === undefined || typeof v === "string";

export function decodeStreamEntry(raw: string): StreamEntry {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch (cause) {
    throw new PoisonEntryError("stream entry is not JSON", { cause });
  }
  const v = value as Record<string, unknown> | null;
  if (v?.["kind"] === "message") {
    if (
      isStr(v["id"]) && isStr(v["from"]) && isStr(v["to"]) && isStr(v["message"]) && isStr(v["date_added"]) &&
      (v["multimedia_url"] === null || isStr(v["multimedia_url"])) &&
      isOptStr(v["file_identifier"]) && isOptStr(v["multimedia_url_expiration"]) && isOptStr(v["client_id"])
    ) {
      return v as unknown as MessageEntry;
    }
  } else if (v?.["kind"] === "read") {
    if (isStr(v["reader"]) && isStr(v["other"])) return v as unknown as ReadEntry;
  }
  throw new PoisonEntryError(`stream entry has an unknown shape: ${raw.slice(0, 200)}`);
}

/**
 * The log's text of an entry. A message's begins with its kind and id (`{"kind":"message","id":"…"`,
 * see entryPrefixOf), so a lookup by id compares a prefix and never parses the rest.
 */
export function encodeStreamEntry(entry: StreamEntry): string {
  if (entry.kind !== "message") return JSON.stringify(entry);
  // Properties keep their first position when the spread sets them again: kind and id lead.
  const ordered: Partial<MessageEntry> = { kind: entry.kind, id: entry.id };
  return JSON.stringify(Object.assign(ordered, entry));
}

/** How the log's text of message `id` begins (see encodeStreamEntry). */
export const entryPrefixOf = (id: string): string => `{"kind":"message","id":${JSON.stringify(id)}`;

/**
 * The creation time (ms) of a UUIDv7, or null for any other uuid: a message id is a UUIDv7 made when
 * the gateway accepted the message, so its log entry was appended within clock skew of that time.
 */
export function uuidv7Time(id: string): number | null {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(id)) return null;
  return parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}

/**
 * A stream id `<ms>-<seq>` as one integer (ms * 1e6 + seq) that orders like the stream and fits a
 * Postgres bigint until the year 2262. Read watermarks compare against it.
 */
export function streamPosition(streamId: string): bigint {
  const dash = streamId.indexOf("-");
  const ms = BigInt(streamId.slice(0, dash));
  const seq = BigInt(streamId.slice(dash + 1));
  if (seq >= 1_000_000n) throw new RangeError(`stream sequence too large in ${streamId}`);
  return ms * 1_000_000n + seq;
}

/** The stream id of a position (inverse of streamPosition). */
export function streamIdOf(position: bigint): string {
  return `${position / 1_000_000n}-${position % 1_000_000n}`;
}

/** When the entry at a position was appended (epoch ms): a stream id's time part. */
export function positionTimeMs(position: bigint): number {
  return Number(position / 1_000_000n);
}

/** An entry as read from a log, decoded; a poison entry (undecodable) keeps only its raw text. */
export function receivedEntry(streamId: string, raw: string): ReceivedEntry {
  let entry: StreamEntry | undefined;
  try {
    entry = decodeStreamEntry(raw);
  } catch {
    entry = undefined;
  }
  return { streamId, entry, raw };
}

/** What a gateway asks the log to accept: what the product knows; each engine builds its own keys from it. */
export interface AcceptRequest {
  /** The conversation the entry belongs to (RedisNames.roomId): it decides the partition. */
  conversation: string;
  entry: StreamEntry;
  /**
   * The sender's client_id in this conversation, when it gave one: a retry within the idempotency
   * TTL gets the original `live.frame` back and stores nothing.
   */
  clientId?: string | undefined;
  /** The live event published on the conversation's channel with the entry, and the bare chat_message frame kept for retries. */
  live?: { envelope: string; frame: string } | undefined;
}

export type AcceptResult =
  | { kind: "accepted"; streamId: string }
  /** The sender's client_id was accepted before: nothing new was stored; `frame` is the original chat_message. */
  | { kind: "duplicate"; frame: string }
  /** Only from a log that enforces the sender's rate limit itself (see RedisMessageLogOptions.rate): nothing was stored. */
  | { kind: "rate_limited"; retryAfterMs: number }
  /**
   * In the log, but it reached fewer replicas than required within the bound (RedisMessageLogOptions.replicas):
   * a failover now could lose it. The sender is told to retry with the same client_id.
   */
  | { kind: "unreplicated"; streamId: string; replicas: number; wanted: number };

/**
 * The log of accepted client entries, in partitions: a conversation's entries all go to one partition
 * (partitionOf), in the order accepted; positions (`<ms>-<seq>`, see streamPosition) only grow within
 * a partition. Consumers (workers) read a partition through `partition(i)`.
 */
export interface MessageLog {
  readonly partitions: number;
  partitionOf(conversation: string): number;
  /**
   * Accepts one client entry atomically: its client_id (a retry gets the original frame back and
   * stores nothing), then append and publish the live event. A message is accepted exactly when it is
   * in the log. The sender's rate limit is a RateLimiter's, taken before, unless the log was built to
   * enforce it itself in the same step (RedisMessageLogOptions.rate).
   */
  accept(request: AcceptRequest): Promise<AcceptResult>;
  /** Appends one entry without the checks of `accept` (tools that fill a log: benchmarks, tests). */
  append(conversation: string, entry: StreamEntry): Promise<string>;
  /**
   * Entries of the conversation's partition strictly between `afterId` ("-": the start) and `beforeId`
   * (null: the end), newest first, at most `count`: a reader pages backwards with the last id it got,
   * holding one page at a time. Other conversations of the partition are among them.
   */
  rangeBetween(conversation: string, afterId: string, beforeId: string | null, count: number): Promise<ReceivedEntry[]>;
  /**
   * The entry of message `id` if it is still in the conversation's partition, looked for only among
   * entries appended from `fromMs` to `toMs` (a UUIDv7 id carries its creation time) and among at most
   * `maxEntries` of them: bounded work whatever else the log holds, and only the match is returned.
   */
  findMessage(conversation: string, id: string, window: { fromMs: number; toMs: number; maxEntries: number }): Promise<ReceivedEntry | null>;
  /** The consumer side of one partition. */
  partition(partition: number): LogPartition;
  /**
   * Reads many partitions at once, for a consumer that owns several; absent, or undefined, where the
   * engine cannot (see MultiPartitionReader).
   */
  openMultiReader?(): MultiPartitionReader | undefined;
}

/**
 * The new entries of several partitions in one command, and their acknowledgements in one round trip.
 * Read one by one, each partition costs the log a blocked reader, a wake-up and a reply per round:
 * on a single Redis with 16 partitions that made the log's CPU per message 10–15 % higher than with
 * one stream (docs/benchmarks.md). On a Redis Cluster streams of different slots never share a
 * command, so there partitions are read one by one.
 */
export interface MultiPartitionReader {
  /**
   * New entries of the given partitions for this consumer, by partition (only those that have some);
   * waits up to blockMs when none has any (null: returns at once).
   */
  read(partitions: readonly number[], consumer: string, count: number, blockMs: number | null): Promise<Map<number, ReceivedEntry[]>>;
  /** Acknowledges each partition's written entries. */
  ack(acks: ReadonlyMap<number, readonly string[]>): Promise<void>;
  /**
   * Makes a blocking read in flight return at once, with nothing (so a partition added meanwhile is
   * read at the next round, not after blockMs). May instead cut short the read that follows: harmless.
   */
  interrupt(): Promise<void>;
  /** Frees the connection its blocking reads wait on. */
  close(): Promise<void>;
}

/**
 * One partition as its consumers see it, shared by every consumer of one group. At-least-once: an
 * entry stays pending until acknowledged, and one pending longer than `claim`'s idle time is handed to
 * another consumer, so consumers must be idempotent (the message id is the key).
 */
export interface LogPartition {
  /** Which partition of the log this is. */
  readonly index: number;
  /** Makes sure the consumer group exists, starting at the beginning of the partition. */
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
  /** Frees what this view holds of its own (a connection), once its consumer stopped. */
  close?(): Promise<void>;
}
