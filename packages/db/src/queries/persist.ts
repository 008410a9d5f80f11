import type postgres from "postgres";
import type { DbClient } from "../client.js";
import { isDatabaseUnavailable } from "../unavailable.js";

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
  /**
   * `${username}\n${other}` -> unread count of that user from that partner, for the sides the batch
   * announces: a recipient of a message it inserted, a reader.
   */
  pairUnread: Map<string, number>;
  /** username -> total unread count, for those same users (absent: no row yet, i.e. 0). */
  totalUnread: Map<string, number>;
  /**
   * `${reader}\n${other}` -> id of the newest message of `other` that `reader` has read, after each
   * read of the batch (null: none yet), for the read receipts.
   */
  lastRead: Map<string, string | null>;
}

export const pairKey = (username: string, other: string): string => `${username}\n${other}`;

/** How long a batch waits for a connection before giving up (see ReserveTimeoutError). */
export const RESERVE_TIMEOUT_MS = 10_000;

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

export async function reserveWithin(client: DbClient, ms: number): Promise<postgres.ReservedSql> {
  const reserving = client.sql.reserve();
  try {
    return await within(reserving, ms, () => new ReserveTimeoutError(`no Postgres connection within ${ms} ms`));
  } catch (err) {
    // Should the reservation still succeed later, hand the connection straight back.
    void reserving.then((conn) => conn.release(), () => {});
    throw err;
  }
}

/**
 * The batch's connection closed under it (e.g. Postgres restarted): nothing of the batch is committed
 * unless its call returned. postgres.js 3.4 keeps such a connection in the pool in a state where its
 * next query is never answered, so the caller should replace its pool, as for ReserveTimeoutError.
 */
export class ConnectionLostError extends Error {
  override readonly name = "ConnectionLostError";
  readonly code = "db_connection_lost";
}


/** Namespace of the per-user advisory locks (pg_advisory_lock(int, int)); arbitrary constant. */
export const USER_LOCK_SPACE = 72_026;
/** Namespace of the per-group advisory locks: always taken before any user's (see chat_persist_batch). */
export const GROUP_LOCK_SPACE = USER_LOCK_SPACE + 1;

/**
 * Persists a batch of stream entries in one transaction, idempotently: a message id already present
 * is skipped, counters move only for rows actually inserted, and a read recount sees every message
 * committed before it.
 *
 * Writers of the same user are serialized by a per-user advisory lock, taken (in key order, so two
 * workers never deadlock) before anything else and held past the commit until `afterCommit` has run.
 * So whatever `afterCommit` announces, it announces in commit order per user, after the data is
 * visible: the last count a client hears is the persisted one.
 *
 * The work is one call of the SQL function chat_persist_batch (migration 0006): one round trip and
 * one implicit transaction, then the unlock once `afterCommit` is done.
 */
export async function persistBatch(
  client: DbClient,
  newMessages: readonly NewMessage[],
  reads: readonly ReadReceipt[],
  afterCommit?: (outcome: BatchOutcome) => Promise<void>,
  stallTimeoutMs: number = DEFAULT_STALL_TIMEOUT_MS,
): Promise<BatchOutcome> {
  const conn = await reserveWithin(client, RESERVE_TIMEOUT_MS);
  const work = (async () => {
    let sessionLost = false;
    try {
      let outcome: BatchOutcome;
      try {
        outcome = await writeBatch(conn, newMessages, reads);
      } catch (err) {
        sessionLost = isDatabaseUnavailable(err);
        if (sessionLost) throw new ConnectionLostError(`the batch's Postgres connection was lost: ${(err as Error).message}`, { cause: err });
        throw err;
      }
      await afterCommit?.(outcome);
      return outcome;
    } finally {
      // Also after a failed call: locks it took before failing are session-level and stay held. Not
      // when the connection is gone: its session, and the locks, went with it, and postgres.js 3.4
      // never answers a query sent on a reserved connection that just closed (it writes to a null
      // socket): the batch would wait for the stall timeout instead of failing now.
      if (!sessionLost) await conn`SELECT pg_advisory_unlock_all()`.catch(() => {});
      conn.release();
    }
  })();
  // A stalled attempt is abandoned, not awaited: its connection goes down with the replaced pool.
  work.catch(() => {});
  return within(work, stallTimeoutMs, () => new BatchStalledError(`a batch got no answer from Postgres for ${stallTimeoutMs} ms`));
}

/** Postgres' oid of `text`: every array goes as text[] (see writeBatch). */
const TEXT_OID = 25;

/** Text of an optional value for a text-typed array parameter (postgres.js serializes null as NULL). */
type Nullable = string | null;

/**
 * The batch as parallel arrays, one per column: the hot path of the worker, where building a query
 * per row through the ORM cost more than the database work (see docs/benchmarks.md). Every array is
 * passed as text[] and cast by the statement, so no element type has to be known in advance.
 */
async function writeBatch(conn: postgres.ReservedSql, newMessages: readonly NewMessage[], reads: readonly ReadReceipt[]): Promise<BatchOutcome> {
  const text = (values: readonly Nullable[]) => conn.array(values as string[], TEXT_OID);
  const col = (f: (m: NewMessage) => Nullable) => text(newMessages.map(f));
  const read = (f: (r: ReadReceipt) => string) => text(reads.map(f));
  const rows = await conn<{ o_kind: string; o_user: string | null; o_other: string | null; o_count: number | null; o_id: string | null }[]>`
    SELECT o_kind, o_user, o_other, o_count, o_id FROM chat_persist_batch(${USER_LOCK_SPACE},
      ${col((m) => m.id)}::uuid[], ${col((m) => m.streamPosition.toString())}::bigint[], ${col((m) => m.roomId)}::text[],
      ${col((m) => m.fromUser)}::text[], ${col((m) => m.toUser)}::text[], ${col((m) => m.content)}::text[],
      ${col((m) => m.multimediaUrl)}::text[], ${col((m) => m.fileIdentifier)}::text[],
      ${col((m) => m.multimediaUrlExpiration)}::timestamptz[], ${col((m) => m.clientId)}::text[], ${col((m) => m.dateAdded)}::timestamptz[],
      ${read((r) => r.reader)}::text[], ${read((r) => r.otherUser)}::text[], ${read((r) => r.streamPosition.toString())}::bigint[])`;
  const outcome: BatchOutcome = { inserted: new Set(), pairUnread: new Map(), totalUnread: new Map(), lastRead: new Map() };
  for (const r of rows) {
    if (r.o_kind === "i") outcome.inserted.add(r.o_id!);
    else if (r.o_kind === "p") outcome.pairUnread.set(pairKey(r.o_user!, r.o_other!), r.o_count!);
    else if (r.o_kind === "r") outcome.lastRead.set(pairKey(r.o_user!, r.o_other!), r.o_id);
    else outcome.totalUnread.set(r.o_user!, r.o_count!);
  }
  return outcome;
}
