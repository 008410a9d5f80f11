import { Redis } from "ioredis";
import { MessageStream, RedisPublisher, redisNames } from "@chat/bus";
import { ConfigError } from "@chat/config";
import { createDb, redactUrl } from "@chat/db";
import { createLogger } from "@chat/log";
import { loadWorkerConfig, type WorkerConfig } from "./config.js";
import { startWorker, type RunningWorker } from "./worker.js";

let config: Readonly<WorkerConfig>;
try {
  config = loadWorkerConfig();
} catch (err) {
  process.stderr.write(JSON.stringify({ level: "fatal", component: "worker", msg: (err as Error).message, problems: (err as ConfigError).problems }) + "\n");
  process.exit(2);
}

const log = createLogger(config.logLevel, { component: "worker", consumer: config.consumerName });
const redis = new Redis(config.redisUrl, {
  connectionName: `${config.consumerName}:worker`,
  maxRetriesPerRequest: null,
  retryStrategy: (times) => Math.min(times * 200, 2000),
});
redis.on("error", (err: Error) => log.warn({ err: err.message, redis: redactUrl(config.redisUrl) }, "redis error"));

let worker: RunningWorker;
try {
  worker = await startWorker(
    config,
    {
      stream: new MessageStream(redis, redisNames(config.redisPrefix)),
      publisher: new RedisPublisher(redis),
      openDb: () => createDb(config.databaseUrl, { max: config.dbPoolSize, applicationName: `worker ${config.consumerName}` }),
      busReady: () => redis.status === "ready",
    },
    log,
  );
} catch (err) {
  log.fatal({ err, port: config.httpPort }, "cannot open the metrics port");
  process.exit(1);
}

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, "stopping after the batch in hand");
  await worker.stop();
  await redis.quit().catch(() => {});
  log.info({}, "stopped");
  process.exit(0);
}
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
