import type { ConnectionCounter, CountedConnection } from "./bus.js";

/** Open sockets per user in one process: user -> member -> expiry (ms). Same guarantees as RedisConnectionLimit. */
export class MemoryConnectionLimit implements ConnectionCounter {
  private readonly users = new Map<string, Map<string, number>>();

  constructor(
    readonly limit: number,
    readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  async acquire(username: string, member: string): Promise<CountedConnection | null> {
    let open = this.users.get(username);
    if (!open) this.users.set(username, (open = new Map()));
    const now = this.now();
    for (const [m, expiry] of open) if (expiry <= now) open.delete(m);
    if (open.size >= this.limit) return null;
    open.set(member, now + this.ttlMs);
    return { key: username, member };
  }

  async release(c: CountedConnection): Promise<void> {
    const open = this.users.get(c.key);
    open?.delete(c.member);
    if (open?.size === 0) this.users.delete(c.key);
  }

  async refresh(connections: Iterable<CountedConnection>): Promise<void> {
    const expiry = this.now() + this.ttlMs;
    for (const c of connections) {
      const open = this.users.get(c.key);
      if (open?.has(c.member)) open.set(c.member, expiry);
    }
  }
}
