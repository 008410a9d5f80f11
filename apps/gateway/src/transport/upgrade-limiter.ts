/**
 * Upgrades per second per client address, on this node only (a token bucket per address, bursts of
 * twice the rate). Off by default: behind a load balancer or NAT many users share one address.
 */
export class UpgradeLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly burst: number;

  constructor(private readonly perSecond: number) {
    this.burst = perSecond * 2;
    // Idle addresses are forgotten so the map stays small.
    setInterval(() => {
      const now = Date.now();
      for (const [address, b] of this.buckets) if (now - b.at > 60_000) this.buckets.delete(address);
    }, 30_000).unref();
  }

  take(address: string): boolean {
    const now = Date.now();
    const b = this.buckets.get(address) ?? { tokens: this.burst, at: now };
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) * this.perSecond) / 1000);
    b.at = now;
    this.buckets.set(address, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}
