import { redisNames } from "@chat/bus";
import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import {
  REDIS_CLUSTER_URL,
  connectReady,
  freshPrefix,
  messagesBetween,
  sharedClusterNodes,
  startGateway,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  userWhose,
  waitFor,
} from "./helpers/index.js";

testSql();

async function onNode<T>(port: number, run: (r: Redis) => Promise<T>): Promise<T> {
  const r = new Redis({ host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    return await run(r);
  } finally {
    r.disconnect();
  }
}

async function keysOf(r: Redis, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await r.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
    keys.push(...batch);
    cursor = next;
  } while (cursor !== "0");
  return keys;
}

// Point "after a run on the cluster" of the Redis Cluster issue: the deployment's data spreads over
// every master (no hash tag pins it to one), and its pub/sub is sharded only: a classic channel on a
// cluster is broadcast to every node for every message.
describe.runIf(REDIS_CLUSTER_URL !== null)("a deployment's layout on the Redis Cluster", () => {
  it("puts keys of the deployment on every master and subscribes shard channels only, no classic channel on any node", async () => {
    const prefix = freshPrefix("layout");
    const names = redisNames(prefix);
    const env = { REDIS_URL: REDIS_CLUSTER_URL! };
    const g = await startGateway(prefix, env);
    await startWorker(prefix, env);
    const alice = uniqueUser("alice");
    // One conversation in a partition of each master (partitions 0, 8 and 15 of 16: names.test).
    const peers = [0, 8, 15].map((p) => userWhose(names, "peer", alice, (q) => q === p));
    const aliceToken = await tokenFor(alice);
    await connectReady(g.url, "/ws/notifications/", aliceToken);
    for (const [i, peer] of peers.entries()) {
      const a = await connectReady(g.url, `/ws/${peer}/`, aliceToken);
      const b = await connectReady(g.url, `/ws/${alice}/`, await tokenFor(peer));
      await connectReady(g.url, "/ws/notifications/", await tokenFor(peer));
      a.send({ type: "chat_message", message: `to ${peer}`, client_id: `layout-${i}` });
      expect(await b.next("chat_message")).toMatchObject({ client_id: `layout-${i}` });
      b.send({ type: "read_messages" });
    }
    for (const peer of peers) await waitFor(async () => (await messagesBetween(alice, peer)).length === 1, 15000);

    const nodes = await sharedClusterNodes(REDIS_CLUSTER_URL!);
    const masters = nodes.filter((n) => n.master);
    expect(masters).toHaveLength(3);
    for (const m of masters) {
      const keys = await onNode(m.port, (r) => keysOf(r, prefix));
      expect(keys.length, `keys of ${prefix} on master ${m.port}`).toBeGreaterThan(0);
    }
    const shardChannels: string[] = [];
    for (const n of nodes) {
      const [classic, sharded] = await onNode(n.port, async (r) => [(await r.pubsub("CHANNELS", `${prefix}*`)) as string[], (await r.pubsub("SHARDCHANNELS", `${prefix}*`)) as string[]]);
      expect(classic, `classic channels of ${prefix} on node ${n.port}`).toEqual([]);
      if (n.master) shardChannels.push(...sharded);
    }
    // Rooms, users and the gateway's probes, all as shard channels.
    expect(shardChannels.some((c) => c.includes("}:room:"))).toBe(true);
    expect(shardChannels.some((c) => c.endsWith("}:user"))).toBe(true);
    expect(shardChannels.filter((c) => c.includes("}:probe:"))).toHaveLength(names.partitions);
  });
});
