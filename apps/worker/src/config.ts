import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { ConfigError, commonSettings, integer, readSettings, text } from "@chat/config";

/** Every setting of the worker: variable, default, meaning. The README table follows this list. */
export const WORKER_SETTINGS = {
  ...commonSettings,
  consumerName: { env: "CHAT_WORKER_NAME", default: undefined, description: "Consumer name in the group (default: hostname-pid-random; must be unique per process)", parse: text },
  batchSize: { env: "CHAT_WORKER_BATCH_SIZE", default: "500", description: "Most stream entries written per transaction", parse: integer(1, 5000) },
  batchWaitMs: { env: "CHAT_WORKER_BATCH_WAIT_MS", default: "5", description: "A short batch waits this long to fill up before it is written (ms; persistence lag, not delivery latency)", parse: integer(0, 1000) },
  blockMs: { env: "CHAT_WORKER_BLOCK_MS", default: "2000", description: "How long one read waits for new entries (ms)", parse: integer(10, 60000) },
  claimIdleMs: { env: "CHAT_WORKER_CLAIM_IDLE_MS", default: "5000", description: "Entries pending this long on another consumer are taken over (ms)", parse: integer(1000, 60000) },
  claimIntervalMs: { env: "CHAT_WORKER_CLAIM_INTERVAL_MS", default: "2000", description: "How often to look for such entries (ms)", parse: integer(100, 60000) },
  trimIntervalMs: { env: "CHAT_WORKER_TRIM_INTERVAL_MS", default: "5000", description: "How often acknowledged entries are trimmed from the stream (ms)", parse: integer(100, 600000) },
  stallTimeoutMs: { env: "CHAT_WORKER_STALL_TIMEOUT_MS", default: "30000", description: "A batch that gets no answer from Postgres for this long is abandoned, its pool replaced and the batch retried (ms)", parse: integer(1000, 600000) },
  leaseTtlMs: {
    env: "CHAT_WORKER_LEASE_TTL_MS",
    default: "10000",
    description: "Life of a worker's lease on a partition without a heartbeat (every third of it): the partitions of a worker that died are taken over within about 1.3 times this (ms)",
    parse: integer(1000, 600000),
  },
  stopTimeoutMs: { env: "CHAT_WORKER_STOP_TIMEOUT_MS", default: "15000", description: "On SIGTERM, how long to wait for the batch in hand before exiting anyway (it stays pending for another worker; ms). Kubernetes' grace period must be longer", parse: integer(1000, 600000) },
  httpPort: { env: "CHAT_WORKER_HTTP_PORT", default: "9100", description: "Port of the worker's /metrics, /healthz and /readyz (0 picks a free one)", parse: integer(0, 65535) },
  httpHost: { env: "CHAT_WORKER_HTTP_HOST", default: "0.0.0.0", description: "Address of that HTTP server", parse: text },
  parallelBatches: {
    env: "CHAT_WORKER_PARALLEL_BATCHES",
    default: "2",
    description: "A full batch (a backlog) is split into up to this many parts that share no user, written at once on their own connections; at most CHAT_DB_POOL_SIZE; 1 turns it off",
    parse: integer(1, 16),
  },
  dbPoolSize: { env: "CHAT_DB_POOL_SIZE", default: "4", description: "Postgres connections per worker", parse: integer(1, 100) },
};

export interface WorkerConfig {
  redisUrl: string;
  databaseUrl: string;
  redisPrefix: string;
  partitions: number;
  logLevel: string;
  consumerName: string;
  batchSize: number;
  blockMs: number;
  claimIdleMs: number;
  claimIntervalMs: number;
  trimIntervalMs: number;
  batchWaitMs: number;
  stallTimeoutMs: number;
  leaseTtlMs: number;
  stopTimeoutMs: number;
  parallelBatches: number;
  httpPort: number;
  httpHost: string;
  dbPoolSize: number;
}

export function loadWorkerConfig(env: NodeJS.ProcessEnv = process.env): Readonly<WorkerConfig> {
  const { values, problems } = readSettings(WORKER_SETTINGS, env);
  if (typeof values.parallelBatches === "number" && typeof values.dbPoolSize === "number" && values.parallelBatches > values.dbPoolSize) {
    problems.push(`CHAT_WORKER_PARALLEL_BATCHES (${values.parallelBatches}) must not exceed CHAT_DB_POOL_SIZE (${values.dbPoolSize}): each part holds a connection`);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    ...(values as Omit<WorkerConfig, "consumerName">),
    consumerName: values.consumerName ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`,
  });
}
