import type postgres from "postgres";
import {
  encodeStreamEntry,
  entryPrefixOf,
  receivedEntry,
  streamIdOf,
  streamPosition,
  type AcceptRequest,
  type AcceptResult,
  type LogPartition,
  type MessageEntry,
  type MessageLog,
  type Publisher,
  type ReceivedEntry,
  type StreamEntry,
} from "@chat/bus";

/** How long the gateway remembers a client_id, and what a retry gets back (see AcceptRequest). */
export interface IdempotencyRestore {
  ttlSeconds: number;
  /** The serialized chat_message of an accepted entry, as the gateway sends it. */
  frameOf(entry: MessageEntry): string;
}

/**
 * The message log of the embedded engine: a table (message_log) of the embedded database instead of
 * a Redis stream, so an accepted message survives a crash of the process. One partition, as one
 * process consumes it. One process owns it: client_ids live in memory (those accepted within the idempotency TTL are
 * recovered from the database on open, as Redis keeps them across a gateway crash), and positions
 * come from a clock kept here, above every position already used. The process's client has one
 * connection (see EmbeddedPostgres), so positions commit, and live events go out, in the order
 * they were assigned.
 */
export class PostgresMessageLog implements MessageLog, LogPartition {
  readonly partitions = 1;
  readonly index = 0;
  private lastMs = 0;
  private lastSeq = 0;
  private readonly clientIds = new Map<string, { frame: string; expiresAt: number }>();
  private readonly waiters = new Set<() => void>();
  private sweeps = 0;

  private constructor(
    private readonly sql: postgres.Sql,
    private readonly publisher: Publisher,
    /** The channel a conversation's live events go to. */
    private readonly channelOf: (conversation: string) => string,
    private readonly idempotencyTtlSeconds: number,
    private readonly now: () => number,
  ) {}

  /**
   * Opens the log: positions continue above the last one used (log, messages or read watermarks),
   * and entries delivered to a consumer of an earlier run go back to undelivered.
   */
  static async open(
    sql: postgres.Sql,
    publisher: Publisher,
    channelOf: (conversation: string) => string,
    idempotency: IdempotencyRestore,
    now: () => number = Date.now,
  ): Promise<PostgresMessageLog> {
    const log = new PostgresMessageLog(sql, publisher, channelOf, idempotency.ttlSeconds, now);
    await log.restoreClientIds(idempotency);
    const [row] = await sql<{ last: bigint | null }[]>`
      SELECT GREATEST(
        (SELECT max(position) FROM message_log),
        (SELECT max(stream_position) FROM messages),
        (SELECT max(read_position) FROM conversation_members)) AS last`;
    const last = row?.last ?? 0n;
    log.lastMs = Number(last / 1_000_000n);
    log.lastSeq = Number(last % 1_000_000n);
    await sql`UPDATE message_log SET consumer = NULL, delivered_at = NULL WHERE consumer IS NOT NULL`;
    return log;
  }

  /**
   * Remembers again the client_ids of messages accepted within the TTL before this process started
   * (persisted, or still in the log), with the chat_message a retry gets back: without this, a
   * client retrying after a crash, as the protocol tells it to, would store its message twice.
   */
  private async restoreClientIds({ ttlSeconds, frameOf }: IdempotencyRestore): Promise<void> {
    const sinceMs = this.now() - ttlSeconds * 1000;
    const since = (BigInt(Math.max(0, sinceMs)) * 1_000_000n).toString();
    const remember = (e: MessageEntry, position: bigint) => {
      if (e.client_id === undefined) return;
      const expiresAt = Number(position / 1_000_000n) + ttlSeconds * 1000;
      this.clientIds.set(clientIdKey(e.from, e.to, e.client_id), { frame: frameOf(e), expiresAt });
    };
    // A full scan of recent rows, once at start-up (messages has no index on the position alone).
    const stored = await this.sql<
      { position: bigint; id: string; from_user: string; to_user: string; content: string; multimedia_url: string | null; client_id: string; date_added: Date }[]
    >`
      SELECT stream_position AS position, id::text AS id, from_user, to_user, content, multimedia_url, client_id, date_added
      FROM messages WHERE client_id IS NOT NULL AND stream_position > ${since} ORDER BY stream_position`;
    for (const r of stored) {
      const e: MessageEntry = {
        kind: "message",
        id: r.id,
        from: r.from_user,
        to: r.to_user,
        message: r.content,
        multimedia_url: r.multimedia_url,
        client_id: r.client_id,
        date_added: new Date(r.date_added).toISOString(),
      };
      remember(e, r.position);
    }
    const pending = await this.sql<{ position: bigint; entry: string }[]>`
      SELECT position, entry FROM message_log WHERE position > ${since} ORDER BY position`;
    for (const r of pending) {
      const { entry } = receivedEntry(streamIdOf(r.position), r.entry);
      if (entry?.kind === "message") remember(entry, r.position);
    }
  }

