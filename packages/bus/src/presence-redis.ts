import { readFileSync } from "node:fs";
import type { Redis } from "ioredis";
import type { Presence, PresenceEntry } from "./bus.js";
import type { RedisNames } from "./names.js";

/** Presence in Redis sorted sets scored by expiry; multi-key changes are Lua scripts. */
export class RedisPresence implements Presence {
  constructor(
    private readonly redis: Redis,
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
      this.names.presenceRoom(e.roomId), this.names.presenceIndex, e.member, e.roomId, e.user, this.ttlMs,
    ])) as [number, ...string[]];
    const [first, ...users] = reply;
    return { first: first === 1, users };
  }

  async leave(e: PresenceEntry): Promise<{ last: boolean }> {
    const reply = await this.call("chatPresenceLeave", [
      this.names.presenceRoom(e.roomId), this.names.presenceIndex, e.member, e.roomId, e.user, "",
    ]);
    return { last: reply === 1 };
  }

  async refresh(entries: readonly PresenceEntry[]): Promise<void> {
    for (let i = 0; i < entries.length; i += 500) {
      const batch = entries.slice(i, i + 500);
      const keys = batch.map((e) => this.names.presenceRoom(e.roomId));
      const args = batch.map((e) => `${e.roomId}\n${e.member}`);
      await this.call("chatPresenceRefresh", [keys.length + 1, this.names.presenceIndex, ...keys, this.ttlMs, ...args]);
    }
  }

  async sweepExpired(limit = 200): Promise<{ roomId: string; user: string }[]> {
    const due = await this.redis.zrangebyscore(this.names.presenceIndex, "-inf", Date.now(), "LIMIT", 0, limit);
    const left: { roomId: string; user: string }[] = [];
    for (const item of due) {
      const nl = item.indexOf("\n");
      const roomId = item.slice(0, nl);
      const member = item.slice(nl + 1);
      const user = member.slice(0, member.indexOf("|"));
      const reply = await this.call("chatPresenceLeave", [
        this.names.presenceRoom(roomId), this.names.presenceIndex, member, roomId, user, "expire",
      ]);
      if (reply === 1) left.push({ roomId, user });
    }
    return left;
  }

  private call(command: string, args: (string | number)[]): Promise<unknown> {
    return (this.redis as unknown as Record<string, (...a: (string | number)[]) => Promise<unknown>>)[command]!(...args);
  }
}
