import { Cluster, Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { missingClusterBinaries, startRedisCluster, type LocalRedisCluster } from "@chat/redis-cluster-harness";

// The local Redis Cluster harness (@chat/redis-cluster-harness) against the real thing: 3 masters and
// 3 replicas, driven through ioredis' Cluster with sharded subscribers, then a master crashed.

const MISSING = missingClusterBinaries();
const POLL = { timeout: 20_000, interval: 100 };
const KEYS_PER_MASTER = 3;

describe.skipIf(MISSING.length > 0)(`local Redis Cluster harness${MISSING.length ? ` (skipped: no ${MISSING.join(" or ")} on PATH; apt-get install -y redis-server redis-tools)` : ""}`, () => {
  let cluster: LocalRedisCluster | undefined;
  let client: Cluster | undefined;
  let startedMs = 0;
  /** key -> port of the master that served its slot when written */
  const keys = new Map<string, number>();
  const channel = () => `harness:ch{${victimKey()}}`;
  const victimKey = () => [...keys.keys()][0]!;
  const received: { message: string; at: number }[] = [];

  beforeAll(async () => {
    const t0 = Date.now();
    cluster = await startRedisCluster();
    startedMs = Date.now() - t0;
    client = new Cluster(cluster.seeds, { shardedSubscribers: true });
    // A crashed master makes the client emit errors while it finds the new topology.
    client.on("error", () => {});
    client.on("smessage", (ch: string, message: string) => {
      if (ch === channel()) received.push({ message, at: Date.now() });
    });
  }, 60_000);

  afterAll(async () => {
    client?.disconnect();
    await cluster?.stop();
  });

  it("writes and reads keys on every master's slots, replicated (WAIT)", { timeout: 60_000 }, async () => {
    const masters = await cluster!.masters();
    expect(masters).toHaveLength(3);
    const perMaster = new Map<number, number>(masters.map((m) => [m.port, 0]));
    for (let i = 0; [...perMaster.values()].some((n) => n < KEYS_PER_MASTER); i++) {
      expect(i).toBeLessThan(1000);
      const key = `harness:key:${i}`;
      const { port } = await cluster!.masterOfSlot((await client!.cluster("KEYSLOT", key)) as number);
      const n = perMaster.get(port)!;
      if (n >= KEYS_PER_MASTER) continue;
      perMaster.set(port, n + 1);
      // One pipeline, so one connection: WAIT counts the SET just sent on it.
      const results = await client!.pipeline().set(key, `value-${i}`).wait(1, 1000).exec();
      expect(results).toEqual([
        [null, "OK"],
        [null, 1],
      ]);
      keys.set(key, port);
    }
    expect(new Set(keys.values())).toEqual(new Set(masters.map((m) => m.port)));
    for (const [key] of keys) expect(await client!.get(key)).toBe(`value-${key.split(":").pop()}`);
  });

  it("delivers a sharded publish (SSUBSCRIBE / SPUBLISH)", { timeout: 60_000 }, async () => {
    const masterClients = client!.nodes("master");
    expect(masterClients).toHaveLength(3);
    for (const node of masterClients) expect(await node.pubsub("SHARDCHANNELS")).toEqual([]);
    await client!.ssubscribe(channel());
    const owner = await cluster!.masterOfSlot((await client!.cluster("KEYSLOT", channel())) as number);
    expect(owner.port).toBe(keys.get(victimKey()));
    for (const node of client!.nodes("master")) {
      expect(await node.pubsub("SHARDCHANNELS")).toEqual(node.options.port === owner.port ? [channel()] : []);
    }
    expect(await client!.spublish(channel(), "before")).toBe(1);
    await expect.poll(() => received.map((r) => r.message), POLL).toContain("before");
  });

  it("fails a master over: its key survives, the others stay readable, sharded delivery resumes", { timeout: 60_000 }, async () => {
    const victimPort = keys.get(victimKey())!;
    const others = [...keys].filter(([, port]) => port !== victimPort).map(([key]) => key);

    // Read the other masters' keys all through the failover, one round every 10 ms or so.
    let reading = true;
    let reads = 0;
    let slowestReadMs = 0;
    const readErrors: string[] = [];
    const reader = (async () => {
      while (reading) {
        for (const key of others) {
          const t = Date.now();
          try {
            const value = await client!.get(key);
            if (value !== `value-${key.split(":").pop()}`) readErrors.push(`${key}: ${value}`);
          } catch (err) {
            readErrors.push(`${key}: ${(err as Error).message}`);
          }
          slowestReadMs = Math.max(slowestReadMs, Date.now() - t);
          reads++;
        }
        // Paced, so that the reader does not take the CPU the failover needs (two cores).
        await new Promise((r) => setTimeout(r, 10));
      }
    })();

    try {
      const { promotedPort, tookMs } = await cluster!.failover(victimPort);
      expect(promotedPort).not.toBe(victimPort);
      expect((await cluster!.masterOfSlot((await client!.cluster("KEYSLOT", victimKey())) as number)).port).toBe(promotedPort);

      const afterFailover = Date.now();
      await expect.poll(() => client!.get(victimKey()).catch((err: Error) => err.message), POLL).toBe(`value-${victimKey().split(":").pop()}`);
      const keyBackMs = Date.now() - afterFailover;

      // Nobody subscribes again here: ioredis has to move the subscription to the promoted master.
      let n = 0;
      const delivered = () => received.find((r) => r.message.startsWith("after-"));
      await expect
        .poll(async () => {
          if (!delivered()) await client!.spublish(channel(), `after-${n++}`).catch(() => 0);
          return delivered() !== undefined;
        }, POLL)
        .toBe(true);
      const deliveryBackMs = delivered()!.at - afterFailover;
      const promoted = new Redis({ host: "127.0.0.1", port: promotedPort, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      promoted.on("error", () => {});
      try {
        await promoted.connect();
        expect(await promoted.pubsub("SHARDCHANNELS")).toEqual([channel()]);
      } finally {
        promoted.disconnect();
      }

      reading = false;
      await reader;
      expect(readErrors).toEqual([]);
      expect(reads).toBeGreaterThan(others.length);
      console.log(`[cluster] started in ${startedMs} ms; failover took ${tookMs} ms; then the failed-over key read back after ${keyBackMs} ms, smessage again after ${deliveryBackMs} ms (publish #${n}); ${reads} reads of the other masters' keys meanwhile, slowest ${slowestReadMs} ms`);
    } finally {
      reading = false;
      await reader;
    }
  });
});
