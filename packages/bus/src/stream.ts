import { readFileSync } from "node:fs";
import type { Redis } from "ioredis";
import type { MessageLog } from "./bus.js";
import type { RedisNames } from "./names.js";

/** A chat message the gateway accepted. The stream entry is the message's source of truth until persisted. */
export interface MessageEntry {
  kind: "message";
  /** UUIDv7, assigned by the gateway; the idempotency key of the write. */
  id: string;
  from: string;
  to: string;
  message: string;
  multimedia_url: string | null;
  file_identifier?: string;
  multimedia_url_expiration?: string;
  client_id?: string;
  /** ISO 8601 UTC, as sent to the sockets. */
  date_added: string;
}

/** `reader` read every message `other` sent them that is earlier in the stream than this entry. */
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

const FIELD = "e";

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

type XEntries = [id: string, fields: string[]][];

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

function toReceived(entries: XEntries): ReceivedEntry[] {
  const out: ReceivedEntry[] = [];
  for (const [streamId, fields] of entries) {
    // XAUTOCLAIM returns deleted entries with null fields; nothing is left to process for those.
    if (!fields) continue;
    const at = fields.indexOf(FIELD);
    out.push(receivedEntry(streamId, at >= 0 ? (fields[at + 1] ?? "") : ""));
  }
  return out;
}

export type AcceptResult =
  | { kind: "accepted"; streamId: string }
  /** The sender's client_id was accepted before: nothing new was stored; `frame` is the original chat_message. */
  | { kind: "duplicate"; frame: string }
  | { kind: "rate_limited"; retryAfterMs: number };

export interface AcceptOptions {
  /** Rate bucket key of the sender. */
  rateKey: string;
  /** Sends per second per user across the cluster; 0 disables the limit. */
  ratePerSecond: number;
  burst: number;
  /** Idempotency key of the sender's client_id in this conversation (RedisNames.clientMessage), when it gave one. */
  idempotencyKey?: string | undefined;
  idempotencyTtlSeconds: number;
  /** Where the live event goes, with its envelope and the bare frame (kept for retries). */
  channel?: string;
  envelope?: string;
  frame?: string;
}

const acceptLua = readFileSync(new URL("./lua/accept.lua", import.meta.url), "utf8");
const findMessageLua = readFileSync(new URL("./lua/find-message.lua", import.meta.url), "utf8");

/** Entries find-message.lua looks at per call: Redis copies at most this many entries into Lua at once. */
const FIND_PAGE = 100;

/** The message log as a Redis stream with one consumer group; `accept` is one Lua script (one round trip). */
export class MessageStream implements MessageLog {
  readonly stream: string;
  readonly group: string;
  private readonly deadLetterStream: string;

  constructor(
    private readonly redis: Redis,
    names: RedisNames,
  ) {
    this.stream = names.stream;
    this.group = names.group;
    this.deadLetterStream = names.deadLetterStream;
    if (!("chatAccept" in redis)) redis.defineCommand("chatAccept", { lua: acceptLua });
    if (!("chatFindMessage" in redis)) redis.defineCommand("chatFindMessage", { lua: findMessageLua, numberOfKeys: 1 });
  }

  async accept(entry: StreamEntry, o: AcceptOptions): Promise<AcceptResult> {
    const keys = o.idempotencyKey ? [this.stream, o.rateKey, o.idempotencyKey] : [this.stream, o.rateKey];
    const run = (this.redis as unknown as { chatAccept(...args: (string | number)[]): Promise<[string, string]> }).chatAccept;
    const [kind, value] = await run.call(
      this.redis,
      keys.length,
      ...keys,
      encodeStreamEntry(entry),
      o.channel ?? "",
      o.envelope ?? "",
      o.frame ?? "",
      o.ratePerSecond,
      o.burst,
      o.idempotencyTtlSeconds,
    );
    if (kind === "accepted") return { kind, streamId: value };
    if (kind === "duplicate") return { kind, frame: value };
    return { kind: "rate_limited", retryAfterMs: Number(value) };
  }

  async append(entry: StreamEntry): Promise<string> {
    return (await this.redis.xadd(this.stream, "*", FIELD, encodeStreamEntry(entry))) as string;
  }

  async rangeBetween(afterId: string, beforeId: string | null, count: number): Promise<ReceivedEntry[]> {
    const start = afterId === "-" ? "-" : `(${afterId}`;
    const end = beforeId === null ? "+" : `(${beforeId}`;
    return toReceived((await this.redis.xrevrange(this.stream, end, start, "COUNT", count)) as XEntries);
  }

