import type postgres from "postgres";
import type { DbClient } from "../client.js";

export interface NewMessage {
  id: string;
  streamPosition: bigint;
  fromUser: string;
  toUser: string;
  roomId: string;
  content: string;
  multimediaUrl: string | null;
  fileIdentifier: string | null;
  multimediaUrlExpiration: string | null;
  clientId: string | null;
  dateAdded: string;
}

export interface ReadReceipt {
  /** Everything `otherUser` sent `reader` before this stream position is read. */
  streamPosition: bigint;
  reader: string;
  otherUser: string;
}

/** The counters after a batch committed, for the notifications. */
export interface BatchOutcome {
  /** Ids of the messages this batch wrote (those already persisted by an earlier attempt are absent). */
  inserted: Set<string>;
  /** `${username}\n${other}` -> unread count of that user from that partner. */
  pairUnread: Map<string, number>;
  /** username -> total unread count. */
  totalUnread: Map<string, number>;
}

export const pairKey = (username: string, other: string): string => `${username}\n${other}`;

interface PairState {
  username: string;
  other: string;
  readTo: bigint | null;
  newUnread: NewMessage[];
  last: NewMessage | null;
}

/** How long a batch waits for a connection before giving up (see ReserveTimeoutError). */
const RESERVE_TIMEOUT_MS = 10_000;

/**
 * No connection could be reserved in time. postgres.js 3.4 can leave reserve() waiting forever
 * after the server restarted (porsager/postgres#1195): the caller should replace its pool.
 */
export class ReserveTimeoutError extends Error {
  override readonly name = "ReserveTimeoutError";
  readonly code = "db_reserve_timeout";
}

/** How long a batch may take, connection in hand, before the connection is presumed dead (see BatchStalledError). */
export const DEFAULT_STALL_TIMEOUT_MS = 30_000;

/**
 * A batch's statements stopped answering: its connection neither replied nor failed for
 * the stall timeout (a batch takes milliseconds). Seen once under load around a Postgres restart,
 * where the worker then waited forever in silence. Like ReserveTimeoutError, the caller should
 * replace its pool, which destroys the stuck connection.
 */
export class BatchStalledError extends Error {
  override readonly name = "BatchStalledError";
  readonly code = "db_batch_stalled";
}

/** `work`, or `timeoutError()` once `ms` pass without it settling (`work` itself is not cancelled). */
function within<T>(work: Promise<T>, ms: number, timeoutError: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timeoutError()), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

async function reserveWithin(client: DbClient, ms: number): Promise<postgres.ReservedSql> {
  const reserving = client.sql.reserve();
  try {
    return await within(reserving, ms, () => new ReserveTimeoutError(`no Postgres connection within ${ms} ms`));
  } catch (err) {
    // Should the reservation still succeed later, hand the connection straight back.
    void reserving.then((conn) => conn.release(), () => {});
    throw err;
  }
}

/** Namespace of the per-user advisory locks (pg_advisory_lock(int, int)); arbitrary constant. */
const USER_LOCK_SPACE = 72_026;

/**
 * Persists a batch of stream entries in one transaction, idempotently: a message id already present
 * is skipped, counters move only for rows actually inserted, and a read recount sees every message
 * committed before it.
 *
 * Writers of the same user are serialized by a per-user advisory lock, taken (in key order, so two
 * workers never deadlock) before anything else and held past the commit until `afterCommit` has run.
 * So whatever `afterCommit` announces, it announces in commit order per user, after the data is
 * visible: the last count a client hears is the persisted one.
 */
