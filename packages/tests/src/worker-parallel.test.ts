import { Redis } from "ioredis";
import { v7 as uuidv7 } from "uuid";
import { describe, expect, it } from "vitest";
import { ALL, RedisMessageLog, decodeEnvelope, redisNames, type StreamEntry } from "@chat/bus";
import { REDIS_URL, dropPrefixAtEnd, freshPrefix, logBacklog, startWorker, testRedis, testSql, uniqueUser, unreadOf, waitFor } from "./helpers/index.js";

const PAIRS = 30;
const ROUNDS = 40;

// A backlog is written in user-disjoint parts at once (CHAT_WORKER_PARALLEL_BATCHES): the parts
// must neither lose nor reorder anything a user sees, and the entries that bridge two parts (a user
// talking to someone of the other part) must wait for both.
describe("worker writing a backlog in parallel parts", () => {
  it("persists every entry once with exact counts, and announces each user's counts in stream order", async () => {
    const prefix = freshPrefix("par");
    dropPrefixAtEnd(prefix);
    // One partition: the backlog is one stream whose batches are full and mix every pair and the
    // bridges between them (with 16, each conversation's few entries would be batches of their own).
    const names = redisNames(prefix, 1);
    const log = new RedisMessageLog(testRedis(), names, { idempotencyTtlSeconds: 60 });
    const a = Array.from({ length: PAIRS }, (_, i) => uniqueUser(`pa${i}`));
    const b = Array.from({ length: PAIRS }, (_, i) => uniqueUser(`pb${i}`));

    // Expected state, computed as the stream order dictates.
    const unread = new Map<string, number>();
    const key = (u: string, o: string) => `${u}\u0000${o}`;
    const entries: StreamEntry[] = [];
    const message = (from: string, to: string) => {
      entries.push({ kind: "message", id: uuidv7(), from, to, message: `${from}>${to} ${entries.length}`, multimedia_url: null, date_added: new Date().toISOString() });
      unread.set(key(to, from), (unread.get(key(to, from)) ?? 0) + 1);
    };
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < PAIRS; i++) message(a[i]!, b[i]!);
      // Bridges across pairs, so some entries cannot go in either part. b[0] gets messages from
      // a[0] only, and never reads.
      if (round % 5 === 2) message(a[1]!, b[2]!);
      if (round % 10 === 5) {
        entries.push({ kind: "read", reader: b[3]!, other: a[3]! });
        unread.set(key(b[3]!, a[3]!), 0);
      }
    }
    // The group exists before the backlog, so that an empty backlog below means consumed.
    await log.partition(0).ensureGroup();
    for (const entry of entries) {
      await log.append(entry.kind === "message" ? names.roomId(entry.from, entry.to) : names.roomId(entry.reader, entry.other), entry);
    }

    // b[0]'s notifications, straight from its user channel.
    const subscriber = new Redis(REDIS_URL);
    const totals: number[] = [];
    subscriber.on("smessageBuffer", (_channel: Buffer, payload: Buffer) => {
      const envelope = decodeEnvelope(payload);
      if (envelope.target !== ALL) return;
      for (const frame of envelope.frames) {
        const event = JSON.parse(frame.toString()) as { type: string; unread_count: number };
        if (event.type === "new_message_notification") totals.push(event.unread_count);
      }
    });
    await subscriber.ssubscribe(names.userChannel(b[0]!));
    try {
      const worker = await startWorker(prefix, { CHAT_PARTITIONS: "1", CHAT_WORKER_PARALLEL_BATCHES: "2", LOG_LEVEL: "debug" });
      await waitFor(async () => {
        const { lag, pending } = await logBacklog(testRedis(), names);
        if (lag !== 0 || pending !== 0) throw new Error(`backlog lag=${lag} pending=${pending}`);
      }, 30000);

      const users = [...a, ...b];
      const [row] = await testSql()<{ n: number; distinct: number }[]>`
        SELECT count(*)::int AS n, count(DISTINCT id)::int AS distinct FROM messages WHERE from_user = ANY(${users})`;
      const sent = entries.filter((e) => e.kind === "message").length;
      expect(row).toEqual({ n: sent, distinct: sent });
      for (const [k, n] of unread) {
        const [u, o] = k.split("\u0000") as [string, string];
        expect(await unreadOf(u, o), `unread of ${u} from ${o}`).toBe(n);
      }
      // One notification per message; each carries its batch's committed total, so the totals never
      // go down, and the last is the exact count.
      await waitFor(() => expect(totals).toHaveLength(ROUNDS), 5000);
      expect(totals).toEqual([...totals].sort((x, y) => x - y));
      expect(totals.at(-1)).toBe(ROUNDS);

      // The backlog was really written in parts: more writes than reads of 500.
      const writes = worker.logs.filter((l) => l["msg"] === "batch persisted");
      expect(writes.reduce((n, l) => n + Number(l["entries"]), 0)).toBe(entries.length);
      expect(writes.length).toBeGreaterThan(Math.ceil(entries.length / 500) + 1);
    } finally {
      await subscriber.quit();
    }
  });
});
