import type { RedisNames } from "@chat/bus";
import { Redis, type Cluster } from "ioredis";
import { afterAll, expect } from "vitest";
import { REDIS_URL, uniqueUser } from "./env.js";
import { atEnd } from "./scope.js";
import { waitFor } from "./wait.js";

let client: Redis | null = null;

/** A Redis connection for inspecting state, closed after the file's tests. */
export function testRedis(): Redis {
  if (!client) {
    client = new Redis(REDIS_URL);
    const c = client;
    afterAll(async () => {
      await c.quit();
      client = null;
    });
  }
  return client;
}

/**
 * Deletes this test's keys from the shared Redis when it ends. Call it before starting the test's
 * processes: teardowns run in reverse, so this runs after they are stopped.
 */
export function dropPrefixAtEnd(prefix: string): void {
  atEnd(async () => {
    const redis = testRedis();
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      if (keys.length > 0) await redis.unlink(...keys);
    } while (cursor !== "0");
  });
}

/** The stream key of the message-log partition holding the conversation of `a` and `b`. */
export function conversationStream(names: RedisNames, a: string, b: string): string {
  return names.stream(names.partitionOf(names.roomId(a, b)));
}

/** Every partition's stream key, in partition order. */
export function allStreams(names: RedisNames): string[] {
  return Array.from({ length: names.partitions }, (_, p) => names.stream(p));
}

/** A stream entry as ioredis returns it: its id and its field/value list. */
export type RawStreamEntry = [id: string, fields: string[]];

/**
 * Every entry of every partition of the message log, partition after partition (each in stream
 * order), for tests that look for client_ids or ids across several conversations.
 */
export async function allLogEntries(redis: Redis, names: RedisNames): Promise<RawStreamEntry[]> {
  const perPartition = await Promise.all(allStreams(names).map((s) => redis.xrange(s, "-", "+")));
  return perPartition.flat();
}

/** Entries in every partition's stream together (XLEN summed; a missing stream counts 0). */
export async function logLength(redis: Redis, names: RedisNames): Promise<number> {
  const lengths = await Promise.all(allStreams(names).map((s) => redis.xlen(s)));
  return lengths.reduce((a, b) => a + b, 0);
}

/**
 * The persisters' group backlog summed over every partition: `pending` delivered but unacknowledged,
 * `lag` not yet delivered (XINFO GROUPS). A partition without a stream or group counts 0.
 */
export async function logBacklog(redis: Redis, names: RedisNames): Promise<{ pending: number; lag: number }> {
  const total = { pending: 0, lag: 0 };
  for (const stream of allStreams(names)) {
    const g = await groupOf(redis, stream, names.group);
    if (!g) continue;
    total.pending += Number(g["pending"]);
    total.lag += Number(g["lag"]);
  }
  return total;
}

/** One consumer group of a stream as XINFO GROUPS describes it, or null without the stream or group. */
export async function groupOf(redis: Redis, stream: string, group: string): Promise<Record<string, unknown> | null> {
  let groups: unknown[][];
  try {
    groups = (await redis.xinfo("GROUPS", stream)) as unknown[][];
  } catch (err) {
    if (err instanceof Error && err.message.includes("no such key")) return null;
    throw err;
  }
  for (const g of groups) {
    const o: Record<string, unknown> = {};
    for (let i = 0; i + 1 < g.length; i += 2) o[String(g[i])] = g[i + 1];
    if (o["name"] === group) return o;
  }
  return null;
}

/**
 * The persisters' group backlog summed over the partitions of these conversations (each partition
 * once); throws when one of them has no stream or no group yet, as a single-stream check would.
 */
export async function conversationsBacklog(redis: Redis, names: RedisNames, conversations: readonly (readonly [string, string])[]): Promise<{ pending: number; lag: number }> {
  const streams = new Set(conversations.map(([a, b]) => conversationStream(names, a, b)));
  const total = { pending: 0, lag: 0 };
  for (const stream of streams) {
    const g = await groupOf(redis, stream, names.group);
    if (!g) throw new Error(`no consumer group ${names.group} on ${stream}`);
    total.pending += Number(g["pending"]);
    total.lag += Number(g["lag"]);
  }
  return total;
}

/** Who holds each partition's lease now (null: nobody). */
export async function leaseOwners(redis: Redis | Cluster, names: RedisNames): Promise<(string | null)[]> {
  return Promise.all(Array.from({ length: names.partitions }, (_, p) => redis.get(names.partitionLease(p))));
}

/**
 * Waits until every partition is leased and `workers` distinct workers share them (a worker that
 * joins takes its share at the next heartbeats); returns each partition's owner.
 */
export async function waitForLeaseShares(redis: Redis, names: RedisNames, workers: number, timeoutMs = 15000): Promise<string[]> {
  return waitFor(
    async () => {
      const owners = await leaseOwners(redis, names);
      expect(owners.every((o) => o !== null), `every partition leased: ${JSON.stringify(owners)}`).toBe(true);
      expect(new Set(owners).size, `distinct lease holders: ${JSON.stringify(owners)}`).toBe(workers);
      return owners as string[];
    },
    timeoutMs,
  );
}

/** A fresh username whose conversation with `other` lies in a partition `wanted` accepts. */
export function userWhose(names: RedisNames, label: string, other: string, wanted: (partition: number) => boolean): string {
  for (let i = 0; i < 10_000; i++) {
    const user = uniqueUser(label);
    if (wanted(names.partitionOf(names.roomId(user, other)))) return user;
  }
  throw new Error(`no username for ${label} puts its conversation with ${other} where wanted`);
}

/** A node of the shared test cluster as CLUSTER NODES shows it. */
export interface SharedClusterNode {
  id: string;
  port: number;
  master: boolean;
  /** The master it follows, for a replica. */
  masterId: string | null;
  /** Slot ranges it serves, as [first, last]. */
  slots: [number, number][];
}

/** The live nodes of the shared test cluster (CHAT_TEST_REDIS_CLUSTER_URL), from CLUSTER NODES of its first seed. */
export async function sharedClusterNodes(url: string): Promise<SharedClusterNode[]> {
  const seed = /redis\+cluster:\/\/([^:/?]+):(\d+)/.exec(url);
  if (!seed) throw new Error(`not a cluster URL: ${url}`);
  const any = new Redis({ host: seed[1], port: Number(seed[2]), lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    const lines = ((await any.call("CLUSTER", "NODES")) as string).trim().split("\n");
    return lines
      .map((l) => l.split(" "))
      .filter((f) => !f[2]!.includes("fail"))
      .map((f) => ({
        id: f[0]!,
        port: Number(f[1]!.split("@")[0]!.split(":")[1]),
        master: f[2]!.includes("master"),
        masterId: f[3] === "-" ? null : f[3]!,
        slots: f.slice(8).filter((r) => !r.startsWith("[")).map((r) => {
          const [lo, hi] = r.split("-").map(Number);
          return [lo!, hi ?? lo!] as [number, number];
        }),
      }));
  } finally {
    any.disconnect();
  }
}

