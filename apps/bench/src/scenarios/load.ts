import { runLoad, type LoadOptions, type LoadResult } from "@chat/loadgen";
import type { Cluster } from "../cluster.js";
import type { BenchContext } from "../context.js";
import { cpuDelta, snapshotCpu, type CpuDelta, type CpuSnapshot, type ProcessGroups } from "../proc.js";

/** A load's shape, whatever system it runs against. */
export interface LoadShape {
  rate: number;
  pairs: number;
  warmupMs: number;
  durationMs: number;
  drainMs: number;
  threads: number;
}

export interface CpuFigures extends CpuDelta {
  /** Server CPU (all groups) per message delivered to its recipient, µs. */
  perDeliveredUs: number;
  /** The same per group. */
  perDeliveredUsByGroup: Record<string, number>;
  /**
   * CPU seconds of everything else on the machine over the window (machine busy − servers −
   * generator): other people's builds and tests on a shared box. Large values make every figure
   * of the run suspect.
   */
  otherS: number;
}

export interface PersistenceCheck {
  /** Messages the cluster accepted (sent minus refused). */
  accepted: number;
  /** Of those, rows in Postgres once the worker caught up (or the wait ran out). */
  persisted: number;
  /** conversation_members rows whose unread_count differs from the messages stored for them. */
  wrongCounts: number;
  /** Sum of these users' unread counters: equals `persisted` when no counter is missing. */
  unreadTotal: number;
  memberRows: number;
  /** From the end of the load until every accepted message was a row. */
  caughtUpMs: number;
}

export interface MeasuredLoad {
  load: LoadResult;
  /** The measurement window (schedule start → drained), µs of the monotonic clock (process.hrtime, V8 profiles). */
  windowUs: { fromUs: number; toUs: number };
  cpu?: CpuFigures;
  persistence?: PersistenceCheck;
}

/** The server processes of a cluster, by group: nodes, worker, redis-server and Postgres. */
export async function serverGroups(ctx: BenchContext, cluster: Cluster): Promise<ProcessGroups> {
  const groups: ProcessGroups = { [cluster.system === "chat" ? "gateways" : "socket.io nodes"]: cluster.nodes.map((n) => n.pid) };
  if (cluster.worker) groups["worker"] = [cluster.worker.pid];
  groups["redis"] = await ctx.services.redisPids();
  if (cluster.system === "chat") groups["postgres"] = await ctx.services.postgresPids();
  return groups;
}

/**
 * Runs one load against `cluster`, sampling the servers' CPU over the schedule and its stragglers
 * (connects and closes left out), and for our cluster checks afterwards that every accepted
 * message was persisted with exact unread counts.
 */
export async function measuredLoad(
  ctx: BenchContext,
  cluster: Cluster,
  shape: LoadShape,
  label: string,
  options: {
    verifyPersistence?: boolean;
    /** Run once the sockets are open, before the first send (e.g. to start profilers), and after the drain. */
    around?: { connected(): Promise<void>; drained(): Promise<void> };
  } = {},
): Promise<MeasuredLoad> {
  const userPrefix = ctx.userPrefix(label);
  const groups = await serverGroups(ctx, cluster);
  let start: CpuSnapshot | undefined;
  const windowUs = { fromUs: 0, toUs: 0 };
  const nowUs = () => Number(process.hrtime.bigint() / 1000n);
  let cpu: CpuFigures | undefined;
  const loadOptions: LoadOptions = {
    protocol: cluster.system,
    urls: cluster.urls,
    secret: ctx.env.secret,
    userPrefix,
    pairs: shape.pairs,
    rate: shape.rate,
    warmupMs: shape.warmupMs,
    durationMs: shape.durationMs,
    drainMs: shape.drainMs,
    messageBytes: ctx.messageBytes,
    notifications: true,
    threads: shape.threads,
    connectConcurrency: 64,
    connectTimeoutMs: 15000,
    hooks: {
      connected: async () => {
        await options.around?.connected();
      },
      scheduleStart: () => {
        windowUs.fromUs = nowUs();
        start = snapshotCpu(groups);
      },
      drained: async () => {
        windowUs.toUs = nowUs();
        // Postgres backends opened during the run (a pool growing) count from their start.
        const later = await serverGroups(ctx, cluster);
        for (const [name, pids] of Object.entries(later)) groups[name] = [...new Set([...(groups[name] ?? []), ...pids])];
        if (start) cpu = cpuFigures(cpuDelta(start, snapshotCpu(groups, true), groups), 0);
        await options.around?.drained();
      },
    },
  };
  const load = await runLoad(loadOptions);
  if (cpu) {
    cpu = cpuFigures(cpu, load.delivery.received);
    // The generator's CPU is known over the schedule only; its drain-time CPU is small.
    cpu.otherS = Math.max(0, cpu.boxBusyS - cpu.totalS - load.generator.cpuMs / 1000);
  }
  const result: MeasuredLoad = { load, windowUs };
  if (cpu) result.cpu = cpu;
  if (options.verifyPersistence && cluster.system === "chat") {
    result.persistence = await checkPersistence(ctx, userPrefix, load.delivery.sent - load.refused);
  }
  return result;
}

function cpuFigures(d: CpuDelta, delivered: number): CpuFigures {
  const per = (s: number) => (delivered > 0 ? (s / delivered) * 1e6 : 0);
  return {
    otherS: 0,
    ...d,
    perDeliveredUs: per(d.totalS),
    perDeliveredUsByGroup: Object.fromEntries(Object.entries(d.groups).map(([k, v]) => [k, per(v)])),
  };
}

/** Waits (up to 20 s) until `accepted` messages of these users are rows, then checks every unread counter. */
export async function checkPersistence(ctx: BenchContext, userPrefix: string, accepted: number): Promise<PersistenceCheck> {
  const sql = ctx.sql;
  const started = performance.now();
  let persisted = 0;
  for (;;) {
    const [row] = await sql<{ n: string }[]>`SELECT count(*) AS n FROM messages WHERE starts_with(from_user, ${userPrefix})`;
    persisted = Number(row?.n ?? 0);
    if (persisted >= accepted || performance.now() - started > 20000) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const caughtUpMs = performance.now() - started;
  const [counts] = await sql<{ wrong: string; rows: string; total: string | null }[]>`
    SELECT count(*) FILTER (WHERE cm.unread_count <> coalesce(m.n, 0)) AS wrong, count(*) AS rows, sum(cm.unread_count) AS total
    FROM conversation_members cm
    LEFT JOIN (
      SELECT to_user, from_user, count(*) AS n FROM messages WHERE starts_with(to_user, ${userPrefix}) GROUP BY to_user, from_user
    ) m ON m.to_user = cm.username AND m.from_user = cm.other_username
    WHERE starts_with(cm.username, ${userPrefix})`;
  return { accepted, persisted, wrongCounts: Number(counts?.wrong ?? 0), unreadTotal: Number(counts?.total ?? 0), memberRows: Number(counts?.rows ?? 0), caughtUpMs };
}
