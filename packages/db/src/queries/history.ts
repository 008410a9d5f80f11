import { and, asc, desc, eq, gt, lt, sql } from "drizzle-orm";
import type { Db } from "../client.js";
import { conversationMembers, messages } from "../schema.js";

export type MessageRow = typeof messages.$inferSelect;

export interface ConversationRow {
  otherUsername: string;
  unreadCount: number;
  lastActivityAt: string;
  lastMessage: MessageRow | null;
}

/** Opaque keyset cursor of the conversation list: the last row's activity time and partner. */
export function encodeConversationCursor(row: ConversationRow): string {
  return Buffer.from(JSON.stringify([row.lastActivityAt, row.otherUsername])).toString("base64url");
}

/**
 * A timestamp as Postgres writes a timestamptz (`2026-11-25 19:10:30.866+00`) or as ISO 8601 UTC:
 * four-digit year, optional fraction (microseconds at most), an explicit zone.
 */
const CURSOR_TIME = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.\d{1,6})?(?:Z|[+-](\d{2})(?::?(\d{2}))?)$/;
/** Usernames as @chat/protocol defines them (db does not depend on protocol), or a group's `#<id>`. */
const CURSOR_USER = /^(?:[A-Za-z0-9@.+\-_]{1,150}|#[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

/** Whether a cursor's time is a real instant Postgres accepts (no year 10000, no 30 February, no bare number). */
function validCursorTime(text: string): boolean {
  const m = CURSOR_TIME.exec(text);
  if (!m) return false;
  const [y, mo, d, h, mi, s, zh, zm] = m.slice(1).map((v) => (v === undefined ? 0 : Number(v)));
  if (y! < 1 || mo! < 1 || mo! > 12 || d! < 1 || h! > 23 || mi! > 59 || s! > 59 || zh! > 15 || zm! > 59) return false;
  const day = new Date(Date.UTC(y!, mo! - 1, d!));
  // Date.UTC maps years 0-99 to 1900-1999: setUTCFullYear keeps the year as written.
  day.setUTCFullYear(y!, mo! - 1, d!);
  return day.getUTCDate() === d;
}

/**
 * The position a cursor of encodeConversationCursor names, or null for anything else: exactly
 * `[time, username]` with a time Postgres accepts, so a malformed cursor is a 400, never a 500.
 */
export function decodeConversationCursor(cursor: string): { at: string; other: string } | null {
  if (!/^[A-Za-z0-9_-]{1,400}$/.test(cursor)) return null;
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"));
  } catch {
    return null;
  }
  if (!Array.isArray(value) || value.length !== 2) return null;
  const [at, other] = value as unknown[];
  if (typeof at !== "string" || typeof other !== "string" || !validCursorTime(at) || !CURSOR_USER.test(other)) return null;
  return { at, other };
}

/**
 * A user's conversations, most recent activity first (index conversation_members_activity_idx). A
 * group's row has `otherUsername` `#<group id>`; `directOnly` leaves groups out.
 */
export async function listConversations(
  db: Db,
  username: string,
  page: { limit: number; after?: { at: string; other: string } | undefined; directOnly?: boolean },
): Promise<ConversationRow[]> {
  const rows = await db
    .select({ member: conversationMembers, message: messages })
    .from(conversationMembers)
    .leftJoin(messages, eq(messages.id, conversationMembers.lastMessageId))
    .where(
      and(
        eq(conversationMembers.username, username),
        sql`${conversationMembers.lastActivityAt} IS NOT NULL`,
        page.directOnly ? sql`${conversationMembers.role} IS NULL` : undefined,
        page.after
          ? sql`(${conversationMembers.lastActivityAt}, ${conversationMembers.otherUsername}) < (${page.after.at}::timestamptz, ${page.after.other})`
          : undefined,
      ),
    )
    // NULLS LAST as in conversation_members_activity_idx, so the index gives the order.
    .orderBy(sql`${conversationMembers.lastActivityAt} DESC NULLS LAST`, sql`${conversationMembers.otherUsername} DESC NULLS LAST`)
    .limit(page.limit);
  return rows.map((r) => ({
    otherUsername: r.member.otherUsername,
    unreadCount: r.member.unreadCount,
    lastActivityAt: r.member.lastActivityAt!,
    lastMessage: r.message,
  }));
}

