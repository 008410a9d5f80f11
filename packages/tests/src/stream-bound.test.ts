import { describe, expect, it, onTestFinished } from "vitest";
import { redisNames } from "@chat/bus";
import {
  connectReady,
  freshPrefix,
  startGateway,
  startWorker,
  testRedis,
  testSql,
  tokenFor,
  uniqueUser,
  unreadOf,
  waitFor,
  type Gateway,
  type TestClient,
} from "./helpers/index.js";
import { countFrom, holdMemberRow } from "./helpers/db.js";
import { conversationStream, dropPrefixAtEnd, logLength } from "./helpers/redis.js";

// Register the pool's and the Redis connection's teardown at file level (first used inside a test).
testSql();
testRedis();

const NO_RATE_LIMIT = { CHAT_RATE_MESSAGES_PER_SECOND: "0" };
const TRIM_MS = 500;

interface Flow {
  from: string;
  to: string;
  chat: TestClient;
  sent: number;
}

async function openFlow(g: Gateway, from: string, to: string): Promise<Flow> {
  return { from, to, chat: await connectReady(g.url, `/ws/${to}/`, await tokenFor(from)), sent: 0 };
}

function send(f: Flow): void {
  const id = `${f.from}>${f.to}#${f.sent++}`;
  f.chat.send({ type: "chat_message", message: id, client_id: id });
}

/** Ids of the flow's echoed messages, once every send is answered (and none refused). */
async function echoed(f: Flow): Promise<string[]> {
  const mine = (x: Record<string, unknown>) => String(x["client_id"] ?? "").startsWith(`${f.from}>${f.to}#`);
  await f.chat.until((fr) => fr.filter((x) => (x.type === "chat_message" || x.type === "error") && mine(x)).length === f.sent, 15000, `echoes of ${f.from}>${f.to}`);
  expect(f.chat.ofType("error")).toEqual([]);
  return f.chat.ofType("chat_message").filter(mine).map((x) => String(x["id"]));
}

async function persistedIds(ids: readonly string[]): Promise<Set<string>> {
  const sql = testSql();
  const rows = await sql<{ id: string }[]>`SELECT id::text AS id FROM messages WHERE id = ANY(${sql.array([...ids])}::uuid[])`;
  return new Set(rows.map((r) => r.id));
}

/** Message ids in the stream, oldest first. */
async function streamIds(stream: string): Promise<string[]> {
  return (await testRedis().xrange(stream, "-", "+")).map(([, f]) => (JSON.parse(f[f.indexOf("e") + 1]!) as { id: string }).id);
}

