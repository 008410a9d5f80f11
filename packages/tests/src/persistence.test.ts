import { randomUUID } from "node:crypto";
import { describe, expect, it, afterAll } from "vitest";
import { createDb, persistBatch, type NewMessage, type ReadReceipt } from "@chat/db";
import { v7 as uuidv7 } from "uuid";
import { DATABASE_URL, testSql, uniqueUser } from "./helpers/index.js";

// Three pools stand in for three workers writing the same conversations concurrently.
const pools = [createDb(DATABASE_URL, { max: 2 }), createDb(DATABASE_URL, { max: 2 }), createDb(DATABASE_URL, { max: 2 })];
afterAll(() => Promise.all(pools.map((p) => p.close())));

let position = BigInt(Date.now()) * 1_000_000n;
const nextPosition = () => ++position;

function message(from: string, to: string): NewMessage {
  return {
    id: uuidv7(),
    streamPosition: nextPosition(),
    fromUser: from,
    toUser: to,
    roomId: from < to ? `${from}:${to}` : `${to}:${from}`,
    content: `m-${randomUUID()}`,
    multimediaUrl: null,
    fileIdentifier: null,
    multimediaUrlExpiration: null,
    clientId: null,
    dateAdded: new Date().toISOString(),
  };
}

async function expectedUnread(user: string, other: string): Promise<number> {
  const sql = testSql();
  const [row] = await sql<{ n: string }[]>`
    SELECT count(*) AS n FROM messages m
    WHERE m.to_user = ${user} AND m.from_user = ${other}
      AND m.stream_position > coalesce((SELECT read_position FROM conversation_members WHERE username = ${user} AND other_username = ${other}), 0)`;
  return Number(row!.n);
}

describe("persistBatch", () => {
  it("is idempotent: writing the same batch twice stores each message once and counts it once", async () => {
    const [a, b] = [uniqueUser("a"), uniqueUser("b")];
    const batch = [message(a, b), message(a, b), message(b, a)];
    const first = await persistBatch(pools[0]!, batch, []);
    const second = await persistBatch(pools[1]!, batch, []);
    expect(first.inserted.size).toBe(3);
    expect(second.inserted.size).toBe(0);
    expect(first.totalUnread.get(b)).toBe(2);
    const sql = testSql();
    const [{ n }] = (await sql`SELECT count(*)::int AS n FROM messages WHERE id IN ${sql(batch.map((m) => m.id))}`) as unknown as [{ n: number }];
    expect(n).toBe(3);
    const [row] = await sql<{ unread_count: number }[]>`SELECT unread_count FROM conversation_members WHERE username = ${b} AND other_username = ${a}`;
    expect(row!.unread_count).toBe(2);
  });

  it("keeps counts exact when three writers race on the same conversations with reads in between", async () => {
    const users = [uniqueUser("u"), uniqueUser("v"), uniqueUser("w")];
    // The stream order: messages between every pair, and reads at random points.
    const entries: ({ kind: "m"; m: NewMessage } | { kind: "r"; r: ReadReceipt })[] = [];
    for (let i = 0; i < 300; i++) {
      const from = users[i % 3]!;
      const to = users[(i + 1 + (i % 2)) % 3]!;
      if (i % 17 === 0) entries.push({ kind: "r", r: { streamPosition: nextPosition(), reader: to, otherUser: from } });
      else entries.push({ kind: "m", m: message(from, to) });
    }
    // Deal entries to three writers in small batches, as consumers in one group receive them, then
    // write all batches concurrently, in an order unrelated to the stream order.
    const batches: { pool: number; messages: NewMessage[]; reads: ReadReceipt[] }[] = [];
    for (let i = 0; i < entries.length; i += 7) {
      const slice = entries.slice(i, i + 7);
      batches.push({
        pool: batches.length % 3,
        messages: slice.flatMap((e) => (e.kind === "m" ? [e.m] : [])),
        reads: slice.flatMap((e) => (e.kind === "r" ? [e.r] : [])),
      });
    }
    batches.reverse();
    await Promise.all(batches.map((b) => persistBatch(pools[b.pool]!, b.messages, b.reads)));
    const sql = testSql();
    for (const u of users) {
      for (const o of users) {
        if (u === o) continue;
        const [row] = await sql<{ unread_count: number }[]>`SELECT unread_count FROM conversation_members WHERE username = ${u} AND other_username = ${o}`;
        expect(row?.unread_count ?? 0, `${u} from ${o}`).toBe(await expectedUnread(u, o));
      }
    }
  });

  it("does not count a message as unread when the read that covers it was written first", async () => {
    const [u, v] = [uniqueUser("u"), uniqueUser("v")];
    const early = message(v, u);
    const read: ReadReceipt = { streamPosition: nextPosition(), reader: u, otherUser: v };
    const late = message(v, u);
    const afterRead = await persistBatch(pools[0]!, [], [read]);
    expect(afterRead.pairUnread.get(`${u}\n${v}`)).toBe(0);
    const outcome = await persistBatch(pools[1]!, [early, late], []);
    expect(outcome.pairUnread.get(`${u}\n${v}`)).toBe(1);
    expect(outcome.totalUnread.get(u)).toBe(1);
  });
});
