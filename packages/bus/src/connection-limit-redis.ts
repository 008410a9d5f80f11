import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";
import type { ConnectionCounter, CountedConnection } from "./bus.js";
import type { RedisNames } from "./names.js";

/** Open sockets per user in one Redis sorted set per user, scored by expiry. */
export class RedisConnectionLimit implements ConnectionCounter {
  constructor(
    private readonly redis: Redis | Cluster,
    private readonly names: RedisNames,
    readonly limit: number,
    readonly ttlMs: number,
  ) {
    if (!("chatConnectionsAcquire" in redis)) {
      redis.defineCommand("chatConnectionsAcquire", {
        numberOfKeys: 1,
        lua: readFileSync(new URL("./lua/connections-acquire.lua", import.meta.url), "utf8"),
      });
    }
  }

  async acquire(username: string, member: string): Promise<CountedConnection | null> {
    const key = this.names.userConnections(username);
    const run = (this.redis as unknown as { chatConnectionsAcquire(...a: (string | number)[]): Promise<number> }).chatConnectionsAcquire;
    const ok = await run.call(this.redis, key, member, this.limit, this.ttlMs);
    return ok === 1 ? { key, member } : null;
  }

  async release(c: CountedConnection): Promise<void> {
    await this.redis.zrem(c.key, c.member);
  }

  async refresh(connections: Iterable<CountedConnection>): Promise<void> {
    const expiry = Date.now() + this.ttlMs;
    // Each user's set is in its own slot: no pipeline or script can take them together on a cluster.
    // Sent without waiting, a thousand at a time, ioredis writes them out in a few socket writes.
    let calls: Promise<unknown>[] = [];
    for (const c of connections) {
      calls.push(this.redis.zadd(c.key, "XX", expiry, c.member));
      if (calls.length >= 1000) {
        await Promise.all(calls);
        calls = [];
      }
    }
    await Promise.all(calls);
  }
}
