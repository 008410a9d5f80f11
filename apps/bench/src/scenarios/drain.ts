import { RedisMessageLog, redisNames, type MessageEntry } from "@chat/bus";
import { Redis } from "ioredis";
import { v7 as uuidv7 } from "uuid";
import { startWorker } from "../cluster.js";
import type { BenchContext } from "../context.js";
import { cpuDelta, snapshotCpu, type CpuDelta, type ProcessGroups } from "../proc.js";

export interface DrainResult {
  entries: number;
  pairs: number;
  /** Time to append the backlog (not part of the figure). */
  loadMs: number;
  /** From the worker's `consuming` line until the last entry was acknowledged (after its commit). */
  drainMs: number;
  entriesPerSecond: number;
  /** Rows stored for the backlog's users. */
  persisted: number;
  /** (user, partner) counters that differ from the backlog's message count for them. */
  wrongCounts: number;
  memberRows: number;
  countsExact: boolean;
  /** CPU of the worker, Postgres and Redis over the drain. */
  cpu?: CpuDelta;
  /** The drain's window (µs, monotonic clock) and worker pid, to cut its CPU profile. */
  windowUs: { fromUs: number; toUs: number };
  workerPid: number;
}

/**
 * With no worker consuming a fresh prefix, appends `entries` messages to its log (the
 * gateway's own RedisMessageLog, so the entry format and partitions are the product's), starts one worker and
 * times it until every entry is acknowledged, then checks rows and unread counters against the
 * backlog.
 */
export async function workerDrain(ctx: BenchContext, prefix: string, entries: number, pairs: number, nodeArgs: string[] = []): Promise<DrainResult> {
  const names = redisNames(prefix);
  const redis = new Redis(ctx.env.redisUrl);
  const userPrefix = ctx.userPrefix("dr");
  const text = "x".repeat(ctx.messageBytes);
  const expected = new Map<string, number>();
  try {
    const stream = new RedisMessageLog(redis, names, { idempotencyTtlSeconds: 1 });
    const loadStarted = performance.now();
    const chunk = 2000;
    for (let i = 0; i < entries; i += chunk) {
      const appends: Promise<string>[] = [];
      for (let j = i; j < Math.min(entries, i + chunk); j++) {
        const pair = j % pairs;
        const forward = Math.floor(j / pairs) % 2 === 0;
        const from = `${userPrefix}${pair}${forward ? "a" : "b"}`;
        const to = `${userPrefix}${pair}${forward ? "b" : "a"}`;
        const key = `${to}\n${from}`;
        expected.set(key, (expected.get(key) ?? 0) + 1);
        const entry: MessageEntry = {
          kind: "message",
          id: uuidv7(),
          from,
          to,
          message: text,
          multimedia_url: null,
          date_added: new Date().toISOString(),
          client_id: `d${j}`,
        };
        appends.push(stream.append(names.roomId(from, to), entry));
      }
      await Promise.all(appends);
    }
    const loadMs = performance.now() - loadStarted;

    const worker = await startWorker(ctx.env, prefix, "bench-drain-worker", nodeArgs);
    const groups: ProcessGroups = { worker: [worker.pid], postgres: await ctx.services.postgresPids(), redis: await ctx.services.redisPids() };
    const cpuStart = snapshotCpu(groups);
    let cpu: CpuDelta | undefined;
    const started = performance.now();
    const nowUs = () => Number(process.hrtime.bigint() / 1000n);
    const windowUs = { fromUs: nowUs(), toUs: 0 };
    let drainMs = 0;
    try {
      for (;;) {
        const state = await ctx.services.logState(names);
        if (state && state.pending === 0 && state.lag === 0) break;
        if (performance.now() - started > 300000) throw new Error(`worker drain did not finish in 300 s (${JSON.stringify(state)})`);
        await new Promise((r) => setTimeout(r, 20));
      }
      drainMs = performance.now() - started;
      windowUs.toUs = nowUs();
      groups["postgres"] = [...new Set([...groups["postgres"]!, ...(await ctx.services.postgresPids())])];
      cpu = cpuDelta(cpuStart, snapshotCpu(groups, true), groups);
    } finally {
      await worker.stop();
    }

    const [row] = await ctx.sql<{ n: string }[]>`SELECT count(*) AS n FROM messages WHERE starts_with(from_user, ${userPrefix})`;
    const members = await ctx.sql<{ username: string; other_username: string; unread_count: number }[]>`
      SELECT username, other_username, unread_count FROM conversation_members WHERE starts_with(username, ${userPrefix})`;
    let wrong = 0;
    for (const m of members) if ((expected.get(`${m.username}\n${m.other_username}`) ?? 0) !== m.unread_count) wrong++;
    // A counter row that never appeared is wrong too.
    wrong += Math.max(0, expected.size - members.length);
    const persisted = Number(row?.n ?? 0);
    return {
      entries,
      pairs,
      loadMs,
      drainMs,
      entriesPerSecond: (entries / drainMs) * 1000,
      persisted,
      wrongCounts: wrong,
      memberRows: members.length,
      countsExact: wrong === 0 && persisted === entries,
      windowUs,
      workerPid: worker.pid,
      ...(cpu ? { cpu } : {}),
    };
  } finally {
    for (let p = 0; p < names.partitions; p++) await redis.del(names.stream(p), names.deadLetterStream(p)).catch(() => undefined);
    redis.disconnect();
  }
}