  async findMessage(id: string, window: { fromMs: number; toMs: number; maxEntries: number }): Promise<ReceivedEntry | null> {
    const run = (this.redis as unknown as { chatFindMessage(...args: (string | number)[]): Promise<string[]> }).chatFindMessage;
    let start = String(Math.max(0, Math.floor(window.fromMs)));
    const end = String(Math.max(0, Math.floor(window.toMs)));
    for (let looked = 0; looked < window.maxEntries; looked += FIND_PAGE) {
      const [kind, a, b] = await run.call(this.redis, this.stream, start, end, Math.min(FIND_PAGE, window.maxEntries - looked), entryPrefixOf(id));
      if (kind === "found") return receivedEntry(a!, b!);
      if (kind !== "more") return null;
      start = `(${a!}`;
    }
    return null;
  }

  /** Creates the consumer group at the start of the stream, so no entry accepted earlier is skipped. */
  async ensureGroup(): Promise<void> {
    try {
      await this.redis.xgroup("CREATE", this.stream, this.group, "0", "MKSTREAM");
    } catch (err) {
      if (!(err instanceof Error && err.message.includes("BUSYGROUP"))) throw err;
    }
  }

  async read(consumer: string, count: number, blockMs: number | null): Promise<ReceivedEntry[]> {
    const reply = (
      blockMs === null
        ? await this.redis.xreadgroup("GROUP", this.group, consumer, "COUNT", count, "STREAMS", this.stream, ">")
        : await this.redis.xreadgroup("GROUP", this.group, consumer, "COUNT", count, "BLOCK", blockMs, "STREAMS", this.stream, ">")
    ) as [string, XEntries][] | null;
    return reply?.[0] ? toReceived(reply[0][1]) : [];
  }

  async claim(consumer: string, minIdleMs: number, count: number): Promise<ReceivedEntry[]> {
    const reply = (await this.redis.xautoclaim(this.stream, this.group, consumer, minIdleMs, "0-0", "COUNT", count)) as [
      string,
      XEntries,
      string[]?,
    ];
    return toReceived(reply[1] ?? []);
  }

  async ack(streamIds: readonly string[]): Promise<void> {
    if (streamIds.length > 0) await this.redis.xack(this.stream, this.group, ...streamIds);
  }

  async backlog(): Promise<{ lag: number; pending: number }> {
    for (const g of await this.groups()) {
      if (g["name"] === this.group) return { lag: Number(g["lag"] ?? 0), pending: Number(g["pending"] ?? 0) };
    }
    return { lag: 0, pending: 0 };
  }

  async deadLetter(fields: Readonly<Record<string, string>>): Promise<void> {
    await this.redis.xadd(this.deadLetterStream, "*", ...Object.entries(fields).flat());
  }

  private async groups(): Promise<Record<string, unknown>[]> {
    const groups = (await this.redis.xinfo("GROUPS", this.stream)) as unknown[][];
    return groups.map((g) => {
      const o: Record<string, unknown> = {};
      for (let i = 0; i + 1 < g.length; i += 2) o[String(g[i])] = g[i + 1];
      return o;
    });
  }

  /**
   * Deletes entries every consumer is done with: everything before the oldest pending entry, or
   * before the group's last delivered id when nothing is pending. Never drops an unacknowledged entry.
   */
  async trimAcknowledged(): Promise<number> {
    const info = await this.groups();
    let minId: string | undefined;
    for (const g of info) {
      const pending = (await this.redis.xpending(this.stream, String(g["name"]))) as [number, string | null, ...unknown[]];
      // Entries before the oldest pending one are acknowledged; with nothing pending, everything up to
      // and including last-delivered-id is, and MINID keeps the id given, so step past it.
      const bound = pending[0] > 0 && pending[1] ? pending[1] : nextId(String(g["last-delivered-id"]));
      if (minId === undefined || compareIds(bound, minId) < 0) minId = bound;
    }
    if (minId === undefined) return 0;
    return (await this.redis.xtrim(this.stream, "MINID", minId)) as number;
  }
}

function nextId(id: string): string {
  const [ms, seq] = id.split("-");
  return `${ms}-${BigInt(seq ?? "0") + 1n}`;
}

function compareIds(a: string, b: string): number {
  const pa = a.split("-").map(BigInt);
  const pb = b.split("-").map(BigInt);
  const d = (pa[0] ?? 0n) - (pb[0] ?? 0n) || (pa[1] ?? 0n) - (pb[1] ?? 0n);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}
