/** Typing frames a user may send per second on one node, and in a burst. */
const TYPING_PER_SECOND = 2;
const BURST = 3;

/**
 * Per-user token buckets for typing frames on this node. A typing frame is cheap (one publish on the
 * conversation's channel, no stream entry, nothing stored), and a client sends one every few
 * seconds while the user types; the bucket stops a client that sends one per keystroke or floods.
 * Frames over the budget are dropped without an error: typing is a hint, and the next one comes soon.
 * Per node, not cluster-wide: a user's sockets on n nodes may send n times as many, which the
 * per-user socket limit bounds.
 */
export class TypingLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  allow(user: string, now: number): boolean {
    const bucket = this.buckets.get(user);
    if (!bucket) {
      this.buckets.set(user, { tokens: BURST - 1, at: now });
      return true;
    }
    bucket.tokens = Math.min(BURST, bucket.tokens + ((now - bucket.at) / 1000) * TYPING_PER_SECOND);
    bucket.at = now;
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  /** Forgets the users whose bucket is full again, so the map holds only recent typists. */
  sweep(now: number): void {
    const full = (BURST / TYPING_PER_SECOND) * 1000;
    for (const [user, bucket] of this.buckets) if (now - bucket.at >= full) this.buckets.delete(user);
  }
}