describe("stream growth", () => {
  it("stays bounded while 2,000 messages flow: the worker trims what it has persisted", async () => {
    const prefix = freshPrefix("bound");
    dropPrefixAtEnd(prefix);
    const names = redisNames(prefix);
    const [g1, g2] = await Promise.all([startGateway(prefix, NO_RATE_LIMIT), startGateway(prefix, NO_RATE_LIMIT)]);
    await startWorker(prefix, { CHAT_WORKER_TRIM_INTERVAL_MS: String(TRIM_MS) });
    const [a, b, c, d] = [uniqueUser("a"), uniqueUser("b"), uniqueUser("c"), uniqueUser("d")];
    const flows = await Promise.all([openFlow(g1, a, b), openFlow(g2, b, a), openFlow(g1, c, d), openFlow(g2, d, c)]);

    const redis = testRedis();
    let maxLen = 0;
    const lengths: number[] = [];
    const sampler = setInterval(() => {
      void logLength(redis, names).then((n) => {
        lengths.push(n);
        maxLen = Math.max(maxLen, n);
      });
    }, 50);
    const startedAt = Date.now();
    try {
      // 2,000 messages at about 400/s: one per flow every 10 ms.
      for (let round = 0; round < 500; round++) {
        for (const f of flows) send(f);
        // Pacing only: a steady flow for a few seconds, longer than several trim intervals.
        await new Promise((r) => setTimeout(r, 10));
      }
      const ids = (await Promise.all(flows.map(echoed))).flat();
      expect(ids).toHaveLength(2000);
      await waitFor(async () => expect((await persistedIds(ids)).size).toBe(2000), 15000);
      // Once everything is persisted, the next trims leave nothing behind.
      await waitFor(async () => expect(await logLength(redis, names)).toBe(0), 5 * TRIM_MS + 3000);
    } finally {
      clearInterval(sampler);
    }
    const seconds = (Date.now() - startedAt) / 1000;
    console.log(
      `[reliability] stream bound: 2000 messages in ${seconds.toFixed(1)} s with a worker trimming every ${TRIM_MS} ms: ` +
        `max stream length ${maxLen} (${lengths.length} samples), 0 at the end`,
    );
    // Bounded: never more than a fraction of what flowed (without trimming it would reach 2,000).
    expect(lengths.length).toBeGreaterThan(20);
    expect(maxLen).toBeLessThan(1000);
    for (const [u, o, n] of [
      [b, a, 500],
      [a, b, 500],
      [d, c, 500],
      [c, d, 500],
    ] as const) {
      expect(await unreadOf(u, o)).toBe(n);
    }
  }, 60_000);

  it("keeps every unpersisted entry: nothing is trimmed while no worker runs or while a batch is pending; a later worker persists them all", async () => {
    const prefix = freshPrefix("bound-keep");
    dropPrefixAtEnd(prefix);
    const names = redisNames(prefix);
    const g = await startGateway(prefix, NO_RATE_LIMIT);
    // No claims during the test: the blocked batch below stays with its worker.
    const workerEnv = { CHAT_WORKER_TRIM_INTERVAL_MS: String(TRIM_MS), CHAT_WORKER_CLAIM_IDLE_MS: "60000" };
    // The first worker never trims, so the entries it persisted are still there for the later trims.
    const w1 = await startWorker(prefix, { ...workerEnv, CHAT_WORKER_TRIM_INTERVAL_MS: "600000" });
    const [a, b] = [uniqueUser("a"), uniqueUser("b")];
    // The two conversations in two partitions of the log: each partition has its own consumer, and
    // a batch blocked on one of them must not keep the other from flowing.
    let [c, d] = [uniqueUser("c"), uniqueUser("d")];
    while (names.partitionOf(names.roomId(c, d)) === names.partitionOf(names.roomId(a, b))) [c, d] = [uniqueUser("c"), uniqueUser("d")];
    const [streamAB, streamCD] = [conversationStream(names, a, b), conversationStream(names, c, d)];
    const ab = await openFlow(g, a, b);
    const cd = await openFlow(g, c, d);
    send(ab);
    send(cd);
    const early = [...(await echoed(ab)), ...(await echoed(cd))];
    await waitFor(async () => expect((await persistedIds(early)).size).toBe(2));

    // The worker stops: 50 messages are accepted with no worker running. All stay in the log.
    await w1.stop("SIGTERM");
    for (let i = 0; i < 50; i++) send(ab);
    const held = (await echoed(ab)).slice(1);
    expect(held).toHaveLength(50);
    expect(await streamIds(streamAB)).toEqual([early[0], ...held]);
    expect(await streamIds(streamCD)).toEqual([early[1]]);

    // bob's member row is locked, so the next worker reads those 50 and cannot commit them.
    const lock = await holdMemberRow(b, a);
    try {
      await startWorker(prefix, workerEnv);
      await waitFor(async () => expect(((await testRedis().xpending(streamAB, names.group)) as [number])[0]).toBe(50), 10000);

      // Another worker persists a further 1,000 messages of another conversation and trims every 500 ms.
      const w3 = await startWorker(prefix, workerEnv);
      for (let round = 0; round < 20; round++) {
        for (let i = 0; i < 50; i++) send(cd);
        // Pacing only: spread the traffic over several trim intervals.
        await new Promise((r) => setTimeout(r, 100));
      }
      const flowed = (await echoed(cd)).slice(1);
      expect(flowed).toHaveLength(1000);
      await waitFor(async () => expect((await persistedIds(flowed)).size).toBe(1000), 15000);
      // The trims ran: in the other conversation's partition, everything (all persisted) is gone...
      await waitFor(async () => expect(await streamIds(streamCD)).toEqual([]), 5 * TRIM_MS + 3000);
      // ...in the blocked one, what was persisted before the oldest pending entry is gone...
      await waitFor(async () => expect((await streamIds(streamAB))[0]).toBe(held[0]), 5 * TRIM_MS + 3000);
      // ...and from that entry on, everything stays: the 50 pending.
      expect(await streamIds(streamAB)).toEqual(held);
      expect((await persistedIds(held)).size).toBe(0);
      expect(w3.child.exitCode).toBeNull();
    } finally {
      await lock.release();
    }

    // Released: the blocked worker commits, every message is persisted exactly once, the stream empties.
    await waitFor(async () => {
      expect(await countFrom(a, b)).toBe(51);
      expect(await countFrom(c, d)).toBe(1001);
    }, 15000);
    await waitFor(async () => expect(await logLength(testRedis(), names)).toBe(0), 5 * TRIM_MS + 3000);
    expect(await unreadOf(b, a)).toBe(51);
    expect(await unreadOf(d, c)).toBe(1001);
    console.log(
      `[reliability] stream keeps unpersisted entries: 50 accepted with no worker running and then pending in a blocked batch, ` +
        `1000 persisted behind them by another worker: 0 trimmed early, ${51 + 1001} persisted exactly once, stream empty afterwards`,
    );
  }, 60_000);
});
