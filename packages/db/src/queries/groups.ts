import type postgres from "postgres";
import type { DbClient } from "../client.js";
import { GROUP_LOCK_SPACE, RESERVE_TIMEOUT_MS, USER_LOCK_SPACE, reserveWithin } from "./persist.js";

/**
 * A group's conversation key: what messages.room_id, messages.to_user and
 * conversation_members.other_username hold for it. No username starts with '#'.
 */
export const groupConversation = (id: string): string => `#${id}`;

/** A group as the API returns it. */
export interface Group {
  id: string;
  name: string;
  /** Every member, admins included, by username. */
  members: string[];
  admins: string[];
  createdAt: string;
}

/** A membership change as the group's history records it. */
export type GroupEvent =
  | { kind: "created"; name: string; members: string[] }
  | { kind: "renamed"; name: string }
  | { kind: "member_added"; user: string }
  | { kind: "member_removed"; user: string }
  | { kind: "member_left"; user: string };

/** A system event's row in the group's history. */
export interface SystemEvent {
  id: string;
  /** Who made the change. */
  by: string;
  /** ISO 8601 UTC. */
  at: string;
  position: bigint;
  event: GroupEvent;
  /** The line a client that knows no system events shows ("alice added carol"). */
  text: string;
}

/** What a committed change did, for the announcements made while its locks are still held. */
export interface GroupChange {
  group: Group;
  /** Null when nothing changed (adding a member already in): nothing to announce. */
  event: SystemEvent | null;
  /** The member who left or was removed, with their unread total after it (they lost the group's unread). */
  removed: { user: string; total: number } | null;
}

export type GroupRefusal = "not_found" | "forbidden" | "group_full" | "not_a_member";

/** A change refused: not_found also for a group the caller is not in (its existence is not theirs to learn). */
export class GroupRefusedError extends Error {
  override readonly name = "GroupRefusedError";
  constructor(
    readonly code: GroupRefusal,
    message: string,
  ) {
    super(message);
  }
}

/** A caller's role in a group: null when not a member (or no such group). */
export async function groupRole(client: DbClient, groupId: string, username: string): Promise<"admin" | "member" | null> {
  const [row] = await client.sql<{ role: string }[]>`
    SELECT role FROM conversation_members
    WHERE username = ${username} AND other_username = ${groupConversation(groupId)} AND role IS NOT NULL`;
  return row ? (row.role as "admin" | "member") : null;
}

/**
 * Which of these (group, user) pairs are memberships now, as `<group id>\n<username>`: one query for
 * every group socket of a gateway (its periodic re-check).
 */
export async function currentMemberships(client: DbClient, pairs: readonly { group: string; user: string }[]): Promise<Set<string>> {
  if (pairs.length === 0) return new Set();
  const rows = await client.sql<{ other_username: string; username: string }[]>`
    SELECT cm.other_username, cm.username FROM conversation_members AS cm
    JOIN unnest(${pairs.map((p) => groupConversation(p.group))}::text[], ${pairs.map((p) => p.user)}::text[]) AS t(o, u)
      ON cm.other_username = t.o AND cm.username = t.u
    WHERE cm.role IS NOT NULL`;
  return new Set(rows.map((r) => `${r.other_username.slice(1)}\n${r.username}`));
}

/** The group, when `username` is a member; null otherwise (no such group, or not theirs). */
export async function groupFor(client: DbClient, groupId: string, username: string): Promise<Group | null> {
  return readGroup(client.sql, groupId, username);
}

async function readGroup(sql: postgres.Sql | postgres.ReservedSql, groupId: string, member: string | null): Promise<Group | null> {
  const [group] = await sql<{ name: string; created_at: Date }[]>`SELECT name, created_at FROM chat_groups WHERE id = ${groupId}::uuid`;
  if (!group) return null;
  const rows = await sql<{ username: string; role: string }[]>`
    SELECT username, role FROM conversation_members
    WHERE other_username = ${groupConversation(groupId)} AND role IS NOT NULL ORDER BY username`;
  if (member !== null && !rows.some((r) => r.username === member)) return null;
  return {
    id: groupId,
    name: group.name,
    members: rows.map((r) => r.username),
    admins: rows.filter((r) => r.role === "admin").map((r) => r.username),
    createdAt: new Date(group.created_at).toISOString(),
  };
}

/** The display names of groups, by id, for the conversation list. */
export async function groupNames(client: DbClient, ids: readonly string[]): Promise<Map<string, string>> {
  if (ids.length === 0) return new Map();
  const rows = await client.sql<{ id: string; name: string }[]>`SELECT id::text, name FROM chat_groups WHERE id = ANY (${ids as string[]}::uuid[])`;
  return new Map(rows.map((r) => [r.id, r.name]));
}

