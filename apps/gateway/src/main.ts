import { Redis } from "ioredis";
import { MessageStream, RedisChannelTransport, RedisConnectionLimit, RedisPresence, RedisPublisher, redisNames } from "@chat/bus";
import { createDb, redactUrl } from "@chat/db";
import { createLogger, type Logger } from "@chat/log";
import { loadGatewayConfig, type GatewayConfig } from "./config.js";
import { startGateway, type BusRecovery, type RunningGateway } from "./gateway.js";

let config: Readonly<GatewayConfig>;
try {
  config = loadGatewayConfig();
} catch (err) {
  process.stderr.write(JSON.stringify({ level: "fatal", component: "gateway", msg: (err as Error).message }) + "\n");
  process.exit(2);
}

const log = createLogger(config.logLevel, { component: "gateway", node: config.nodeId });

function connectRedis(name: string, enableOfflineQueue: boolean, logger: Logger, onReconnect: () => void): Redis {
  const redis = new Redis(config.redisUrl, {
    connectionName: `${config.nodeId}:${name}`,
    enableOfflineQueue,
    // Commands issued in the same tick (many sockets sending at once) go out in one write.
    enableAutoPipelining: true,
    maxRetriesPerRequest: enableOfflineQueue ? null : 1,
    retryStrategy: (times) => Math.min(times * 200, 2000),
    lazyConnect: true,
  });
  let wasReady = false;
  redis.on("ready", () => {
    if (wasReady) {
      logger.info({ client: name }, "redis reconnected");
      onReconnect();
    }
    wasReady = true;
  });
  redis.on("error", (err: Error) => logger.warn({ client: name, err: err.message, redis: redactUrl(config.redisUrl) }, "redis error"));
  return redis;
}

const busLog = log.child({ component: "bus" });
// Set once the gateway exists; Redis cannot reconnect before it does (start-up awaits both connections).
let recovery: BusRecovery | null = null;
// Commands fail at once while disconnected (the sender gets `error`), instead of waiting in a queue.
const redis = connectRedis("commands", false, busLog, () => recovery?.commandsBack());
// Until a reconnected subscriber has every channel back, this node takes no sends and no sockets.
let subscriberSynced = true;
const subscriber = connectRedis("subscriber", true, busLog, () => {
  recovery?.resubscribe().then(
    () => {
      subscriberSynced = true;
    },
    (err: unknown) => busLog.warn({ err }, "resubscribe failed; waiting for the next reconnect"),
  );
});
subscriber.on("close", () => {
  subscriberSynced = false;
});
const names = redisNames(config.redisPrefix);
const db = createDb(config.databaseUrl, { max: config.dbPoolSize, applicationName: `gateway ${config.nodeId}` });

try {
  await Promise.all([redis.connect(), subscriber.connect()]);
} catch (err) {
  log.fatal({ err, redis: redactUrl(config.redisUrl) }, "redis unreachable at start-up");
  process.exit(1);
}

let gateway: RunningGateway;
try {
  gateway = await startGateway(
    config,
    {
      publisher: new RedisPublisher(redis),
      transport: new RedisChannelTransport(subscriber),
      stream: new MessageStream(redis, names),
      presence: new RedisPresence(redis, names, config.presenceTtlMs),
      connections: config.maxConnectionsPerUser > 0 ? new RedisConnectionLimit(redis, names, config.maxConnectionsPerUser, config.presenceTtlMs) : null,
      db,
      busReady: () => redis.status === "ready" && subscriber.status === "ready" && subscriberSynced,
    },
    log,
  );
} catch (err) {
  log.fatal({ err }, "gateway failed to start");
  process.exit(1);
}
recovery = gateway.recovery;

/**
 * SIGTERM: turn not-ready at once (upgrades and /readyz answer 503), close sockets with 1001 spread
 * over the drain window, let their presence go, then disconnect and exit. Kubernetes'
 * terminationGracePeriodSeconds must exceed CHAT_DRAIN_WINDOW_MS plus a few seconds.
 */
let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, "signal received");
  await gateway.drain();
  await Promise.allSettled([redis.quit(), subscriber.quit(), db.close()]);
  log.info({}, "stopped");
  process.exit(0);
}
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
