import { readFileSync } from "node:fs";
import type { Redis } from "ioredis";
import type { ConnectionCounter, CountedConnection } from "./bus.js";
import type { RedisNames } from "./names.js";

/** Open sockets per user in one Redis sorted set per user, scored by expiry. */
export class RedisConnectionLimit implements ConnectionCounter {
  constructor(
    private readonly redis: Redis,
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
    const pipeline = this.redis.pipeline();
    let n = 0;
    for (const c of connections) {
      pipeline.zadd(c.key, "XX", expiry, c.member);
      if (++n % 1000 === 0) await pipeline.exec();
    }
    await pipeline.exec();
  }
}