/** The text a client without system events shows for one. */
function describe(by: string, event: GroupEvent): string {
  switch (event.kind) {
    case "created":
      return `${by} created the group "${event.name}"`;
    case "renamed":
      return `${by} renamed the group to "${event.name}"`;
    case "member_added":
      return `${by} added ${event.user}`;
    case "member_removed":
      return `${by} removed ${event.user}`;
    case "member_left":
      return `${by} left`;
  }
}

/**
 * A system event's place in the group's order: the gateway's clock, like the log's positions
 * (`ms * 1e6 + seq`), at the end of its millisecond. Messages the log accepted within clock skew of it
 * may sort on either side.
 */
const positionNow = (now: Date): bigint => BigInt(now.getTime()) * 1_000_000n + 999_999n;

export interface ChangeContext {
  client: DbClient;
  groupId: string;
  /** Who asks. */
  actor: string;
  /** The event's id (a UUIDv7, made by the caller) and time. */
  eventId: string;
  now: Date;
  /** Most members a group may have (CHAT_GROUP_MAX_MEMBERS). */
  maxMembers: number;
  /** Runs after the commit, while the users' locks are held: announcements go out in commit order. */
  afterCommit: (change: GroupChange) => Promise<void>;
}

/**
 * Runs one membership change: the group's lock, then the locks of the users whose counters it moves
 * (in key order, as chat_persist_batch takes them, so a change and a worker's batch never deadlock
 * and the worker's fan-out sees either all of the change or none), one transaction with the history
 * event, then `afterCommit`, then the unlock.
 */
async function change(
  ctx: ChangeContext,
  users: readonly string[],
  work: (sql: postgres.ReservedSql) => Promise<{ event: GroupEvent; removed: string | null } | null>,
): Promise<GroupChange> {
  const conn = await reserveWithin(ctx.client, RESERVE_TIMEOUT_MS);
  const conversation = groupConversation(ctx.groupId);
  try {
    await conn`SELECT pg_advisory_lock(${GROUP_LOCK_SPACE}, hashtext(${conversation}))`;
    await conn`
      SELECT pg_advisory_lock(${USER_LOCK_SPACE}, k.h)
      FROM (SELECT DISTINCT hashtext(u) AS h FROM unnest(${users as string[]}::text[]) AS u ORDER BY h) AS k`;
    await conn`BEGIN`;
    let outcome: GroupChange;
    try {
      const done = await work(conn);
      if (done === null) {
        const group = await readGroup(conn, ctx.groupId, null);
        await conn`COMMIT`;
        return { group: group!, event: null, removed: null };
      }
      const { event, removed } = done;
      const position = positionNow(ctx.now);
      const at = ctx.now.toISOString();
      const text = describe(ctx.actor, event);
      await conn`
        INSERT INTO messages (id, stream_position, room_id, from_user, to_user, content, date_added, event)
        VALUES (${ctx.eventId}::uuid, ${position.toString()}::bigint, ${conversation}, ${ctx.actor}, ${conversation}, ${text}, ${at}::timestamptz, ${JSON.stringify(event)})`;
      // The event is the group's last activity for whoever has no later one (a new member: it is what
      // they see of the group first).
      await conn`
        UPDATE conversation_members SET last_message_id = ${ctx.eventId}::uuid, last_activity_at = ${at}::timestamptz
        WHERE other_username = ${conversation} AND role IS NOT NULL AND (last_activity_at IS NULL OR last_activity_at <= ${at}::timestamptz)`;
      let removedTotal: { user: string; total: number } | null = null;
      if (removed !== null) {
        const [row] = await conn<{ total: number }[]>`SELECT total FROM user_unread WHERE username = ${removed}`;
        removedTotal = { user: removed, total: row?.total ?? 0 };
      }
      const group = await readGroup(conn, ctx.groupId, null);
      await conn`COMMIT`;
      outcome = { group: group!, event: { id: ctx.eventId, by: ctx.actor, at, position, event, text }, removed: removedTotal };
    } catch (err) {
      await conn`ROLLBACK`.catch(() => {});
      throw err;
    }
    await ctx.afterCommit(outcome);
    return outcome;
  } finally {
    await conn`SELECT pg_advisory_unlock_all()`.catch(() => {});
    conn.release();
  }
}

/** The caller's role, or a refusal: not_found for a non-member, forbidden for a member where an admin is needed. */
async function roleIn(sql: postgres.ReservedSql, conversation: string, username: string, needAdmin: boolean): Promise<"admin" | "member"> {
  const [row] = await sql<{ role: string }[]>`
    SELECT role FROM conversation_members WHERE username = ${username} AND other_username = ${conversation} AND role IS NOT NULL`;
  if (!row) throw new GroupRefusedError("not_found", "no such group");
  if (needAdmin && row.role !== "admin") throw new GroupRefusedError("forbidden", "only the group's admins may do this");
  return row.role as "admin" | "member";
}

/**
 * New members' rows. Their read position is the group's newest (or now): what was said before they
 * joined is history they may read, never unread for them.
 */