export async function messageById(db: Db, id: string): Promise<MessageRow | undefined> {
  const [row] = await db.select().from(messages).where(eq(messages.id, id)).limit(1);
  return row;
}

/**
 * One page of a conversation in stream order (index messages_room_position_idx). Without a pivot or
 * with `before`: newest first. With `after`: oldest first, starting right after the pivot.
 */
export async function listMessages(
  db: Db,
  roomId: string,
  page: { limit: number; before?: bigint | undefined; after?: bigint | undefined },
): Promise<MessageRow[]> {
  if (page.after !== undefined) {
    return db
      .select()
      .from(messages)
      .where(and(eq(messages.roomId, roomId), gt(messages.streamPosition, page.after)))
      .orderBy(asc(messages.streamPosition))
      .limit(page.limit);
  }
  return db
    .select()
    .from(messages)
    .where(and(eq(messages.roomId, roomId), page.before !== undefined ? lt(messages.streamPosition, page.before) : undefined))
    .orderBy(desc(messages.streamPosition))
    .limit(page.limit);
}

/**
 * How far each of the two users of a 1:1 conversation has read the other's messages (stream
 * positions, from their read_messages): a message of `a` is read once b's position reaches its own.
 * A user who never read has 0.
 */
export async function readPositions(db: Db, a: string, b: string): Promise<Map<string, bigint>> {
  const rows = await db
    .select({ username: conversationMembers.username, readPosition: conversationMembers.readPosition })
    .from(conversationMembers)
    .where(
      sql`(${conversationMembers.username}, ${conversationMembers.otherUsername}) IN ((${a}, ${b}), (${b}, ${a}))`,
    );
  const out = new Map<string, bigint>([
    [a, 0n],
    [b, 0n],
  ]);
  for (const r of rows) out.set(r.username, BigInt(r.readPosition));
  return out;
}

/**
 * Every member's read position in a group (see readPositions), by username: a message is read by
 * the members whose position reached its own.
 */
export async function groupReadPositions(db: Db, conversation: string): Promise<Map<string, bigint>> {
  const rows = await db
    .select({ username: conversationMembers.username, readPosition: conversationMembers.readPosition })
    .from(conversationMembers)
    .where(and(eq(conversationMembers.otherUsername, conversation), sql`${conversationMembers.role} IS NOT NULL`));
  return new Map(rows.map((r) => [r.username, BigInt(r.readPosition)]));
}

/** The newest `limit` chat messages of a conversation after a position, returned oldest first (a group's system events are not among them). */
export async function latestMessagesAfter(db: Db, roomId: string, after: bigint, limit: number): Promise<MessageRow[]> {
  const rows = await db
    .select()
    .from(messages)
    .where(and(eq(messages.roomId, roomId), gt(messages.streamPosition, after), sql`${messages.event} IS NULL`))
    .orderBy(desc(messages.streamPosition))
    .limit(limit);
  return rows.reverse();
}

/** Replaces a message's media URL after a presigned URL was renewed. */
export async function updateMessageMedia(db: Db, id: string, url: string, expiration: string | null): Promise<void> {
  await db.update(messages).set({ multimediaUrl: url, multimediaUrlExpiration: expiration }).where(eq(messages.id, id));
}

/**
 * Whether `username` may read an uploaded file: its uploader, or the other participant of a
 * conversation where the uploader sent it, or a member of a group where the uploader sent it. A
 * message quoting someone else's file_identifier grants nothing.
 */
export async function canReadUpload(db: Db, identifier: string, uploader: string, username: string): Promise<boolean> {
  if (uploader === username) return true;
  const [row] = await db
    .select({ id: messages.id })
    .from(messages)
    .where(
      and(
        eq(messages.fileIdentifier, identifier),
        eq(messages.fromUser, uploader),
        sql`(${messages.toUser} = ${username} OR ${messages.toUser} IN (
          SELECT ${conversationMembers.otherUsername} FROM ${conversationMembers}
          WHERE ${conversationMembers.username} = ${username} AND ${conversationMembers.role} IS NOT NULL))`,
      ),
    )
    .limit(1);
  return row !== undefined;
}
