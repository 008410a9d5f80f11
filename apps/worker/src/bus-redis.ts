import {
  RedisMessageLog,
  RedisPublisher,
  checkPartitionCount,
  checkPrefixForTarget,
  describeRedisTarget,
  openRedis,
  parseRedisTarget,
  redisNames,
  type RedisClient,
} from "@chat/bus";
import type { Logger } from "@chat/log";
import type { WorkerConfig } from "./config.js";
import { PartitionLeases } from "./leases.js";
import type { WorkerParts } from "./worker.js";

/**
 * A worker's Redis: one connection for notifications, leases, acknowledgements and checks, and one
 * per partition it consumes (opened when the partition is acquired) that blocks on that partition's
 * stream. On a cluster each of these is a cluster client.
 */
export interface RedisWorkerBus extends Omit<WorkerParts, "openDb"> {
  close(): Promise<void>;
}

/**
 * Opens the worker's Redis; rejects with RedisTargetError on a REDIS_URL or CHAT_REDIS_PREFIX that
 * cannot work, PartitionCountMismatchError on another CHAT_PARTITIONS than the deployment's.
 */
export async function openRedisWorkerBus(config: Readonly<WorkerConfig>, log: Logger): Promise<RedisWorkerBus> {
  const target = parseRedisTarget(config.redisUrl);
  checkPrefixForTarget(config.redisPrefix, target);
  const shown = describeRedisTarget(target);
  const connect = (name: string): RedisClient => {
    const redis = openRedis(target, {
      connectionName: `${config.consumerName}:${name}`,
      maxRetriesPerRequest: null,
      retryStrategy: (times) => Math.min(times * 200, 2000),
    });
    redis.on("error", (err: Error) => log.warn({ client: name, err: err.message, redis: shown }, "redis error"));
    return redis;
  };
  const redis = connect("worker");
  const names = redisNames(config.redisPrefix, config.partitions);
  try {
    await checkPartitionCount(redis, names);
  } catch (err) {
    redis.disconnect();
    throw err;
  }
  const stream = new RedisMessageLog(redis, names, {
    // Not used by a worker (it accepts nothing); the gateways' setting decides.
    idempotencyTtlSeconds: 1,
    openPartitionClient: () => connect("partition"),
  });
  return {
    stream,
    publisher: new RedisPublisher(redis),
    busReady: () => redis.status === "ready",
    ownership: (events) =>
      new PartitionLeases(
        redis,
        { lease: names.partitionLease, workers: names.workers },
        { partitions: names.partitions, workerId: config.consumerName, ttlMs: config.leaseTtlMs, heartbeatMs: Math.max(100, Math.floor(config.leaseTtlMs / 3)) },
        events,
        log.child({ component: "worker:leases" }),
      ),
    close: async () => {
      // QUIT waits for a connection that may never come back; then just drop it.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([redis.quit().catch(() => {}), new Promise((resolve) => (timer = setTimeout(resolve, 2000)))]);
      clearTimeout(timer);
      redis.disconnect();
    },
  };
}