async function addMemberRows(sql: postgres.ReservedSql, conversation: string, members: readonly { username: string; role: "admin" | "member" }[], now: Date): Promise<void> {
  const [latest] = await sql<{ p: string | null }[]>`SELECT max(stream_position)::text AS p FROM messages WHERE room_id = ${conversation}`;
  const readTo = [BigInt(latest?.p ?? "0"), positionNow(now)].reduce((a, b) => (a > b ? a : b));
  await sql`
    INSERT INTO conversation_members (username, other_username, unread_count, read_position, role)
    SELECT u, ${conversation}, 0, ${readTo.toString()}::bigint, r
    FROM unnest(${members.map((m) => m.username)}::text[], ${members.map((m) => m.role)}::text[]) AS t(u, r)`;
}

/** POST /api/groups: the creator is the first admin; `members` are the others (deduplicated, creator left out). */
export async function createGroup(ctx: ChangeContext, name: string, members: readonly string[]): Promise<GroupChange> {
  const others = [...new Set(members)].filter((m) => m !== ctx.actor);
  if (others.length + 1 > ctx.maxMembers) throw new GroupRefusedError("group_full", `a group has at most ${ctx.maxMembers} members`);
  return change(ctx, [ctx.actor, ...others], async (sql) => {
    await sql`INSERT INTO chat_groups (id, name, created_by, created_at) VALUES (${ctx.groupId}::uuid, ${name}, ${ctx.actor}, ${ctx.now.toISOString()}::timestamptz)`;
    await addMemberRows(sql, groupConversation(ctx.groupId), [{ username: ctx.actor, role: "admin" }, ...others.map((username) => ({ username, role: "member" as const }))], ctx.now);
    return { event: { kind: "created", name, members: [ctx.actor, ...others].sort() }, removed: null };
  });
}

/** PATCH /api/groups/{id} (admins). */
export async function renameGroup(ctx: ChangeContext, name: string): Promise<GroupChange> {
  return change(ctx, [], async (sql) => {
    await roleIn(sql, groupConversation(ctx.groupId), ctx.actor, true);
    await sql`UPDATE chat_groups SET name = ${name} WHERE id = ${ctx.groupId}::uuid`;
    return { event: { kind: "renamed", name }, removed: null };
  });
}

/**
 * POST /api/groups/{id}/members (admins). Adding someone already in changes nothing and is no error,
 * so that a retried request gets the same answer.
 */
export async function addGroupMember(ctx: ChangeContext, username: string): Promise<GroupChange> {
  const conversation = groupConversation(ctx.groupId);
  return change(ctx, [username], async (sql) => {
    await roleIn(sql, conversation, ctx.actor, true);
    const [count] = await sql<{ n: number; present: boolean | null }[]>`
      SELECT count(*)::integer AS n, bool_or(username = ${username}) AS present
      FROM conversation_members WHERE other_username = ${conversation} AND role IS NOT NULL`;
    if (count?.present) return null;
    if ((count?.n ?? 0) + 1 > ctx.maxMembers) throw new GroupRefusedError("group_full", `a group has at most ${ctx.maxMembers} members`);
    // A former member's row went with their membership (removeGroupMember): this one starts afresh.
    await addMemberRows(sql, conversation, [{ username, role: "member" }], ctx.now);
    return { event: { kind: "member_added", user: username }, removed: null };
  });
}

/**
 * DELETE /api/groups/{id}/members/{username}: an admin removes anyone, anyone removes themselves
 * (leaves). The member's row goes, and their unread of the group leaves their total. When the last
 * admin goes, the remaining member first in username order becomes admin, so a group is never left
 * without one.
 */
export async function removeGroupMember(ctx: ChangeContext, username: string): Promise<GroupChange> {
  const conversation = groupConversation(ctx.groupId);
  const leaving = username === ctx.actor;
  return change(ctx, [username], async (sql) => {
    await roleIn(sql, conversation, ctx.actor, !leaving);
    const [gone] = await sql<{ unread_count: number }[]>`
      DELETE FROM conversation_members WHERE username = ${username} AND other_username = ${conversation} AND role IS NOT NULL
      RETURNING unread_count`;
    if (!gone) throw new GroupRefusedError("not_a_member", `${username} is not a member of this group`);
    if (gone.unread_count > 0) {
      await sql`UPDATE user_unread SET total = total - ${gone.unread_count} WHERE username = ${username}`;
    }
    await sql`
      UPDATE conversation_members SET role = 'admin'
      WHERE other_username = ${conversation} AND role = 'member'
        AND NOT EXISTS (SELECT 1 FROM conversation_members WHERE other_username = ${conversation} AND role = 'admin')
        AND username = (SELECT min(username) FROM conversation_members WHERE other_username = ${conversation} AND role IS NOT NULL)`;
    return { event: leaving ? { kind: "member_left", user: username } : { kind: "member_removed", user: username }, removed: username };
  });
}
