import { openConnections, type HistogramSummary } from "@chat/loadgen";
import type { Cluster } from "../cluster.js";
import type { BenchContext } from "../context.js";
import { Inspector } from "../inspector.js";
import { rssKiB } from "../proc.js";

export interface IdleMemoryResult {
  requested: number;
  opened: number;
  failed: number;
  errors: string[];
  /**
   * Node processes' VmRSS before opening (right after a full GC in each) and once the sockets
   * settled, KiB (summed over nodes).
   */
  rssBeforeKiB: number;
  rssAfterKiB: number;
  /** (after − before) / opened: the target's figure. */
  perConnectionKiB: number;
  /**
   * The nodes' VmRSS growth per connection once each was made to run two full garbage collections
   * again (through its inspector), or null when that failed. V8
   * does not collect an idle process' old generation, so the figure above carries the garbage of
   * the connection set-ups; this one is about what the sockets themselves hold.
   */
  perConnectionAfterGcKiB: number | null;
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
  // From a collected start: otherwise the start-up's garbage is in `before` and, when a collection
  // happens to run while the sockets open, missing from `after`.
  // The nodes' RSS after two full collections in each, or null when the inspector failed.
  const collectedRss = () =>
    collectGarbage(cluster).then(
      () => sumRss(pids),
      (err: unknown) => {
        ctx.log(`  full GC through the inspector failed: ${(err as Error).message}`);
        return null;
      },
    );
  const collected = (await collectedRss()) !== null;
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
    const afterGc = collected ? await collectedRss() : null;
    return {
      requested: count,
      opened: conns.opened,
      failed: conns.failed,
      errors: conns.errors,
      rssBeforeKiB: before,
      rssAfterKiB: after,
      perConnectionKiB: per(after - before),
      perConnectionAfterGcKiB: afterGc === null ? null : per(afterGc - before),
      redisPerConnectionKiB: redisBefore !== null && redisAfter !== null ? per(redisAfter - redisBefore) : null,
      openRatePerSecond: conns.perSecond,
    };
  } finally {
    await conns.closeAll();
  }
}

/**
 * Makes every node run two full collections through its inspector, activated on first use with
 * SIGUSR1 (the nodes start with --inspect-port=127.0.0.1:0 so that each picks its own port), then
 * lets the freed pages go back.
 */
async function collectGarbage(cluster: Cluster): Promise<void> {
  for (const node of cluster.nodes) {
    if (!node.inspectorUrl()) process.kill(node.pid, "SIGUSR1");
    const deadline = Date.now() + 5000;
    while (!node.inspectorUrl() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const url = node.inspectorUrl();
    if (!url) throw new Error(`${node.name} opened no inspector after SIGUSR1`);
    const inspector = await Inspector.connect(url);
    try {
      await inspector.call("HeapProfiler.collectGarbage");
      await inspector.call("HeapProfiler.collectGarbage");
    } finally {
      inspector.close();
    }
  }
  await new Promise((r) => setTimeout(r, 1000));
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
