import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { openRedis, parseRedisTarget, redisNames } from "@chat/bus";
import {
  REDIS_CLUSTER_URL,
  REDIS_URL,
  acceptedIds,
  expectStoredExactlyOnce,
  atEnd,
  connectReady,
  conversationStream,
  conversationsBacklog,
  countFrom,
  dropPrefixAtEnd,
  freshPrefix,
  holdMemberRow,
  leaseOwners,
  logBacklog,
  redisEngines,
  redisEnv,
  persistedFrom,
  scrape,
  sendRound,
  startGateway,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type Flow,
  type Gateway,
  type RunningProcess,
} from "./helpers/index.js";

// Two workers share the message log's partitions by leases; one is SIGKILLed while messages flow in
// conversations on both workers' partitions (one of its batches held in flight by a row lock, so it
// dies with entries pending), and no replacement is started. The survivor must take every partition
// over within the lease TTL plus a heartbeat, claim what the dead one left pending, and leave every
// accepted message in Postgres exactly once with exact unread counters.

const LEASE_TTL_MS = 3000;
/** The worker heartbeats every third of the TTL (bus-redis.ts). */
const HEARTBEAT_MS = LEASE_TTL_MS / 3;
/**
 * Above TTL + heartbeat (the victim's leases expire at most a TTL after the kill, the survivor sees
 * that at its next heartbeat): the kill itself, the log line's way to this test, two cores shared
 * with the gateways and this test, and the rare extra heartbeat (the dead worker's registry entry
 * expiring a round trip before its leases, so a few leases are still held at that heartbeat).
 */
const TAKEOVER_MARGIN_MS = 1500;
const WORKER_ENV = {
  CHAT_WORKER_LEASE_TTL_MS: String(LEASE_TTL_MS),
  CHAT_WORKER_CLAIM_IDLE_MS: "1000",
  CHAT_WORKER_CLAIM_INTERVAL_MS: "500",
  // Small batches: many of them, on both workers, around the kill.
  CHAT_WORKER_BATCH_SIZE: "4",
};
// These suites send far faster than one user would; the per-user rate limit has its own tests.
const NO_RATE_LIMIT = { CHAT_RATE_MESSAGES_PER_SECOND: "0" };
/** Conversations on each worker's partitions, each on a partition of its own. */
const CONVERSATIONS_PER_WORKER = 4;
const ROUNDS = 30; // x 16 flows = 480 messages
const ROUND_PACING_MS = 140; // about 4 s of traffic, over the kill and the takeover
/** Rounds sent before the kill (at the earliest): the rest flows while the victim's partitions are orphaned and taken over. */
const ROUNDS_BEFORE_KILL = 8;

/** The Postgres sessions of a worker (its pool's application_name) waiting on a lock. */
async function lockWaitsOf(workerName: string): Promise<number> {
  const [row] = await testSql()<{ n: number }[]>`
    SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${`worker ${workerName}`} AND wait_event_type = 'Lock'`;
  return row!.n;
}

async function storedMessages(users: string[]) {
  const sql = testSql();
  return sql<{ id: string; from_user: string; to_user: string; content: string }[]>`
    SELECT id, from_user, to_user, content FROM messages WHERE from_user IN ${sql(users)} OR to_user IN ${sql(users)}`;
}

/** The worker's /metrics port, from its "consuming" line. */
function httpPortOf(worker: RunningProcess): number {
  const port = Number(worker.logs.find((l) => l["msg"] === "consuming")?.["httpPort"]);
  expect(port).toBeGreaterThan(0);
  return port;
}

/** A worker with a name of ours (its consumer name and lease owner id), so leases in Redis tell whose they are. */
async function namedWorker(prefix: string, name: string, env: Record<string, string>): Promise<{ name: string; proc: RunningProcess; port: number }> {
  const proc = await startWorker(prefix, { ...env, CHAT_WORKER_NAME: name });
  return { name, proc, port: httpPortOf(proc) };
}

/**
 * A worker's partitions, pending entries and lag over every partition it consumes, as its /metrics
 * reports them; read once, after Redis says the backlog is empty.
 */
async function workerBacklog(port: number): Promise<{ owned: number; pending: number; lag: number }> {
  const s = await scrape(port);
  return { owned: s.value("chat_worker_partitions_owned") ?? -1, pending: s.value("chat_worker_pending_entries") ?? -1, lag: s.value("chat_worker_stream_lag") ?? -1 };
}

const sumOf = (logs: Record<string, unknown>[], msg: string, field: string) => logs.filter((l) => l["msg"] === msg).reduce((n, l) => n + Number(l[field]), 0);

