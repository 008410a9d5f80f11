import { describe, expect, it } from "vitest";
import { redisNames } from "@chat/bus";
import {
  connectReady,
  conversationsBacklog,
  acceptedIds,
  expectStoredExactlyOnce,
  freshPrefix,
  persistedFrom,
  sendRound,
  userWhose,
  waitForLeaseShares,
  startGateway,
  startWorker,
  testRedis,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type Flow,
  type Gateway,
  type RunningProcess,
} from "./helpers/index.js";

/**
 * Three conversations, messages flowing both ways in each, senders spread over both gateways:
 * A<->B, C->B, B->C, D<->A. B and A receive from two partners, so their counters race. Given the
 * partitions' owners, the three conversations go to partitions of as many different workers as
 * there are (so that with several workers, each writes some of them, and A's and B's counters are
 * written by two workers at once).
 */
async function openFlows(gateways: Gateway[], prefix: string, owners?: string[]): Promise<{ users: string[]; flows: Flow[] }> {
  const names = redisNames(prefix);
  const [a, b] = [uniqueUser("a"), uniqueUser("b")];
  const workers = owners ? [...new Set(owners)] : [];
  const ownedBy = (k: number) => (p: number) => workers.length === 0 || owners![p] === workers[k % workers.length];
  const first = names.partitionOf(names.roomId(a, b));
  const start = owners ? workers.indexOf(owners[first]!) : 0;
  const c = userWhose(names, "c", b, ownedBy(start + 1));
  const d = userWhose(names, "d", a, ownedBy(start + 2));
  const directed: [string, string][] = [
    [a, b],
    [b, a],
    [c, b],
    [b, c],
    [d, a],
    [a, d],
  ];
  const flows = await Promise.all(
    directed.map(async ([from, to], i) => ({
      from,
      to,
      chat: await connectReady(gateways[i % gateways.length]!.url, `/ws/${to}/`, await tokenFor(from)),
      sent: 0,
    })),
  );
  return { users: [a, b, c, d], flows };
}

async function storedMessages(users: string[]) {
  const sql = testSql();
  return sql<{ id: string; from_user: string; to_user: string; content: string }[]>`
    SELECT id, from_user, to_user, content FROM messages WHERE from_user IN ${sql(users)} AND to_user IN ${sql(users)}`;
}

/**
 * Every accepted message is in Postgres exactly once, nothing else is, every unread counter equals
 * the messages its partner sent (nothing was read), and no stream entry is left unacknowledged.
 */
async function expectExactlyOnce(prefix: string, users: string[], flows: Flow[]): Promise<void> {
  await expectStoredExactlyOnce(flows, await acceptedIds(flows), () => storedMessages(users));
  const redis = testRedis();
  const names = redisNames(prefix);
  const conversations = flows.map((f) => [f.from, f.to] as const);
  await waitFor(async () => (await conversationsBacklog(redis, names, conversations)).pending === 0, 10000);
}

/** Entries of the prefix's partitions delivered to consumer `name` and not acknowledged. */
async function pendingOf(prefix: string, name: string): Promise<number> {
  const names = redisNames(prefix);
  let n = 0;
  for (let p = 0; p < names.partitions; p++) {
    try {
      n += ((await testRedis().xpending(names.stream(p), names.group, "-", "+", 10000, name)) as unknown[]).length;
    } catch {
      // A partition nothing was written to has no stream or group.
    }
  }
  return n;
}

const claims = (workers: RunningProcess[]) =>
  workers.flatMap((w) => w.logs).filter((l) => l["msg"] === "claimed pending entries").reduce((n, l) => n + Number(l["count"]), 0);

// These suites send far faster than one user would; the per-user rate limit has its own tests.
const NO_RATE_LIMIT = { CHAT_RATE_MESSAGES_PER_SECOND: "0" };

describe("worker crash and concurrent workers", () => {
  it("loses nothing and writes nothing twice when the worker is SIGKILLed repeatedly while messages flow", async () => {
    const prefix = freshPrefix("crash");
    const gateways = await Promise.all([startGateway(prefix, NO_RATE_LIMIT), startGateway(prefix, NO_RATE_LIMIT)]);
    const { users, flows } = await openFlows(gateways, prefix);
    // A killed worker's partitions pass to the next one once its leases expire (about 1.3 x the TTL,
    // 10 s by default): 2 s here, so each replacement writes within the wait below.
    const env = { CHAT_WORKER_BATCH_SIZE: "4", CHAT_WORKER_LEASE_TTL_MS: "2000" };
    const rounds = 110; // x 6 flows = 660 messages

    let sending = true;
    const sender = (async () => {
      for (let r = 0; r < rounds; r++) {
        sendRound(flows);
        // Pacing only: spread the traffic over the kills below (about 4 s in all).
        await new Promise((resolve) => setTimeout(resolve, 35));
      }
      sending = false;
    })();

    const workers: RunningProcess[] = [];
    /** Entries each killed worker left pending (read, not yet acknowledged), as Redis says right after the kill. */
    const leftPending: number[] = [];
    let kills = 0;
    try {
      while (kills < 5 && (sending || kills < 3)) {
        const before = await persistedFrom(users);
        const name = `${prefix}w${kills}`;
        const worker = await startWorker(prefix, { ...env, CHAT_WORKER_NAME: name });
        workers.push(worker);
        // Kill it as soon as it has written something: it is in the middle of the stream.
        await waitFor(async () => (await persistedFrom(users)) > before, 10000, 10);
        expect(await worker.stop("SIGKILL")).toBeNull();
        leftPending.push(await pendingOf(prefix, name));
        kills++;
      }
    } finally {
      await sender;
    }
    expect(kills).toBeGreaterThanOrEqual(3);
    workers.push(await startWorker(prefix, env));
    await expectExactlyOnce(prefix, users, flows);
    // The kills left entries pending that later workers had to take over (and did: nothing is
    // pending any more, every message is stored once). Counted in Redis: the log line a worker
    // writes when it claims can die with it, unflushed, when it is killed right after.
    console.log(`[reliability] worker crash: entries left pending by each of the ${kills} kills: ${leftPending.join(", ")}; claims logged: ${claims(workers)}`);
    expect(Math.max(...leftPending)).toBeGreaterThan(0);
  });

  it.each([2, 3])("keeps every message exactly once and every counter exact with %i workers sharing the partitions", async (n) => {
    const prefix = freshPrefix(`workers${n}`);
    const gateways = await Promise.all([startGateway(prefix, NO_RATE_LIMIT), startGateway(prefix, NO_RATE_LIMIT)]);
    // The helper's 3 s leases: the workers that join take their share within a heartbeat or two, and a
    // loaded machine does not make them lose it (1.5 s leases did, in CI: a partition changed hands).
    const workers = await Promise.all(
      Array.from({ length: n }, () => startWorker(prefix, { CHAT_WORKER_BATCH_SIZE: "3", LOG_LEVEL: "debug" })),
    );
    const owners = await waitForLeaseShares(testRedis(), redisNames(prefix), n);
    const { users, flows } = await openFlows(gateways, prefix, owners);
    for (let r = 0; r < 110; r++) sendRound(flows);
    await expectExactlyOnce(prefix, users, flows);
    // Every worker wrote its share: the conversations lie in partitions of each of them.
    for (const w of workers) expect(w.logs.filter((l) => l["msg"] === "batch persisted").length).toBeGreaterThan(0);
  });
});