export async function persistBatch(
  client: DbClient,
  newMessages: readonly NewMessage[],
  reads: readonly ReadReceipt[],
  afterCommit?: (outcome: BatchOutcome) => Promise<void>,
  stallTimeoutMs: number = DEFAULT_STALL_TIMEOUT_MS,
): Promise<BatchOutcome> {
  const users = new Set<string>();
  for (const m of newMessages) users.add(m.fromUser).add(m.toUser);
  for (const r of reads) users.add(r.reader).add(r.otherUser);
  const conn = await reserveWithin(client, RESERVE_TIMEOUT_MS);
  const work = (async () => {
    try {
      // Session-level locks: they outlive the transaction, until afterCommit is done. This is the
      // first statement on a possibly new connection, before postgres.js knows the array types: it
      // passes a plain array of non-null strings, which serializes right without them; the
      // statements after it use conn.array (whose NULLs need the fetched types).
      await conn`SELECT pg_advisory_lock(${USER_LOCK_SPACE}, h) FROM (
                   SELECT DISTINCT hashtext(u) AS h FROM unnest(${[...users]}::text[]) AS u ORDER BY h) AS keys`;
      await conn`BEGIN`;
      let outcome: BatchOutcome;
      try {
        outcome = await writeBatch(conn, newMessages, reads);
        await conn`COMMIT`;
      } catch (err) {
        await conn`ROLLBACK`.catch(() => {});
        throw err;
      }
      await afterCommit?.(outcome);
      return outcome;
    } finally {
      await conn`SELECT pg_advisory_unlock_all()`.catch(() => {});
      conn.release();
    }
  })();
  // A stalled attempt is abandoned, not awaited: its connection goes down with the replaced pool.
  work.catch(() => {});
  return within(work, stallTimeoutMs, () => new BatchStalledError(`a batch got no answer from Postgres for ${stallTimeoutMs} ms`));
}

/**
 * The batch on the reserved connection, in raw SQL: the hot path of the worker, where building a
 * query per row through the ORM cost more than the database work (see docs/benchmarks.md). Every
 * statement is set-based (unnest of arrays), so a batch is a fixed handful of round trips.
 */
