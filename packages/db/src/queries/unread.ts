import { and, eq, sql } from "drizzle-orm";
import type { Db } from "../client.js";
import { conversationMembers } from "../schema.js";

/** A user's unread messages over all conversations (one indexed row per conversation partner). */
export async function totalUnread(db: Db, username: string): Promise<number> {
  const [row] = await db
    .select({ total: sql<string | null>`sum(${conversationMembers.unreadCount})` })
    .from(conversationMembers)
    .where(eq(conversationMembers.username, username));
  return Number(row?.total ?? 0);
}

/** A user's unread messages from one partner. */
export async function unreadFrom(db: Db, username: string, other: string): Promise<number> {
  const [row] = await db
    .select({ n: conversationMembers.unreadCount })
    .from(conversationMembers)
    .where(and(eq(conversationMembers.username, username), eq(conversationMembers.otherUsername, other)));
  return row?.n ?? 0;
}
