import { redisNames } from "@chat/bus";
import type { Cluster } from "../cluster.js";
import type { BenchContext } from "../context.js";
import { measuredLoadWithNoise, type LoadShape, type MeasuredLoad, type NoisePolicy } from "./load.js";

/** The pass line for a find-max step. */
export const LIMITS = {
  /** Delivery p99, ms. */
  p99Ms: 50,
  /** Lost messages, % of sent. */
  lossPct: 0.1,
  /**
   * Notification p99, ms: the worker keeps up (every message persisted and counted while the
   * step runs). A worker that falls behind builds a backlog whose notifications come seconds late.
   */
  notificationP99Ms: 500,
};

export interface FindMaxPlan {
  startRate: number;
  /** Rates double until a step fails, then this many bisection steps narrow the gap. */
  refineSteps: number;
  maxRate: number;
  /** Pairs at the lower rates; more above `pairs × 2 × maxUserRate`. */
  pairs: number;
  /**
   * Highest send rate of one user (msg/s): pairs grow with the offered rate to stay under it, so the
   * gateway's per-user rate limit (CHAT_RATE_MESSAGES_PER_SECOND, 100 by default) never refuses a send.
   */
  maxUserRate: number;
  warmupMs: number;
  durationMs: number;
  drainMs: number;
  threadsFor(rate: number): number;
  /** A step that fails while other processes used the machine is repeated (once) per this policy. */
  noise: NoisePolicy;
}

export interface FindMaxStep {
  rate: number;
  held: boolean;
  /** Why it did not hold (empty when it did). */
  failures: string[];
  measured: MeasuredLoad;
}

export interface FindMaxResult {
  /** Highest offered rate that held (0 when none did). */
  maxRate: number;
  /** The lowest rate that failed, if any. */
  firstFailedRate: number | null;
  steps: FindMaxStep[];
  /** A step that could not run (e.g. sockets refused): the search stopped there. */
  error?: string;
}

export function judge(m: MeasuredLoad): string[] {
  const r = m.load;
  const failures: string[] = [];
  if (r.latencyMs.p99 > LIMITS.p99Ms) failures.push(`p99 ${r.latencyMs.p99.toFixed(1)} ms > ${LIMITS.p99Ms} ms`);
  if (r.delivery.lossPct > LIMITS.lossPct) failures.push(`loss ${r.delivery.lossPct.toFixed(2)} % > ${LIMITS.lossPct} %`);
  if (r.notifications) {
    const n = r.notifications;
    if (n.received < n.expected) failures.push(`${n.expected - n.received} of ${n.expected} notifications missing after the drain: persistence fell behind`);
    else if (n.latencyMs.p99 > LIMITS.notificationP99Ms) {
      failures.push(`notification p99 ${n.latencyMs.p99.toFixed(0)} ms > ${LIMITS.notificationP99Ms} ms: persistence fell behind`);
    }
  }
  return failures;
}

/** Waits (up to `timeoutMs`) until the worker has acknowledged everything in the cluster's stream. */
export async function waitForWorker(ctx: BenchContext, cluster: Cluster, timeoutMs: number): Promise<boolean> {
  if (!cluster.prefix) return true;
  const names = redisNames(cluster.prefix);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const state = await ctx.services.logState(names);
    if (state && state.pending === 0 && state.lag === 0) return true;
    if (performance.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Steps the offered rate up (doubling from startRate) until a step fails the LIMITS, then bisects
 * between the last rate that held and the first that failed. Each step uses fresh users, and
 * waits for the previous step's persistence backlog to clear first.
 */
export async function findMax(ctx: BenchContext, cluster: Cluster, plan: FindMaxPlan): Promise<FindMaxResult> {
  const steps: FindMaxStep[] = [];
  const step = async (rate: number): Promise<boolean> => {
    await waitForWorker(ctx, cluster, 30000);
    const pairs = Math.max(plan.pairs, Math.ceil(rate / 2 / plan.maxUserRate));
    const shape: LoadShape = { rate, pairs, warmupMs: plan.warmupMs, durationMs: plan.durationMs, drainMs: plan.drainMs, threads: plan.threadsFor(rate) };
    const measured = await measuredLoadWithNoise(ctx, cluster, shape, `m${steps.length}`, plan.noise, {
      shouldRepeat: (m) => judge(m).length > 0,
    });
    const failures = judge(measured);
    steps.push({ rate, held: failures.length === 0, failures, measured });
    const l = measured.load;
    ctx.log(
      `  ${cluster.system} ${rate} msg/s (${pairs} pairs): p99 ${l.latencyMs.p99.toFixed(2)} ms, loss ${l.delivery.lossPct.toFixed(3)} %` +
        (l.notifications ? `, notify p99 ${l.notifications.latencyMs.p99.toFixed(1)} ms` : "") +
        (measured.cpu ? `, ${measured.cpu.perDeliveredUs.toFixed(0)} µs CPU/msg` : "") +
        `, generator ${(l.generator.maxEventLoopUtilization * 100).toFixed(0)} % busy` +
        (failures.length ? ` → FAILED (${failures.join("; ")})` : " → held"),
    );
    return failures.length === 0;
  };
  let good = 0;
  let bad: number | null = null;
  let error: string | undefined;
  try {
    for (let rate = plan.startRate; rate <= plan.maxRate; rate *= 2) {
      if (await step(rate)) good = rate;
      else {
        bad = rate;
        break;
      }
    }
    for (let i = 0; i < plan.refineSteps && bad !== null; i++) {
      const mid = Math.round((good + bad) / 2 / 100) * 100;
      if (mid <= good || mid >= bad) break;
      if (await step(mid)) good = mid;
      else bad = mid;
    }
    await waitForWorker(ctx, cluster, 30000);
  } catch (err) {
    error = (err as Error).message;
    ctx.log(`  ${cluster.system} find-max stopped: ${error}`);
  }
  const result: FindMaxResult = { maxRate: good, firstFailedRate: bad, steps };
  if (error) result.error = error;
  return result;
}
