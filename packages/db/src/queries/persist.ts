import { and, eq, sql, type SQL } from "drizzle-orm";
import { drizzle } from "drizzle-orm/postgres-js";
import type { DbClient } from "../client.js";
import * as schema from "../schema.js";
import { conversationMembers, messages, userUnread } from "../schema.js";

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
): Promise<BatchOutcome> {
  const users = new Set<string>();
  for (const m of newMessages) users.add(m.fromUser).add(m.toUser);
  for (const r of reads) users.add(r.reader).add(r.otherUser);
  const conn = await client.sql.reserve();
  try {
    // Session-level locks: they outlive the transaction, until afterCommit is done.
    await conn`SELECT pg_advisory_lock(${USER_LOCK_SPACE}, h) FROM (
                 SELECT DISTINCT hashtext(u) AS h FROM unnest(${[...users]}::text[]) AS u ORDER BY h) AS keys`;
    await conn`BEGIN`;
    let outcome: BatchOutcome;
    try {
      outcome = await writeBatch(onConnection(client, conn), newMessages, reads);
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
}

type Db = import("../client.js").Db;

/**
 * Drizzle on one reserved connection. A reserved postgres.js connection lacks the `options` that
 * drizzle reads its type parsers from; they are the pool's, which drizzle already configured.
 */
function onConnection(client: DbClient, conn: object): Db {
  Object.assign(conn, { options: client.sql.options });
  return drizzle(conn as typeof client.sql, { schema }) as unknown as Db;
}

async function writeBatch(tx: Db, newMessages: readonly NewMessage[], reads: readonly ReadReceipt[]): Promise<BatchOutcome> {
  const inserted = new Set<string>();
  if (newMessages.length > 0) {
    const rows = await tx
      .insert(messages)
      .values(newMessages.map((m) => ({ ...m })))
      .onConflictDoNothing({ target: messages.id })
      .returning({ id: messages.id });
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

  const ordered = [...pairs.values()].sort((a, b) =>
    a.username < b.username ? -1 : a.username > b.username ? 1 : a.other < b.other ? -1 : a.other > b.other ? 1 : 0,
  );
  await tx
    .insert(conversationMembers)
    .values(ordered.map((p) => ({ username: p.username, otherUsername: p.other })))
    .onConflictDoNothing();
  const keys = sql.join(
    ordered.map((p) => sql`(${p.username}, ${p.other})`),
    sql`, `,
  );
  const locked = await tx.execute<{ username: string; other_username: string; unread_count: number; read_position: bigint }>(
    sql`SELECT username, other_username, unread_count, read_position FROM conversation_members
        WHERE (username, other_username) IN (${keys})
        ORDER BY username, other_username FOR UPDATE`,
  );
  const current = new Map(locked.map((r) => [pairKey(r.username, r.other_username), r]));

  const updates: SQL[] = [];
  const totalDelta = new Map<string, number>();
  for (const p of ordered) {
    const row = current.get(pairKey(p.username, p.other));
    if (!row) throw new Error(`conversation member row missing for ${p.username}/${p.other}`);
    const oldRead = BigInt(row.read_position);
    const readTo = p.readTo !== null && p.readTo > oldRead ? p.readTo : oldRead;
    let unread: number;
    if (p.readTo !== null) {
      // A fresh statement after the lock: it sees every message committed before we got the row.
      const [counted] = await tx
        .select({ n: sql<string>`count(*)` })
        .from(messages)
        .where(and(eq(messages.toUser, p.username), eq(messages.fromUser, p.other), sql`${messages.streamPosition} > ${readTo}`));
      unread = Number(counted?.n ?? 0);
    } else {
      unread = row.unread_count + p.newUnread.filter((m) => m.streamPosition > readTo).length;
    }
    outcome.pairUnread.set(pairKey(p.username, p.other), unread);
    totalDelta.set(p.username, (totalDelta.get(p.username) ?? 0) + unread - row.unread_count);
    updates.push(
      sql`(${p.username}, ${p.other}, ${unread}::integer, ${readTo}::bigint, ${p.last?.id ?? null}::uuid, ${p.last?.dateAdded ?? null}::timestamptz)`,
    );
  }
  await tx.execute(sql`
    UPDATE conversation_members AS cm SET
      unread_count = v.unread,
      read_position = v.read_to,
      last_message_id = CASE WHEN v.last_id IS NOT NULL AND (cm.last_activity_at IS NULL OR v.last_at >= cm.last_activity_at)
                             THEN v.last_id ELSE cm.last_message_id END,
      last_activity_at = CASE WHEN v.last_at IS NOT NULL AND (cm.last_activity_at IS NULL OR v.last_at >= cm.last_activity_at)
                              THEN v.last_at ELSE cm.last_activity_at END
    FROM (VALUES ${sql.join(updates, sql`, `)}) AS v(username, other_username, unread, read_to, last_id, last_at)
    WHERE cm.username = v.username AND cm.other_username = v.other_username`);

  // One upsert per user, in key order: it waits for any other writer of that user's total and
  // returns the total including what that writer committed.
  for (const [username, delta] of [...totalDelta].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const [row] = await tx
      .insert(userUnread)
      .values({ username, total: delta })
      .onConflictDoUpdate({ target: userUnread.username, set: { total: sql`${userUnread.total} + ${delta}` } })
      .returning({ total: userUnread.total });
    outcome.totalUnread.set(username, row!.total);
  }
  return outcome;
}
