import { sql } from "drizzle-orm";
import { bigint, bigserial, index, integer, jsonb, pgTable, primaryKey, text, timestamp, uuid } from "drizzle-orm/pg-core";

/** Every persisted chat message. Written only by the worker, keyed by the gateway-assigned id. */
export const messages = pgTable(
  "messages",
  {
    id: uuid("id").primaryKey(),
    /** The entry's position in the Redis stream (see @chat/bus streamPosition); orders reads against messages. */
    streamPosition: bigint("stream_position", { mode: "bigint" }).notNull(),
    /** The conversation: the two usernames in order, `a:b`; for a group, `#<group id>`. */
    roomId: text("room_id").notNull(),
    fromUser: text("from_user").notNull(),
    /** The recipient; for a group, `#<group id>` (no username starts with '#'). */
    toUser: text("to_user").notNull(),
    content: text("content").notNull(),
    multimediaUrl: text("multimedia_url"),
    fileIdentifier: text("file_identifier"),
    multimediaUrlExpiration: timestamp("multimedia_url_expiration", { withTimezone: true, mode: "string" }),
    clientId: text("client_id"),
    dateAdded: timestamp("date_added", { withTimezone: true, mode: "string" }).notNull(),
    /**
     * A group's system event (who created it, added or removed whom, renamed it) as JSON; null for a
     * chat message. Written by the API with the membership change, never counted as unread.
     */
    event: text("event"),
  },
  (t) => [
    // Unread recount after a read: only the messages past the reader's watermark are visited.
    index("messages_unread_idx").on(t.toUser, t.fromUser, t.streamPosition),
    // Media access: which conversations reference a file. Partial: text messages (most) have none.
    index("messages_file_idx").on(t.fileIdentifier).where(sql`${t.fileIdentifier} IS NOT NULL`),
    // History pages and catch-up walk a conversation in stream order.
    index("messages_room_position_idx").on(t.roomId, t.streamPosition),
  ],
);

/**
 * One row per user and conversation: the unread counter and the read watermark. For a 1:1
 * conversation `other_username` is the partner and unread_count = messages from other_username to
 * username with stream_position > read_position. For a group it is `#<group id>`, the row is the
 * membership itself (`role` says admin or member), and unread_count = the group's chat messages from
 * anyone else past read_position.
 */
export const conversationMembers = pgTable(
  "conversation_members",
  {
    username: text("username").notNull(),
    otherUsername: text("other_username").notNull(),
    unreadCount: integer("unread_count").notNull().default(0),
    readPosition: bigint("read_position", { mode: "bigint" }).notNull().default(sql`0`),
    lastMessageId: uuid("last_message_id"),
    lastActivityAt: timestamp("last_activity_at", { withTimezone: true, mode: "string" }),
    /** A group member's role, `admin` or `member`; null for a 1:1 conversation. */
    role: text("role"),
  },
  (t) => [
    primaryKey({ columns: [t.username, t.otherUsername] }),
    // A group's members (fan-out, member list, limit). Partial: 1:1 rows (most) have no role.
    index("conversation_members_group_idx").on(t.otherUsername, t.username).where(sql`${t.role} IS NOT NULL`),
    // The conversation list's keyset order, whole: no sort of a user's conversations per page.
    index("conversation_members_activity_idx").on(t.username, t.lastActivityAt.desc(), t.otherUsername.desc()),
  ],
);

/** Group conversations: their members are conversation_members rows with other_username `#<id>`. */
export const chatGroups = pgTable("chat_groups", {
  /** UUIDv7; the public id of /api/groups/{id} and /ws/groups/{id}/. */
  id: uuid("id").primaryKey(),
  name: text("name").notNull(),
  createdBy: text("created_by").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true, mode: "string" }).notNull(),
});

/** Files uploaded through POST /api/rooms/upload; who may read one is decided from this and messages. */
export const uploads = pgTable(
  "uploads",
  {
    /** Server-chosen, safe file name: `<uuidv7>.<ext>`. */
    identifier: text("identifier").primaryKey(),
    uploader: text("uploader").notNull(),
    contentType: text("content_type").notNull(),
    sizeBytes: bigint("size_bytes", { mode: "number" }).notNull(),
    /** `local` or `s3`. */
    storage: text("storage").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "string" }).notNull().defaultNow(),
  },
  // The sweep of unreferenced files reads the oldest first.
  (t) => [index("uploads_created_idx").on(t.createdAt)],
);

/**
 * The upload quota's ledger: one row per upload attempt, reserved before the file is
 * stored (the declared size), settled to the bytes stored, or zeroed when the upload failed. A user's
 * rows of the last hour are their usage; older rows are deleted as the user reserves again.
 */
export const uploadReservations = pgTable(
  "upload_reservations",
  {
    id: uuid("id").primaryKey(),
    username: text("username").notNull(),
    bytes: bigint("bytes", { mode: "number" }).notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "string" }).notNull().defaultNow(),
  },
  (t) => [index("upload_reservations_user_idx").on(t.username, t.createdAt)],
);

/**
 * A user's unread total over all conversations: the sum of their conversation_members.unread_count,
 * kept in step in the same transactions. Its row lock orders concurrent writers per user, so the
 * total each of them announces is the persisted one.
 */
export const userUnread = pgTable("user_unread", {
  username: text("username").primaryKey(),
  total: integer("total").notNull().default(0),
});

/**
 * The message log of the embedded engine (one process, PGlite): what a Redis stream holds in a
 * cluster. An accepted entry is a row here until a worker has persisted it; acknowledging deletes
 * it. Unused with Redis.
 */
export const messageLog = pgTable(
  "message_log",
  {
    /** The entry's position, `ms * 1e6 + seq` like a Redis stream id (see @chat/bus streamPosition). */
    position: bigint("position", { mode: "bigint" }).primaryKey(),
    /** The entry as JSON text, exactly as a stream entry holds it. */
    entry: text("entry").notNull(),
    /** The consumer it was delivered to; null while not yet delivered. */
    consumer: text("consumer"),
    deliveredAt: timestamp("delivered_at", { withTimezone: true, mode: "string" }),
  },
  (t) => [index("message_log_undelivered_idx").on(t.position).where(sql`${t.consumer} IS NULL`)],
);

/** Entries of the embedded message log that can never be persisted, kept for an operator. */
export const messageLogDead = pgTable("message_log_dead", {
  id: bigserial("id", { mode: "bigint" }).primaryKey(),
  fields: jsonb("fields").notNull(),
  at: timestamp("at", { withTimezone: true, mode: "string" }).notNull().defaultNow(),
});