async function writeBatch(conn: postgres.ReservedSql, newMessages: readonly NewMessage[], reads: readonly ReadReceipt[]): Promise<BatchOutcome> {
  const inserted = new Set<string>();
  if (newMessages.length > 0) {
    const col = <T>(f: (m: NewMessage) => T) => conn.array(newMessages.map(f) as never[]);
    const rows = await conn<{ id: string }[]>`
      INSERT INTO messages (id, stream_position, room_id, from_user, to_user, content, multimedia_url,
                            file_identifier, multimedia_url_expiration, client_id, date_added)
      SELECT * FROM unnest(${col((m) => m.id)}::uuid[], ${col((m) => m.streamPosition.toString())}::bigint[],
                           ${col((m) => m.roomId)}::text[], ${col((m) => m.fromUser)}::text[], ${col((m) => m.toUser)}::text[],
                           ${col((m) => m.content)}::text[], ${col((m) => m.multimediaUrl)}::text[], ${col((m) => m.fileIdentifier)}::text[],
                           ${col((m) => m.multimediaUrlExpiration)}::timestamptz[], ${col((m) => m.clientId)}::text[],
                           ${col((m) => m.dateAdded)}::timestamptz[])
      ON CONFLICT (id) DO NOTHING
      RETURNING id`;
    for (const r of rows) inserted.add(r.id);
  }

  const pairs = new Map<string, PairState>();
  const pair = (username: string, other: string): PairState => {
    const key = pairKey(username, other);
    let p = pairs.get(key);
    if (!p) pairs.set(key, (p = { username, other, readTo: null, newUnread: [], last: null }));
    return p;
  };
  for (const m of newMessages) {
    if (!inserted.has(m.id)) continue;
    const recipient = pair(m.toUser, m.fromUser);
    recipient.newUnread.push(m);
    recipient.last = m;
    pair(m.fromUser, m.toUser).last = m;
  }
  for (const r of reads) {
    const p = pair(r.reader, r.otherUser);
    if (p.readTo === null || r.streamPosition > p.readTo) p.readTo = r.streamPosition;
  }
  const outcome: BatchOutcome = { inserted, pairUnread: new Map(), totalUnread: new Map() };
  if (pairs.size === 0) return outcome;

  const ordered = [...pairs.values()];
  const users = conn.array(ordered.map((p) => p.username));
  const others = conn.array(ordered.map((p) => p.other));
  // The per-user advisory locks (persistBatch) serialize every writer of these rows: no row locks needed.
  const current = await conn<{ username: string; other_username: string; unread_count: number; read_position: bigint }[]>`
    INSERT INTO conversation_members AS cm (username, other_username)
    SELECT * FROM unnest(${users}::text[], ${others}::text[])
    ON CONFLICT (username, other_username) DO UPDATE SET username = cm.username
    RETURNING username, other_username, unread_count, read_position`;
  const rowOf = new Map(current.map((r) => [pairKey(r.username, r.other_username), r]));

  // Reads recount the messages past the new watermark (index messages_unread_idx), all in one statement.
  const recount = ordered.filter((p) => p.readTo !== null);
  const readTo = (p: PairState): bigint => {
    const old = BigInt(rowOf.get(pairKey(p.username, p.other))!.read_position);
    return p.readTo !== null && p.readTo > old ? p.readTo : old;
  };
  const counted = new Map<string, number>();
  if (recount.length > 0) {
    const rows = await conn<{ username: string; other: string; n: string }[]>`
      SELECT v.username, v.other, (SELECT count(*) FROM messages m
                                   WHERE m.to_user = v.username AND m.from_user = v.other AND m.stream_position > v.read_to) AS n
      FROM unnest(${conn.array(recount.map((p) => p.username))}::text[], ${conn.array(recount.map((p) => p.other))}::text[],
                  ${conn.array(recount.map((p) => readTo(p).toString()))}::bigint[]) AS v(username, other, read_to)`;
    for (const r of rows) counted.set(pairKey(r.username, r.other), Number(r.n));
  }

  const totalDelta = new Map<string, number>();
  for (const p of ordered) {
    const row = rowOf.get(pairKey(p.username, p.other))!;
    const to = readTo(p);
    const unread = counted.get(pairKey(p.username, p.other)) ?? row.unread_count + p.newUnread.filter((m) => m.streamPosition > to).length;
    outcome.pairUnread.set(pairKey(p.username, p.other), unread);
    totalDelta.set(p.username, (totalDelta.get(p.username) ?? 0) + unread - row.unread_count);
  }
  await conn`
    UPDATE conversation_members AS cm SET
      unread_count = v.unread,
      read_position = v.read_to,
      last_message_id = CASE WHEN v.last_id IS NOT NULL AND (cm.last_activity_at IS NULL OR v.last_at >= cm.last_activity_at)
                             THEN v.last_id ELSE cm.last_message_id END,
      last_activity_at = CASE WHEN v.last_at IS NOT NULL AND (cm.last_activity_at IS NULL OR v.last_at >= cm.last_activity_at)
                              THEN v.last_at ELSE cm.last_activity_at END
    FROM unnest(${users}::text[], ${others}::text[],
                ${conn.array(ordered.map((p) => outcome.pairUnread.get(pairKey(p.username, p.other))!))}::integer[],
                ${conn.array(ordered.map((p) => readTo(p).toString()))}::bigint[],
                ${conn.array(ordered.map((p) => p.last?.id ?? null) as never[])}::uuid[],
                ${conn.array(ordered.map((p) => p.last?.dateAdded ?? null) as never[])}::timestamptz[])
         AS v(username, other_username, unread, read_to, last_id, last_at)
    WHERE cm.username = v.username AND cm.other_username = v.other_username`;

  const deltas = [...totalDelta];
  const totals = await conn<{ username: string; total: number }[]>`
    INSERT INTO user_unread AS u (username, total)
    SELECT * FROM unnest(${conn.array(deltas.map(([u]) => u))}::text[], ${conn.array(deltas.map(([, d]) => d))}::integer[])
    ON CONFLICT (username) DO UPDATE SET total = u.total + EXCLUDED.total
    RETURNING username, total`;
  for (const t of totals) outcome.totalUnread.set(t.username, t.total);
  return outcome;
}
