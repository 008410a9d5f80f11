import type { GroupShape } from "./scenarios/groups.js";
import type { LoadShape, NoisePolicy } from "./scenarios/load.js";
import type { FindMaxPlan } from "./scenarios/throughput.js";

export const SCENARIOS = ["fixed", "find-max", "idle-memory", "connection-rate", "worker-drain", "profile", "redis-cluster", "groups"] as const;
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
  /**
   * Group conversations of 10, 100 and 1,000 members, 90 % connected, at rates that deliver about
   * the same frames per second (2,000, the fixed load's rate: a message in a group of 100 is 89 frames), and a 1:1 load
   * delivering as many beside them on the same cluster.
   */
  groups: { shapes: GroupShape[]; direct: LoadShape };
}

/**
 * Generator threads for a rate: one thread drives a few thousand messages per second with room
 * to spare (each message is one send and three receives); above that a second thread keeps the
 * generator's event loop from saturating before the servers do.
 */
export function threadsFor(rate: number): number {
  return rate > 6000 ? 2 : 1;
}

/** Frames per second each group load delivers, about (rate x (connected - 1)). */
const GROUP_FRAMES_PER_S = 2000;

const groupShapes = (warmupMs: number, durationMs: number, drainMs: number): GroupShape[] =>
  [10, 100, 1000].map((members) => {
    const connected = Math.round(members * 0.9);
    return { members, connected, senders: Math.min(10, connected), rate: GROUP_FRAMES_PER_S / (connected - 1), warmupMs, durationMs, drainMs };
  });

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
  groups: { shapes: groupShapes(2000, 20000, 5000), direct: shape(GROUP_FRAMES_PER_S, 200, 2000, 20000, 5000) },
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
  groups: { shapes: groupShapes(1000, 4000, 3000), direct: shape(GROUP_FRAMES_PER_S, 100, 1000, 4000, 3000) },
};
