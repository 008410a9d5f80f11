import type { ConnectionCounter, CountedConnection } from "./bus.js";

/**
 * Open sockets per user in one process: user -> member -> expiry (ms). Same guarantees as
 * RedisConnectionLimit: `announce` is told, in the order sockets were counted, when a user's first
 * socket opens and their last closes.
 */
export class MemoryConnectionLimit implements ConnectionCounter {
  private readonly users = new Map<string, Map<string, number>>();

  constructor(
    readonly limit: number,
    readonly ttlMs: number,
    private readonly announce: (username: string, online: boolean) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  private live(username: string): Map<string, number> | undefined {
    const open = this.users.get(username);
    if (!open) return undefined;
    const now = this.now();
    for (const [m, expiry] of open) if (expiry <= now) open.delete(m);
    return open;
  }

  async acquire(username: string, member: string): Promise<CountedConnection | null> {
    let open = this.live(username);
    if (!open) this.users.set(username, (open = new Map()));
    if (open.size >= this.limit) return null;
    open.set(member, this.now() + this.ttlMs);
    if (open.size === 1) this.announce(username, true);
    return { key: username, member, username };
  }

  async release(c: CountedConnection): Promise<void> {
    const open = this.users.get(c.key);
    if (!open?.delete(c.member)) return;
    if (this.live(c.key)!.size > 0) return;
    this.users.delete(c.key);
    this.announce(c.username, false);
  }

  async online(usernames: readonly string[]): Promise<Set<string>> {
    return new Set(usernames.filter((u) => (this.live(u)?.size ?? 0) > 0));
  }

  async refresh(connections: Iterable<CountedConnection>): Promise<void> {
    const expiry = this.now() + this.ttlMs;
    for (const c of connections) {
      const open = this.users.get(c.key);
      if (open?.has(c.member)) open.set(c.member, expiry);
    }
  }
}