  partitionOf(): number {
    return 0;
  }

  partition(): LogPartition {
    return this;
  }

  async accept({ conversation, entry, clientId, live }: AcceptRequest): Promise<AcceptResult> {
    const now = this.now();
    this.forgetExpired(now);
    // Checked and reserved before the first await: two copies sent at once cannot both pass.
    let key: string | null = null;
    if (clientId !== undefined) {
      if (entry.kind !== "message") throw new TypeError("only a chat message carries a client_id");
      key = clientIdKey(entry.from, entry.to, clientId);
      const original = this.clientIds.get(key);
      if (original) return { kind: "duplicate", frame: original.frame };
      this.clientIds.set(key, { frame: live?.frame ?? "", expiresAt: now + this.idempotencyTtlSeconds * 1000 });
    }
    let id: string;
    try {
      id = await this.insert(entry);
    } catch (err) {
      if (key !== null) this.clientIds.delete(key);
      throw err;
    }
    if (live) await this.publisher.publish(this.channelOf(conversation), live.envelope);
    return { kind: "accepted", streamId: id };
  }

  append(_conversation: string, entry: StreamEntry): Promise<string> {
    return this.insert(entry);
  }

  async rangeBetween(_conversation: string, afterId: string, beforeId: string | null, count: number): Promise<ReceivedEntry[]> {
    const after = afterId === "-" ? -1n : streamPosition(afterId);
    // Past every position when open-ended (positions fit a bigint until 2262).
    const before = beforeId === null ? 9_000_000_000_000_000_000n : streamPosition(beforeId);
    const rows = await this.sql<{ position: bigint; entry: string }[]>`
      SELECT position, entry FROM message_log WHERE position > ${after.toString()} AND position < ${before.toString()}
      ORDER BY position DESC LIMIT ${count}`;
    return rows.map((r) => receivedEntry(streamIdOf(r.position), r.entry));
  }

  async findMessage(_conversation: string, id: string, window: { fromMs: number; toMs: number; maxEntries: number }): Promise<ReceivedEntry | null> {
    const from = BigInt(Math.max(0, Math.floor(window.fromMs))) * 1_000_000n;
    const to = BigInt(Math.max(0, Math.floor(window.toMs)) + 1) * 1_000_000n;
    const prefix = entryPrefixOf(id);
    // Only the match leaves the database; the window and the row bound keep the scan small.
    const [row] = await this.sql<{ position: bigint; entry: string }[]>`
      SELECT position, entry FROM (
        SELECT position, entry FROM message_log WHERE position >= ${from.toString()} AND position < ${to.toString()}
        ORDER BY position LIMIT ${window.maxEntries}) w
      WHERE left(entry, ${prefix.length}) = ${prefix} LIMIT 1`;
    return row ? receivedEntry(streamIdOf(row.position), row.entry) : null;
  }

  async ensureGroup(): Promise<void> {
    // One implicit group: every row not yet acknowledged belongs to it.
  }