describe.each(redisEngines)("worker takeover (%s)", (kind) => {
  it("the survivor takes over every partition of a SIGKILLed worker within the lease TTL, and every message is stored exactly once with exact unread counts", { timeout: 60_000 }, async () => {
    const prefix = freshPrefix("takeover");
    const names = redisNames(prefix);
    // The cluster lives for this run only; the shared single Redis is cleaned up after the test.
    if (kind === "redis") dropPrefixAtEnd(prefix);
    const redis = openRedis(parseRedisTarget(kind === "redis-cluster" ? REDIS_CLUSTER_URL! : REDIS_URL), { connectionName: "worker-takeover-test" });
    redis.on("error", () => {});
    atEnd(() => redis.quit().catch(() => redis.disconnect()));

    const engineEnv = redisEnv(kind);
    const gateways: Gateway[] = await Promise.all([startGateway(prefix, { ...NO_RATE_LIMIT, ...engineEnv }), startGateway(prefix, { ...NO_RATE_LIMIT, ...engineEnv })]);
    const run = randomBytes(3).toString("hex");
    const workers = await Promise.all(["w1", "w2"].map((n) => namedWorker(prefix, `takeover-${run}-${n}`, { ...engineEnv, ...WORKER_ENV })));
    const [survivor, victim] = workers as [(typeof workers)[0], (typeof workers)[0]];

    // Both take a share, 8 + 8 partitions: by the leases in Redis, then by their own metrics.
    const half = names.partitions / 2;
    const owners = await waitFor(
      async () => {
        const o = await leaseOwners(redis, names);
        for (const w of workers) expect(o.filter((x) => x === w.name), w.name).toHaveLength(half);
        return o;
      },
      15_000,
      50,
    );
    for (const w of workers) await waitFor(async () => expect((await scrape(w.port)).value("chat_worker_partitions_owned"), w.name).toBe(half), 10_000, 50);

    // Conversations on both workers' partitions (each on its own partition), so both carry traffic.
    const pairsOf = new Map<string, [string, string][]>(workers.map((w) => [w.name, []]));
    const usedPartitions = new Set<number>();
    for (let tries = 0; usedPartitions.size < 2 * CONVERSATIONS_PER_WORKER; tries++) {
      expect(tries, "pairs drawn to find conversations on both workers' partitions").toBeLessThan(10_000);
      const [a, b] = [uniqueUser("ta"), uniqueUser("tb")];
      const p = names.partitionOf(names.roomId(a, b));
      const mine = pairsOf.get(owners[p]!)!;
      if (usedPartitions.has(p) || mine.length >= CONVERSATIONS_PER_WORKER) continue;
      usedPartitions.add(p);
      mine.push([a, b]);
    }
    const pairs = [...pairsOf.values()].flat();
    const users = pairs.flat();
    const usersOf = (w: { name: string }) => pairsOf.get(w.name)!.flat();
    // Both directions of every conversation, senders spread over both gateways.
    const flows: Flow[] = await Promise.all(
      pairs
        .flatMap(([a, b]) => [
          [a, b],
          [b, a],
        ])
        .map(async ([from, to], i) => ({ from: from!, to: to!, chat: await connectReady(gateways[i % 2]!.url, `/ws/${to}/`, await tokenFor(from!)), sent: 0 })),
    );

    let rounds = 0;
    const sender = (async () => {
      for (; rounds < ROUNDS; rounds++) {
        sendRound(flows);
        // Pacing only: spread the traffic over the kill and the takeover.
        await new Promise((resolve) => setTimeout(resolve, ROUND_PACING_MS));
      }
    })();

    let takeoverMs = 0;
    let takeoverLoggedMs = 0;
    let persistedBeforeKill = { victim: 0, survivor: 0 };
    let inFlightAtKill = 0;
    let logsBeforeKill = 0;
    let killedAt = 0;
    try {
      // Kill the victim mid-flow, once both workers have written some of this traffic to Postgres.
      await waitFor(
        async () => {
          if (rounds < ROUNDS_BEFORE_KILL) return false;
          persistedBeforeKill = { victim: await persistedFrom(usersOf(victim)), survivor: await persistedFrom(usersOf(survivor)) };
          return persistedBeforeKill.victim > 0 && persistedBeforeKill.survivor > 0;
        },
        15_000,
        20,
      );
      // Hold one of its conversations' member rows so that the victim dies with a batch in flight
      // (read, not committed, not acknowledged): those entries are the survivor's to claim.
      const [held, heldPartner] = pairsOf.get(victim.name)![0]!;
      await waitFor(async () => (await countFrom(held, heldPartner)) > 0, 10_000, 20);
      const lock = await holdMemberRow(heldPartner, held);
      try {
        await waitFor(async () => (await lockWaitsOf(victim.name)) > 0, 10_000, 20);
        const heldStream = conversationStream(names, held, heldPartner);
        inFlightAtKill = ((await redis.xpending(heldStream, names.group, "-", "+", 1000, victim.name)) as unknown[]).length;
        expect(rounds, "killed while messages still flow").toBeLessThan(ROUNDS);
        logsBeforeKill = survivor.proc.logs.length;
        killedAt = Date.now();
        expect(await victim.proc.stop("SIGKILL")).toBeNull();
      } finally {
        await lock.release();
      }
      expect(inFlightAtKill, "entries the victim held unacknowledged in the blocked batch").toBeGreaterThan(0);

      // No replacement: the survivor alone must end up with every partition. Timed on its log line
      // (a /metrics scrape can take seconds: see the note at workerBacklog).
      const full = await waitFor(
        () => {
          const line = survivor.proc.logs.slice(logsBeforeKill).find((l) => l["msg"] === "partition acquired" && l["owned"] === names.partitions);
          if (!line) throw new Error(`the survivor has not taken every partition; its lease log since the kill: ${JSON.stringify(survivor.proc.logs.slice(logsBeforeKill).filter((l) => l["component"] === "worker:leases"))}`);
          return line;
        },
        15_000,
        10,
      );
      takeoverMs = Date.now() - killedAt;
      takeoverLoggedMs = Date.parse(String(full["time"])) - killedAt;
      expect((await leaseOwners(redis, names)).every((o) => o === survivor.name), "every lease in Redis is the survivor's").toBe(true);
    } finally {
      await sender;
    }
    const sentTotal = flows.reduce((n, f) => n + f.sent, 0);
    // The dead worker's pending entries are claimed too, not only its partitions: at the new consumer's
    // first claim (they have been idle since the kill, longer than CHAT_WORKER_CLAIM_IDLE_MS).
    const claimed = await waitFor(() => {
      const n = sumOf(survivor.proc.logs, "claimed pending entries", "count");
      return n >= inFlightAtKill && n;
    }, 5_000, 20).catch(() => sumOf(survivor.proc.logs, "claimed pending entries", "count"));
    console.log(
      `[reliability] worker takeover (${kind}): all ${names.partitions} partitions on the survivor ${takeoverMs} ms after SIGKILL (by its log line's own time: ${takeoverLoggedMs} ms; ` +
        `lease TTL ${LEASE_TTL_MS} ms, heartbeat ${HEARTBEAT_MS} ms); before the kill the victim's conversations had ${persistedBeforeKill.victim} messages stored, the survivor's ${persistedBeforeKill.survivor}; ` +
        `the victim died with ${inFlightAtKill} entries of a blocked batch pending, the survivor claimed ${claimed}; ${sentTotal} messages in ${pairs.length} conversations`,
    );
    expect(takeoverMs, "takeover within the lease TTL + a heartbeat + margin").toBeLessThan(LEASE_TTL_MS + HEARTBEAT_MS + TAKEOVER_MARGIN_MS);
    expect(claimed, "entries claimed by the survivor").toBeGreaterThanOrEqual(inFlightAtKill);

    // Every message whose echo came back is in Postgres exactly once; nothing else is.
    const accepted = await acceptedIds(flows);
    expect([...accepted.values()].flat()).toHaveLength(sentTotal);
    // Unread counters (nothing was read) equal a recount of what each user received in each conversation.
    await expectStoredExactlyOnce(flows, accepted, () => storedMessages(users));

    // The survivor's pending entries end at 0 and nothing is left undelivered: by Redis (every
    // partition's group), then by the survivor's own metrics.
    const conversations = pairs.map(([a, b]) => [a, b] as const);
    await waitFor(async () => expect(await conversationsBacklog(redis as Redis, names, conversations)).toEqual({ pending: 0, lag: 0 }), 10_000, 50);
    expect(await logBacklog(redis as Redis, names)).toEqual({ pending: 0, lag: 0 });
    const scrapeStarted = Date.now();
    expect(await workerBacklog(survivor.port)).toEqual({ owned: names.partitions, pending: 0, lag: 0 });
    console.log(`[reliability] worker takeover (${kind}): one /metrics scrape of the survivor (${names.partitions} partitions) took ${Date.now() - scrapeStarted} ms`);
    // The survivor never let a partition go on its own side of the kill.
    expect(survivor.proc.logs.filter((l) => l["msg"] === "partition lost")).toEqual([]);
  });
});
