import { Redis } from "ioredis";
import { redisNames } from "@chat/bus";
import { ConfigError } from "@chat/config";
import { createDb, redactUrl } from "@chat/db";
import { createLogger } from "@chat/log";
import { loadWorkerConfig, type WorkerConfig } from "./config.js";
import { StreamConsumer } from "./consumer.js";
import { WorkerMetrics } from "./metrics.js";

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
const openDb = () => createDb(config.databaseUrl, { max: config.dbPoolSize, applicationName: `worker ${config.consumerName}` });
const db = openDb();

const metrics = new WorkerMetrics(() => consumer.streamState());
const consumer: StreamConsumer = new StreamConsumer(
  redis,
  db,
  redisNames(config.redisPrefix),
  config,
  log.child({ component: "worker:consumer" }),
  metrics,
  openDb,
);
let httpPort: number;
try {
  const http = await metrics.serve(config.httpPort, config.httpHost, () => consumer.running && redis.status === "ready");
  httpPort = (http.address() as import("node:net").AddressInfo).port;
} catch (err) {
  log.fatal({ err, port: config.httpPort }, "cannot open the metrics port");
  process.exit(1);
}
consumer.start();
log.info({ prefix: config.redisPrefix, database: redactUrl(config.databaseUrl), httpPort }, "consuming");

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, "stopping after the batch in hand");
  await consumer.stop();
  await Promise.allSettled([redis.quit(), consumer.dbClient.close()]);
  log.info({}, "stopped");
  process.exit(0);
}
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
