import { Redis } from "ioredis";
import { MessageStream, RedisPublisher, redisNames } from "@chat/bus";
import { redactUrl } from "@chat/db";
import type { Logger } from "@chat/log";
import type { WorkerConfig } from "./config.js";
import type { WorkerParts } from "./worker.js";

/** A worker's Redis: one connection for its blocking reads, acknowledgements and notifications. */
export function openRedisWorkerBus(config: Readonly<WorkerConfig>, log: Logger): Omit<WorkerParts, "openDb"> & { close(): Promise<void> } {
  const redis = new Redis(config.redisUrl, {
    connectionName: `${config.consumerName}:worker`,
    maxRetriesPerRequest: null,
    retryStrategy: (times) => Math.min(times * 200, 2000),
  });
  redis.on("error", (err: Error) => log.warn({ err: err.message, redis: redactUrl(config.redisUrl) }, "redis error"));
  return {
    stream: new MessageStream(redis, redisNames(config.redisPrefix)),
    publisher: new RedisPublisher(redis),
    busReady: () => redis.status === "ready",
    close: async () => {
      // QUIT waits for a connection that may never come back; then just drop it.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([redis.quit().catch(() => {}), new Promise((resolve) => (timer = setTimeout(resolve, 2000)))]);
      clearTimeout(timer);
      redis.disconnect();
    },
  };
}
