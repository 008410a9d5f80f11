import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";
import type { Presence, PresenceEntry } from "./bus.js";
import type { RedisNames } from "./names.js";

/**
 * Presence in Redis sorted sets scored by expiry; multi-key changes are Lua scripts. A room's set and
 * the expiry index it is listed in are its partition's (one slot): each script touches one partition.
 */
export class RedisPresence implements Presence {
  constructor(
    private readonly redis: Redis | Cluster,
    private readonly names: RedisNames,
    /** How long an entry lives without a refresh, in ms. */
    readonly ttlMs: number,
  ) {
    const lua = (name: string) => readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), "utf8");
    redis.defineCommand("chatPresenceJoin", { numberOfKeys: 2, lua: lua("presence-join") });
    redis.defineCommand("chatPresenceLeave", { numberOfKeys: 2, lua: lua("presence-leave") });
    redis.defineCommand("chatPresenceRefresh", { lua: lua("presence-refresh") });
  }

  async join(e: PresenceEntry): Promise<{ first: boolean; users: string[] }> {
    const reply = (await this.call("chatPresenceJoin", [
      this.names.presenceRoom(e.roomId), this.indexOf(e.roomId), e.member, e.roomId, e.user, this.ttlMs,
    ])) as [number, ...string[]];
    const [first, ...users] = reply;
    return { first: first === 1, users };
  }

  async leave(e: PresenceEntry): Promise<{ last: boolean }> {
    const reply = await this.call("chatPresenceLeave", [
      this.names.presenceRoom(e.roomId), this.indexOf(e.roomId), e.member, e.roomId, e.user, "",
    ]);
    return { last: reply === 1 };
  }

  async refresh(entries: readonly PresenceEntry[]): Promise<void> {
    const byPartition = new Map<number, PresenceEntry[]>();
    for (const e of entries) {
      const p = this.names.partitionOf(e.roomId);
      const list = byPartition.get(p);
      if (list) list.push(e);
      else byPartition.set(p, [e]);
    }
    const calls: Promise<unknown>[] = [];
    for (const [p, list] of byPartition) {
      for (let i = 0; i < list.length; i += 500) {
        const batch = list.slice(i, i + 500);
        const keys = batch.map((e) => this.names.presenceRoom(e.roomId));
        const args = batch.map((e) => `${e.roomId}\n${e.member}`);
        calls.push(this.call("chatPresenceRefresh", [keys.length + 1, this.names.presenceIndex(p), ...keys, this.ttlMs, ...args]));
      }
    }
    await Promise.all(calls);
  }

  /** Looks at most `limit` due entries of each partition's index: every node sweeps every partition. */
  async sweepExpired(limit = 200): Promise<{ roomId: string; user: string }[]> {
    const left: { roomId: string; user: string }[] = [];
    const now = Date.now();
    for (let p = 0; p < this.names.partitions; p++) {
      const index = this.names.presenceIndex(p);
      const due = await this.redis.zrangebyscore(index, "-inf", now, "LIMIT", 0, limit);
      for (const item of due) {
        const nl = item.indexOf("\n");
        const roomId = item.slice(0, nl);
        const member = item.slice(nl + 1);
        const user = member.slice(0, member.indexOf("|"));
        const reply = await this.call("chatPresenceLeave", [this.names.presenceRoom(roomId), index, member, roomId, user, "expire"]);
        if (reply === 1) left.push({ roomId, user });
      }
    }
    return left;
  }

  private indexOf(roomId: string): string {
    return this.names.presenceIndex(this.names.partitionOf(roomId));
  }

  private call(command: string, args: (string | number)[]): Promise<unknown> {
    return (this.redis as unknown as Record<string, (...a: (string | number)[]) => Promise<unknown>>)[command]!(...args);
  }
}
