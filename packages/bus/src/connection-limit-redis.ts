import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";
import type { ConnectionCounter, CountedConnection } from "./bus.js";
import { onlineEnvelope } from "./envelope.js";
import type { RedisNames } from "./names.js";

type Run<T> = (...args: (string | number)[]) => Promise<T>;

/**
 * Open sockets per user in one Redis sorted set per user, scored by expiry. The scripts that count a
 * socket and uncount it also announce the user online or offline, on the user's online channel (the
 * same slot), so the announcements of one user follow the order Redis counted in.
 */
export class RedisConnectionLimit implements ConnectionCounter {
  constructor(
    private readonly redis: Redis | Cluster,
    private readonly names: RedisNames,
    readonly limit: number,
    readonly ttlMs: number,
    /** Origin of the announcements' envelopes (the node id). */
    private readonly origin: string,
  ) {
    if (!("chatConnectionsAcquire" in redis)) {
      redis.defineCommand("chatConnectionsAcquire", {
        numberOfKeys: 1,
        lua: readFileSync(new URL("./lua/connections-acquire.lua", import.meta.url), "utf8"),
      });
    }
    if (!("chatConnectionsRelease" in redis)) {
      redis.defineCommand("chatConnectionsRelease", {
        numberOfKeys: 1,
        lua: readFileSync(new URL("./lua/connections-release.lua", import.meta.url), "utf8"),
      });
    }
  }

  async acquire(username: string, member: string): Promise<CountedConnection | null> {
    const key = this.names.userConnections(username);
    const run = (this.redis as unknown as { chatConnectionsAcquire: Run<number> }).chatConnectionsAcquire;
    const ok = await run.call(this.redis, key, member, this.limit, this.ttlMs, this.names.onlineChannel(username), onlineEnvelope(this.origin, username, true));
    return ok === 1 ? { key, member, username } : null;
  }

  async release(c: CountedConnection): Promise<void> {
    const run = (this.redis as unknown as { chatConnectionsRelease: Run<number> }).chatConnectionsRelease;
    await run.call(this.redis, c.key, c.member, this.names.onlineChannel(c.username), onlineEnvelope(this.origin, c.username, false));
  }

  async online(usernames: readonly string[]): Promise<Set<string>> {
    // One slot per user: one command each, sent together.
    const now = Date.now();
    const counts = await Promise.all(usernames.map((u) => this.redis.zcount(this.names.userConnections(u), `(${now}`, "+inf")));
    return new Set(usernames.filter((_, i) => counts[i]! > 0));
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
