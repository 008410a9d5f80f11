import type { LoadShape, NoisePolicy } from "./scenarios/load.js";
import type { FindMaxPlan } from "./scenarios/throughput.js";

export const SCENARIOS = ["fixed", "find-max", "idle-memory", "connection-rate", "worker-drain", "profile", "redis-cluster"] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

/**
 * Masters of the local Redis Cluster the `redis-cluster` scenario starts (no replicas): the smallest
 * cluster redis-cli creates, and the size the test suites run on.
 */
export const REDIS_CLUSTER_MASTERS = 3;

/** Everything a bench invocation runs, and how big. */
export interface Plan {
  mode: "full" | "quick";
  /** An untimed load before the first measured one, so both systems start JIT-warm. */
  warmup: LoadShape;
  fixed: LoadShape;
  findMax: Omit<FindMaxPlan, "threadsFor" | "noise">;
  /** The machine is shared: how loads cope with other people's work (see measuredLoadWithNoise). */
  noise: NoisePolicy;
  idleMemory: { connections: number; settleMs: number };
  connectionRate: { connections: number; concurrency: number };
  workerDrain: { entries: number; pairs: number };
  /** A separate fixed-rate run with --cpu-prof on our gateways and worker. */
  profile: LoadShape;
  /** Then a worker drain of this many entries with --cpu-prof on the worker. */
  profileDrainEntries: number;
}

/**
 * Generator threads for a rate: one thread drives a few thousand messages per second with room
 * to spare (each message is one send and three receives); above that a second thread keeps the
 * generator's event loop from saturating before the servers do.
 */
export function threadsFor(rate: number): number {
  return rate > 6000 ? 2 : 1;
}

const shape = (rate: number, pairs: number, warmupMs: number, durationMs: number, drainMs: number): LoadShape => ({
  rate,
  pairs,
  warmupMs,
  durationMs,
  drainMs,
  threads: threadsFor(rate),
});

export const FULL: Plan = {
  mode: "full",
  noise: { quietWaitMs: 20000, repeatAbovePct: 15, repeats: 1 },
  warmup: shape(1000, 100, 0, 3000, 2000),
  fixed: shape(2000, 200, 2000, 20000, 5000),
  findMax: { startRate: 1000, refineSteps: 3, maxRate: 64000, pairs: 200, maxUserRate: 50, warmupMs: 1000, durationMs: 6000, drainMs: 3000 },
  idleMemory: { connections: 10000, settleMs: 3000 },
  connectionRate: { connections: 2000, concurrency: 64 },
  workerDrain: { entries: 100000, pairs: 1000 },
  profile: shape(2000, 200, 1000, 10000, 3000),
  profileDrainEntries: 20000,
};

export const QUICK: Plan = {
  mode: "quick",
  noise: { quietWaitMs: 0, repeatAbovePct: 100, repeats: 0 },
  warmup: shape(1000, 50, 0, 1000, 1000),
  fixed: shape(2000, 100, 1000, 5000, 3000),
  findMax: { startRate: 1000, refineSteps: 1, maxRate: 16000, pairs: 50, maxUserRate: 50, warmupMs: 500, durationMs: 2000, drainMs: 2000 },
  idleMemory: { connections: 1000, settleMs: 1000 },
  connectionRate: { connections: 300, concurrency: 32 },
  workerDrain: { entries: 10000, pairs: 200 },
  profile: shape(2000, 100, 500, 3000, 2000),
  profileDrainEntries: 5000,
};
