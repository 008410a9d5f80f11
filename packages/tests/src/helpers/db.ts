import postgres from "postgres";
import { afterAll } from "vitest";
import { DATABASE_URL } from "./env.js";

let client: postgres.Sql | null = null;

/** A small pool on the test database, closed after the file's tests. */
export function testSql(): postgres.Sql {
  if (!client) {
    client = postgres(DATABASE_URL, { max: 2, onnotice: () => {} });
    const c = client;
    afterAll(async () => {
      await c.end({ timeout: 5 });
      client = null;
    });
  }
  return client;
}

export async function messagesBetween(a: string, b: string) {
  const sql = testSql();
  return sql<{ id: string; from_user: string; to_user: string; content: string; client_id: string | null }[]>`
    SELECT id, from_user, to_user, content, client_id FROM messages
    WHERE (from_user = ${a} AND to_user = ${b}) OR (from_user = ${b} AND to_user = ${a})
    ORDER BY stream_position`;
}

/** How many persisted messages `from` sent `to`. */
export async function countFrom(from: string, to: string): Promise<number> {
  const [row] = await testSql()<{ n: number }[]>`SELECT count(*)::int AS n FROM messages WHERE from_user = ${from} AND to_user = ${to}`;
  return row!.n;
}

export async function unreadOf(username: string, other: string): Promise<number> {
  const sql = testSql();
  const rows = await sql<{ unread_count: number }[]>`
    SELECT unread_count FROM conversation_members WHERE username = ${username} AND other_username = ${other}`;
  return rows[0]?.unread_count ?? 0;
}

/**
 * Locks a conversation_members row in a transaction of the test's own, so that a worker's batch
 * touching it blocks mid-write. Resolves once the lock is held; `release` commits and waits for it.
 */
export async function holdMemberRow(username: string, other: string): Promise<{ release(): Promise<void> }> {
  let locked!: () => void;
  const isLocked = new Promise<void>((r) => (locked = r));
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const holder = testSql().begin(async (tx) => {
    await tx`SELECT 1 FROM conversation_members WHERE username = ${username} AND other_username = ${other} FOR UPDATE`;
    locked();
    await released;
  });
  await Promise.race([isLocked, holder]);
  return {
    release: async () => {
      release();
      await holder;
    },
  };
}
