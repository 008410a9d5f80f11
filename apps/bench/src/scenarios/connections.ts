import { openConnections, type HistogramSummary } from "@chat/loadgen";
import type { Cluster } from "../cluster.js";
import type { BenchContext } from "../context.js";
import { rssKiB } from "../proc.js";

export interface IdleMemoryResult {
  requested: number;
  opened: number;
  failed: number;
  errors: string[];
  /** Node processes' VmRSS before opening and once the sockets settled, KiB (summed over nodes). */
  rssBeforeKiB: number;
  rssAfterKiB: number;
  /** (after − before) / opened: the target's figure. */
  perConnectionKiB: number;
  /** redis-server's VmRSS growth per connection (our cluster keeps presence and subscriptions there). */
  redisPerConnectionKiB: number | null;
  openRatePerSecond: number;
}

const sumRss = (pids: number[]) => pids.reduce((a, pid) => a + (rssKiB(pid) ?? 0), 0);

/**
 * Opens `count` idle chat sockets (partners on different nodes) and reads the nodes' resident
 * memory before and after; nothing is sent on them.
 */
export async function idleMemory(ctx: BenchContext, cluster: Cluster, count: number, settleMs: number): Promise<IdleMemoryResult> {
  const pids = cluster.nodes.map((n) => n.pid);
  const redisPids = await ctx.services.redisPids();
  await new Promise((r) => setTimeout(r, 500));
  const before = sumRss(pids);
  const redisBefore = redisPids.length ? sumRss(redisPids) : null;
  const conns = await openConnections({
    protocol: cluster.system,
    urls: cluster.urls,
    secret: ctx.env.secret,
    userPrefix: ctx.userPrefix("idle"),
    count,
    concurrency: 100,
    timeoutMs: 30000,
  });
  try {
    await new Promise((r) => setTimeout(r, settleMs));
    const after = sumRss(pids);
    const redisAfter = redisPids.length ? sumRss(redisPids) : null;
    const per = (d: number) => (conns.opened > 0 ? d / conns.opened : 0);
    return {
      requested: count,
      opened: conns.opened,
      failed: conns.failed,
      errors: conns.errors,
      rssBeforeKiB: before,
      rssAfterKiB: after,
      perConnectionKiB: per(after - before),
      redisPerConnectionKiB: redisBefore !== null && redisAfter !== null ? per(redisAfter - redisBefore) : null,
      openRatePerSecond: conns.perSecond,
    };
  } finally {
    await conns.closeAll();
  }
}

export interface ConnectionRateResult {
  requested: number;
  opened: number;
  failed: number;
  errors: string[];
  concurrency: number;
  /** Sockets ready per second. */
  perSecond: number;
  /** Upgrade request → ready, per socket. */
  latencyMs: HistogramSummary;
  generatorCoreShare: number;
}

/** Opens `count` chat sockets, `concurrency` upgrades in flight, timing each to its first event. */
export async function connectionRate(ctx: BenchContext, cluster: Cluster, count: number, concurrency: number): Promise<ConnectionRateResult> {
  const conns = await openConnections({
    protocol: cluster.system,
    urls: cluster.urls,
    secret: ctx.env.secret,
    userPrefix: ctx.userPrefix("cr"),
    count,
    concurrency,
    timeoutMs: 30000,
  });
  await conns.closeAll();
  return {
    requested: count,
    opened: conns.opened,
    failed: conns.failed,
    errors: conns.errors,
    concurrency,
    perSecond: conns.perSecond,
    latencyMs: conns.latencyMs,
    generatorCoreShare: conns.generatorCoreShare,
  };
}
