import { readFileSync } from "node:fs";
import type { Redis } from "ioredis";
import type { RedisNames } from "./names.js";

/** One open chat socket of `user` in conversation `roomId`. */
export interface PresenceEntry {
  roomId: string;
  user: string;
  /** Unique per socket across the cluster: `<user>|<node id>:<socket seq>`. */
  member: string;
}

/**
 * Who has a chat socket open to which conversation, across every node.
 * Guarantees: join/leave are atomic, so exactly one socket sees `first` and exactly one `last` per
 * user and conversation; an entry not refreshed within the TTL is dropped by `sweepExpired`, which
 * reports each user whose last entry vanished exactly once cluster-wide.
 */
export class RedisPresence {
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

  static member(user: string, nodeId: string, socketSeq: number): string {
    return `${user}|${nodeId}:${socketSeq}`;
  }

  /** Adds the entry; `first` when the user had no other live socket in the room; `users` is everyone online there. */
  async join(e: PresenceEntry): Promise<{ first: boolean; users: string[] }> {
    const reply = (await this.call("chatPresenceJoin", [
      this.names.presenceRoom(e.roomId), this.names.presenceIndex, e.member, e.roomId, e.user, this.ttlMs,
    ])) as [number, ...string[]];
    const [first, ...users] = reply;
    return { first: first === 1, users };
  }

  /** Removes the entry; `last` when the user has no live socket left in the room. */
  async leave(e: PresenceEntry): Promise<{ last: boolean }> {
    const reply = await this.call("chatPresenceLeave", [
      this.names.presenceRoom(e.roomId), this.names.presenceIndex, e.member, e.roomId, e.user, "",
    ]);
    return { last: reply === 1 };
  }

  /** Extends the life of live entries (call every TTL/3 or so). */
  async refresh(entries: readonly PresenceEntry[]): Promise<void> {
    for (let i = 0; i < entries.length; i += 500) {
      const batch = entries.slice(i, i + 500);
      const keys = batch.map((e) => this.names.presenceRoom(e.roomId));
      const args = batch.map((e) => `${e.roomId}\n${e.member}`);
      await this.call("chatPresenceRefresh", [keys.length + 1, this.names.presenceIndex, ...keys, this.ttlMs, ...args]);
    }
  }

  /**
   * Drops entries whose node stopped refreshing them (it died without closing its sockets).
   * Returns the users who thereby left a room, each reported by exactly one caller.
   */
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
