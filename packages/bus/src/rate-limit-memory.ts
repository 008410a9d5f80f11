import type { RateLimiter } from "./bus.js";

/** Token buckets in this process: the embedded engine's, where one process serves every socket. */
export class MemoryRateLimiter implements RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private sweeps = 0;

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    private readonly now: () => number = Date.now,
  ) {}

  async take(username: string): Promise<number> {
    const now = this.now();
    // A full bucket is the same as none: forget those now and then, so idle users cost nothing.
    if (++this.sweeps % 10_000 === 0) this.forgetFull(now);
    const b = this.buckets.get(username) ?? { tokens: this.burst, at: now };
    const tokens = Math.min(this.burst, b.tokens + ((now - b.at) * this.ratePerSecond) / 1000);
    if (tokens < 1) return Math.ceil(((1 - tokens) * 1000) / this.ratePerSecond);
    this.buckets.set(username, { tokens: tokens - 1, at: now });
    return 0;
  }

  private forgetFull(now: number): void {
    for (const [user, b] of this.buckets) {
      if (b.tokens + ((now - b.at) * this.ratePerSecond) / 1000 >= this.burst) this.buckets.delete(user);
    }
  }
}
