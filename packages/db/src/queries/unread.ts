import { and, eq } from "drizzle-orm";
import type { Db } from "../client.js";
import { conversationMembers, userUnread } from "../schema.js";

/** A user's unread messages over all conversations (one row, kept by the worker). */
export async function totalUnread(db: Db, username: string): Promise<number> {
  const [row] = await db.select({ total: userUnread.total }).from(userUnread).where(eq(userUnread.username, username));
  return row?.total ?? 0;
}

/** A user's unread messages from one partner. */
export async function unreadFrom(db: Db, username: string, other: string): Promise<number> {
  const [row] = await db
    .select({ n: conversationMembers.unreadCount })
    .from(conversationMembers)
    .where(and(eq(conversationMembers.username, username), eq(conversationMembers.otherUsername, other)));
  return row?.n ?? 0;
}
