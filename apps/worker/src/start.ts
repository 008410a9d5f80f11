import { StartupError, exitOnStartupFailure, portProblem } from "@chat/config";
import { DatabaseStartupError, checkDatabase, createDb, redactUrl, survivePostgresClosedSocketWrites, warnIfSchemaAhead } from "@chat/db";
import { createLogger } from "@chat/log";
import { PartitionCountMismatchError, RedisTargetError, describeRedisTarget, openRedis, parseRedisTarget, type RedisTarget } from "@chat/bus";
import { openRedisWorkerBus, type RedisWorkerBus } from "./bus-redis.js";
import { loadWorkerConfig, type WorkerConfig } from "./config.js";
import { startWorker, type RunningWorker } from "./worker.js";

let config: Readonly<WorkerConfig>;
try {
  config = loadWorkerConfig();
} catch (err) {
  exitOnStartupFailure("worker", err);
}

const log = createLogger(config.logLevel, { component: "worker", consumer: config.consumerName });
survivePostgresClosedSocketWrites(log);

/**
 * Whether Redis answers, on a connection of its own that does not retry: the bus's connection
 * retries for ever (right while running, but at start-up a wrong REDIS_URL would only show as
 * warnings). Resolves to the reason it does not, or null.
 */
async function redisProblem(target: RedisTarget): Promise<string | null> {
  let lastError: string | undefined;
  const probe = openRedis(target, { connectionName: "worker-probe", lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 10_000 });
  probe.on("error", (err: Error) => (lastError = err.message));
  try {
    await probe.connect();
    await probe.ping();
    return null;
  } catch (err) {
    return lastError ?? (err as Error).message;
  } finally {
    probe.disconnect();
  }
}

let target: RedisTarget;
try {
  target = parseRedisTarget(config.redisUrl);
} catch (err) {
  exitOnStartupFailure("worker", err instanceof RedisTargetError ? new StartupError(err.message) : err);
}
const redisDown = await redisProblem(target);
if (redisDown !== null) {
  exitOnStartupFailure("worker", new StartupError(`Redis does not answer at ${describeRedisTarget(target)} (${redisDown}): start Redis or set REDIS_URL`));
}
// The pools connect lazily: Postgres, and a schema not behind this version, are checked here once.
try {
  warnIfSchemaAhead(await checkDatabase(config.databaseUrl), redactUrl(config.databaseUrl), log);
} catch (err) {
  exitOnStartupFailure("worker", err instanceof DatabaseStartupError ? new StartupError(err.message) : err);
}

let bus: RedisWorkerBus;
try {
  bus = await openRedisWorkerBus(config, log);
} catch (err) {
  exitOnStartupFailure("worker", err instanceof RedisTargetError || err instanceof PartitionCountMismatchError ? new StartupError(err.message) : err);
}

// Signals are handled from the start: a SIGTERM during start-up must not kill the process with the
// default action (exit by signal, no cleanup); it stops the worker once it is up.
let worker: RunningWorker | undefined;
let stopping = false;
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));

try {
  worker = await startWorker(
    config,
    {
      ...bus,
      openDb: () => createDb(config.databaseUrl, { max: config.dbPoolSize, applicationName: `worker ${config.consumerName}` }),
    },
    log,
  );
} catch (err) {
  const code = (err as NodeJS.ErrnoException).code;
  exitOnStartupFailure(
    "worker",
    code?.startsWith("E") ? new StartupError(portProblem(code, config.httpHost, config.httpPort, "CHAT_WORKER_HTTP_PORT", "CHAT_WORKER_HTTP_HOST")) : err,
  );
}

async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, "stopping after the batch in hand");
  await worker?.stop();
  await bus.close();
  log.info({}, "stopped");
  process.exit(0);
}