  async read(consumer: string, count: number, blockMs: number | null): Promise<ReceivedEntry[]> {
    const entries = await this.deliver(consumer, count, null);
    if (entries.length > 0 || blockMs === null) return entries;
    await this.waitForAppend(blockMs);
    return this.deliver(consumer, count, null);
  }

  claim(consumer: string, minIdleMs: number, count: number): Promise<ReceivedEntry[]> {
    return this.deliver(consumer, count, minIdleMs);
  }

  async ack(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.sql`DELETE FROM message_log WHERE position = ANY(${positionsArray(ids)}::bigint[])`;
  }

  async trimAcknowledged(): Promise<number> {
    // Acknowledging deletes the row: nothing acknowledged is left to trim.
    return 0;
  }

  async backlog(): Promise<{ lag: number; pending: number }> {
    const [row] = await this.sql<{ lag: number; pending: number }[]>`
      SELECT count(*) FILTER (WHERE consumer IS NULL)::int AS lag, count(*) FILTER (WHERE consumer IS NOT NULL)::int AS pending
      FROM message_log`;
    return row ?? { lag: 0, pending: 0 };
  }

  async deadLetter(fields: Readonly<Record<string, string>>): Promise<void> {
    await this.sql`INSERT INTO message_log_dead (fields) VALUES (${this.sql.json({ ...fields })})`;
  }

  private async insert(entry: StreamEntry): Promise<string> {
    const position = this.nextPosition();
    await this.sql`INSERT INTO message_log (position, entry) VALUES (${position.toString()}, ${encodeStreamEntry(entry)})`;
    for (const wake of this.waiters) wake();
    return streamIdOf(position);
  }

  /** Marks up to `count` undelivered rows (or, claiming, rows delivered at least `idleMs` ago) as delivered to `consumer`. */
  private async deliver(consumer: string, count: number, idleMs: number | null): Promise<ReceivedEntry[]> {
    const rows =
      idleMs === null
        ? await this.sql<{ position: bigint; entry: string }[]>`
            UPDATE message_log SET consumer = ${consumer}, delivered_at = now()
            WHERE position IN (SELECT position FROM message_log WHERE consumer IS NULL ORDER BY position LIMIT ${count})
            RETURNING position, entry`
        : await this.sql<{ position: bigint; entry: string }[]>`
            UPDATE message_log SET consumer = ${consumer}, delivered_at = now()
            WHERE position IN (
              SELECT position FROM message_log
              WHERE consumer IS NOT NULL AND delivered_at < now() - ${idleMs} * interval '1 millisecond'
              ORDER BY position LIMIT ${count})
            RETURNING position, entry`;
    return [...rows].sort((a, b) => (a.position < b.position ? -1 : 1)).map((r) => receivedEntry(streamIdOf(r.position), r.entry));
  }

  private waitForAppend(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.waiters.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.waiters.add(wake);
    });
  }

  /** Like a Redis stream id: the clock in ms and a sequence within the ms, never going back. */
  private nextPosition(): bigint {
    const now = this.now();
    if (now > this.lastMs) {
      this.lastMs = now;
      this.lastSeq = 0;
    } else if (++this.lastSeq >= 1_000_000) {
      this.lastMs++;
      this.lastSeq = 0;
    }
    return BigInt(this.lastMs) * 1_000_000n + BigInt(this.lastSeq);
  }

  private forgetExpired(now: number): void {
    // Amortized: a full sweep every 1,000 accepts keeps the map bounded by the live senders.
    if (++this.sweeps % 1000 !== 0) return;
    for (const [k, v] of this.clientIds) if (v.expiresAt <= now) this.clientIds.delete(k);
  }
}

/** A sender's client_id in one conversation (usernames never contain '|'). */
const clientIdKey = (from: string, to: string, clientId: string): string => `${from}|${to}|${clientId}`;

/** Stream ids as a Postgres array literal; streamPosition validates each id (digits only). */
const positionsArray = (ids: readonly string[]): string => `{${ids.map((id) => streamPosition(id).toString()).join(",")}}`;
