import { performance } from "node:perf_hooks";
import type { Cluster, Redis } from "ioredis";

/**
 * Partition leases that the persistence workers share.
 *
 * The message log is split into N partitions; each live worker owns about N / workers of them. A
 * partition's lease is a string key holding its owner's id with a TTL, renewed at every heartbeat.
 * A worker that dies stops renewing, so its leases expire and the others pick them up at their next
 * heartbeat: takeover within ttlMs + heartbeatMs (+ one round trip) of the victim's last renew; with
 * the registry entry expiring with the leases, the survivors' shares grow at the same heartbeat.
 *
 * Redis Cluster: every script touches exactly one key (the registry or one lease), so each runs on
 * that key's node whatever the key names are. No pipelines or MULTI across keys for the same reason.
 *
 * Clocks: the registry scores (member expiry) are compared by every worker, so they come from Redis
 * TIME inside the script rather than from each host's clock: two workers with skewed clocks would
 * otherwise evict each other or keep a dead worker counted. Lease expiry is relative (PX), so Redis
 * alone decides it. Locally only monotonic elapsed time (performance.now) is used, to know when our
 * own leases may have expired.
 *
 * Overlap window (two workers consuming one partition). A lease's local deadline is the time its
 * last successful renew (or acquire) was *sent*, plus ttlMs less a margin (ttlMs / 10: 1 s of the
 * default 10 s). Redis set the expiry only on receiving that command, so the local deadline comes at
 * least the margin before the lease can expire in Redis. At the deadline a timer independent of the
 * heartbeat (which may be stuck on an unreachable Redis) calls released(p, "lost"): the consumer
 * stops reading and finishes its batch in hand. Another worker can take p only after the real expiry,
 * at its next heartbeat. So the two overlap only while that batch in hand runs past the margin plus
 * the new owner's wait for its heartbeat: at most one batch (bounded by the consumer's stall timeout)
 * less the margin, more only if our event loop runs the timer over the margin late. A Redis failover
 * that loses acknowledged writes breaks the premise (the lease may vanish early); then the next
 * renew finds it gone, so the overlap is at most a heartbeat plus a batch. A rebalance or a stop has
 * no overlap: the lease is deleted only after released() resolved, and renewed until then.
 * Persistence is idempotent on message ids, so an overlap can reorder writes of a partition's
 * conversations but not lose or duplicate them.
 */

export type RedisClient = Redis | Cluster;

export interface LeaseKeys {
  /** The lease of partition i (a string key whose value is the owner's worker id). */
  lease(partition: number): string;
  /** The registry of live workers: a sorted set member = worker id, score = expiry ms. One small control-plane key. */
  readonly workers: string;
}

export interface LeaseOptions {
  partitions: number;
  /** Unique per process. */
  workerId: string;
  /** Life of a lease and of a registry entry without a heartbeat. */
  ttlMs: number;
  heartbeatMs: number;
}

export interface LeaseEvents {
  /** This worker gained partition p: start consuming it (and claim its pending entries). */
  acquired(partition: number): void;
  /**
   * This worker must give p up (rebalance, stopping) or lost it (lease expired or taken): stop
   * consuming p; resolve once the batch in hand is done. For "rebalance" and "stopping" the lease
   * is deleted only after this resolves (and renewed until then).
   */
  released(partition: number, reason: "rebalance" | "lost" | "stopping"): Promise<void>;
}

export interface LeaseLog {
  info(o: object, m: string): void;
  warn(o: object, m: string): void;
}

// Registers (or refreshes) a worker, drops the expired ones, returns the live ids. Redis TIME, not the
// caller's clock, so every worker compares expiries on one clock. replicate_commands lets a write
// follow TIME on Redis < 5 (a no-op since 5, where scripts replicate their effects).
const registerLua = `
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- The key outlives its last member by at most one ttl, so a cluster that stopped leaves nothing.
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return redis.call('ZRANGE', KEYS[1], 0, -1)
`;

const renewLua = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`;

// SET NX, except that a lease still holding our own id is ours again: after a renew that timed out
// locally (we stopped consuming) but did reach Redis, the lease would otherwise stay blocked, for us
// and for everyone else, until it expired.
const acquireLua = `
local owner = redis.call('GET', KEYS[1])
if owner == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`;

// Deletes only our own lease: one that expired and was taken meanwhile belongs to someone else.
const releaseLua = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

interface LeaseScripts {
  chatLeaseRegister(key: string, workerId: string, ttlMs: number): Promise<string[]>;
  chatLeaseRenew(key: string, workerId: string, ttlMs: number): Promise<number>;
  chatLeaseAcquire(key: string, workerId: string, ttlMs: number): Promise<number>;
  chatLeaseRelease(key: string, workerId: string): Promise<number>;
}

/** One lease we hold; object identity tells a late answer about an earlier holding from the current one. */
interface Holding {
  /** performance.now() at which we stop consuming unless renewed: before the lease can expire in Redis. */
  validUntil: number;
  /** The renew found it gone or someone else's while we were handing it over. */
  lost: boolean;
}

/** FNV-1a: a stable, well-spread start partition per worker, so workers do not all race for partition 0. */
function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

export class PartitionLeases {
  /** Partitions being consumed. */
  private readonly held = new Map<number, Holding>();
  /** released(p, "rebalance" | "stopping") called, lease kept (renewed) until it resolves and is deleted. */
  private readonly handingOver = new Map<number, Holding>();
  /** Releases in flight (any reason): such a partition is not acquired again before its consumer stopped. */
  private readonly settling = new Map<number, Promise<void>>();
  /** This worker's preference order: all partitions starting at its hashed offset. */
  private readonly order: readonly number[];
  private readonly scripts: LeaseScripts;
  private state: "idle" | "running" | "stopping" | "stopped" = "idle";
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | null = null;
  private stopped: Promise<void> | null = null;
  private lastShare = { workers: -1, target: -1 };
  /**
   * How long after sending a successful renew we keep consuming without another: the TTL less a
   * margin (a tenth of it, and at most half the gap to the next renew so a healthy worker never
   * trips it), so that our consumer is told to stop before the lease can pass to anyone, even with
   * a late timer or a drifting clock, and a short batch in hand ends before the new owner reads.
   */
  private readonly localTtlMs: number;
  private failing = false;

  constructor(
    private readonly redis: RedisClient,
    private readonly keys: LeaseKeys,
    private readonly options: LeaseOptions,
    private readonly events: LeaseEvents,
    private readonly log: LeaseLog,
  ) {
    const { partitions, ttlMs, heartbeatMs } = options;
    if (!Number.isInteger(partitions) || partitions < 1) throw new Error(`partitions must be a positive integer, not ${partitions}`);
    // A heartbeat period at or over the TTL would let every lease expire between two renewals.
    if (!(heartbeatMs > 0 && heartbeatMs < ttlMs)) throw new Error(`heartbeatMs (${heartbeatMs}) must be positive and under ttlMs (${ttlMs})`);
    this.localTtlMs = ttlMs - Math.min(ttlMs / 10, (ttlMs - heartbeatMs) / 2);
    const offset = hash(options.workerId) % partitions;
    this.order = Array.from({ length: partitions }, (_, i) => (offset + i) % partitions);
    if (!("chatLeaseRegister" in redis)) redis.defineCommand("chatLeaseRegister", { numberOfKeys: 1, lua: registerLua });
    if (!("chatLeaseRenew" in redis)) redis.defineCommand("chatLeaseRenew", { numberOfKeys: 1, lua: renewLua });
    if (!("chatLeaseAcquire" in redis)) redis.defineCommand("chatLeaseAcquire", { numberOfKeys: 1, lua: acquireLua });
    if (!("chatLeaseRelease" in redis)) redis.defineCommand("chatLeaseRelease", { numberOfKeys: 1, lua: releaseLua });
    this.scripts = redis as unknown as LeaseScripts;
  }

  /** Registers and acquires this worker's share (first heartbeat), then heartbeats every heartbeatMs. */
  async start(): Promise<void> {
    if (this.state !== "idle") throw new Error(`lease manager already ${this.state}`);
    this.state = "running";
    const started = performance.now();
    this.ticking = this.heartbeat();
    try {
      await this.ticking;
    } catch (err) {
      this.ticking = null;
      // Whatever the failed heartbeat did acquire goes back, so start() fails clean.
      await this.stop();
      throw err;
    }
    this.ticking = null;
    this.armDeadline();
    this.schedule(started);
  }

  /** Partitions this worker consumes now (a copy). */
  owned(): ReadonlySet<number> {
    return new Set(this.held.keys());
  }

  /** Releases every lease (after events.released(p, "stopping") resolves for each) and leaves the registry. */
  stop(): Promise<void> {
    return (this.stopped ??= this.shutdown());
  }

  private async shutdown(): Promise<void> {
    this.state = "stopping";
    // A heartbeat in flight may still acquire; wait for it so those are released too.
    await this.ticking?.catch(() => {});
    const ctx = { workerId: this.options.workerId };
    // Leave the registry first: the others then count one worker fewer and take each partition as
    // soon as its lease is deleted below, instead of at our registry entry's expiry.
    try {
      await this.redis.zrem(this.keys.workers, this.options.workerId);
    } catch (err) {
      this.log.warn({ ...ctx, err: message(err) }, "lease registry: could not leave (the entry expires by itself)");
    }
    for (const p of [...this.held.keys()]) this.handOver(p, "stopping");
    // The heartbeat (if started) keeps renewing the leases being handed over while their consumers finish.
    while (this.settling.size > 0) await Promise.all(this.settling.values());
    this.state = "stopped";
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.deadlineTimer);
    await this.ticking?.catch(() => {});
    this.log.info(ctx, "partition leases stopped");
  }

  /** Next heartbeat heartbeatMs after the start of the last one, and never two at once. */
  private schedule(lastStart: number): void {
    if (this.state === "stopped") return;
    const delay = Math.max(0, this.options.heartbeatMs - (performance.now() - lastStart));
    this.heartbeatTimer = setTimeout(() => void this.tick(), delay);
    this.heartbeatTimer.unref();
  }

  private async tick(): Promise<void> {
    const started = performance.now();
    this.ticking = this.heartbeat();
    try {
      await this.ticking;
      if (this.failing) this.log.info({ workerId: this.options.workerId }, "lease heartbeat recovered");
      this.failing = false;
    } catch (err) {
      // Retried at the next tick; leases not renewed by their deadline are dropped by armDeadline's timer.
      this.failing = true;
      this.log.warn({ workerId: this.options.workerId, err: message(err), owned: [...this.held.keys()] }, "lease heartbeat failed; retrying at the next tick");
    } finally {
      this.ticking = null;
      this.armDeadline();
      this.schedule(started);
    }
  }

  private async heartbeat(): Promise<void> {
    const { workerId, ttlMs, partitions } = this.options;
    let live: string[] = [];
    if (this.state === "running") live = await this.scripts.chatLeaseRegister(this.keys.workers, workerId, ttlMs);
    await this.renewAll();
    if (this.state !== "running") return;

    // Shares by rank among the live ids (sorted, so every worker computes the same ranks): the first
    // N mod W workers take one more. The shares add up to exactly N; ceil(N / W) for everyone could
    // leave a worker short for good (16 over 3: 6, 6 and 4).
    live.sort();
    const workers = live.length;
    const rank = live.indexOf(workerId);
    const target = rank < 0 ? 0 : Math.floor(partitions / workers) + (rank < partitions % workers ? 1 : 0);
    if (workers !== this.lastShare.workers || target !== this.lastShare.target) {
      this.log.info({ workerId, workers, target, owned: this.held.size }, "partition share");
      this.lastShare = { workers, target };
    }
    if (this.held.size > target) this.releaseExtras(this.held.size - target);
    else if (this.held.size < target) await this.acquire(target);
  }

  /** Renews every lease we hold or are handing over, each only if still ours. */
  private async renewAll(): Promise<void> {
    const { workerId, ttlMs } = this.options;
    const sent = performance.now();
    const failed: number[] = [];
    let lastError: unknown;
    const leases = [...this.held, ...this.handingOver];
    await Promise.all(
      leases.map(async ([p, holding]) => {
        let renewed: number;
        try {
          renewed = await this.scripts.chatLeaseRenew(this.keys.lease(p), workerId, ttlMs);
        } catch (err) {
          failed.push(p);
          lastError = err;
          return;
        }
        if (renewed === 1) holding.validUntil = Math.max(holding.validUntil, sent + this.localTtlMs);
        else if (this.held.get(p) === holding) this.lose(p, "lease expired or taken");
        else if (this.handingOver.get(p) === holding && !holding.lost) {
          holding.lost = true;
          this.log.warn({ workerId, partition: p }, "partition lease expired while its consumer was finishing (overlap possible)");
        }
      }),
    );
    // Acquiring or releasing on a Redis that just failed would only act on a partial picture.
    if (failed.length > 0) throw new Error(`renew failed for partitions ${failed.sort((a, b) => a - b).join(",")}: ${message(lastError)}`);
  }

  /** Tries free partitions in this worker's order until it holds `target`. */
  private async acquire(target: number): Promise<void> {
    const { workerId, ttlMs } = this.options;
    const candidates = this.order.filter((p) => !this.held.has(p) && !this.handingOver.has(p) && !this.settling.has(p));
    let next = 0;
    let failure: unknown;
    while (this.held.size < target && next < candidates.length && this.state === "running") {
      // As many tries at once as partitions still wanted: never more, so no extras to give back.
      const batch = candidates.slice(next, next + target - this.held.size);
      next += batch.length;
      const sent = performance.now();
      // Settled, not all: a lease won beside a failed try is still recorded (and renewed) as ours.
      const results = await Promise.allSettled(batch.map((p) => this.scripts.chatLeaseAcquire(this.keys.lease(p), workerId, ttlMs)));
      batch.forEach((p, i) => {
        const result = results[i];
        if (result?.status === "rejected") failure ??= result.reason;
        if (result?.status !== "fulfilled" || result.value !== 1) return;
        this.held.set(p, { validUntil: sent + this.localTtlMs, lost: false });
        this.log.info({ workerId, partition: p, owned: this.held.size, target }, "partition acquired");
        try {
          this.events.acquired(p);
        } catch (err) {
          this.log.warn({ workerId, partition: p, err: message(err) }, "partition acquired: the handler threw");
        }
      });
      if (failure !== undefined) throw new Error(`acquire failed: ${message(failure)}`);
    }
  }

  /** Gives back the partitions furthest along this worker's order (other workers start near them). */
  private releaseExtras(count: number): void {
    const extras = this.order.filter((p) => this.held.has(p)).slice(-count);
    for (const p of extras) this.handOver(p, "rebalance");
  }

  /**
   * Stops consuming p now; the lease stays ours (renewed by the heartbeat) until the consumer has
   * finished its batch, then is deleted, so the next owner never reads alongside it.
   */
  private handOver(p: number, reason: "rebalance" | "stopping"): void {
    const holding = this.held.get(p);
    if (!holding) return;
    const { workerId } = this.options;
    this.held.delete(p);
    this.handingOver.set(p, holding);
    this.log.info({ workerId, partition: p, reason }, "partition releasing");
    this.settle(p, reason, async () => {
      try {
        if (!holding.lost) await this.scripts.chatLeaseRelease(this.keys.lease(p), workerId);
        this.log.info({ workerId, partition: p, reason }, "partition released");
      } catch (err) {
        this.log.warn({ workerId, partition: p, reason, err: message(err) }, "partition lease not deleted (it expires by itself)");
      } finally {
        this.handingOver.delete(p);
      }
    });
  }

  /** The lease is (or may be) someone else's now: stop consuming at once. */
  private lose(p: number, why: string): void {
    if (!this.held.delete(p)) return;
    this.log.warn({ workerId: this.options.workerId, partition: p, reason: "lost", why }, "partition lost");
    this.settle(p, "lost", async () => {});
  }

  private settle(p: number, reason: "rebalance" | "lost" | "stopping", after: () => Promise<void>): void {
    const done = (async () => {
      try {
        await this.events.released(p, reason);
      } catch (err) {
        this.log.warn({ workerId: this.options.workerId, partition: p, reason, err: message(err) }, "partition released: the handler failed");
      }
      await after();
    })().finally(() => this.settling.delete(p));
    this.settling.set(p, done);
  }

  /**
   * A timer at the earliest local lease deadline, independent of the heartbeat: a heartbeat stuck on
   * an unreachable Redis must not keep us consuming partitions whose leases may have passed on.
   */
  private armDeadline(): void {
    clearTimeout(this.deadlineTimer);
    if (this.state === "stopped" || this.held.size === 0) return;
    const earliest = Math.min(...[...this.held.values()].map((h) => h.validUntil));
    this.deadlineTimer = setTimeout(() => this.expire(), Math.max(0, earliest - performance.now()));
    this.deadlineTimer.unref();
  }

  private expire(): void {
    const now = performance.now();
    for (const [p, holding] of [...this.held]) if (holding.validUntil <= now) this.lose(p, `not renewed within ${this.localTtlMs} ms (ttl ${this.options.ttlMs} ms less a margin)`);
    this.armDeadline();
  }
}
