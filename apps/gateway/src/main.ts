import { Redis } from "ioredis";
import { ConnectionLimit, RedisPresence, SubscriptionRouter, redisNames } from "@chat/bus";
import { createDb, latestMessagesAfter, messageById, redactUrl, totalUnread, unreadFrom } from "@chat/db";
import { messageEvent } from "./api/serialize.js";
import { CloseCode } from "@chat/protocol";
import { TokenVerifier } from "./auth.js";
import { loadGatewayConfig, type GatewayConfig } from "./config.js";
import { createLogger, type Logger } from "@chat/log";
import { HttpApi } from "./api/http-api.js";
import { LocalMediaStorage } from "./media/local-storage.js";
import { S3MediaStorage } from "./media/s3-storage.js";
import type { MediaStorage } from "./media/storage.js";
import { GatewayMetrics } from "./metrics.js";
import { GatewayCore } from "./sessions/core.js";

let config: Readonly<GatewayConfig>;
try {
  config = loadGatewayConfig();
} catch (err) {
  process.stderr.write(JSON.stringify({ level: "fatal", component: "gateway", msg: (err as Error).message }) + "\n");
  process.exit(2);
}

const log = createLogger(config.logLevel, { component: "gateway", node: config.nodeId });

// Fails fast (exit 1) when the native uWebSockets.js binary is missing, before any connection opens.
const { GatewayServer } = await import("./transport/server.js").catch((err: unknown) => {
  log.fatal({ err }, "cannot load uWebSockets.js");
  process.exit(1);
});

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
// Commands fail at once while disconnected (the sender gets `error`), instead of waiting in a queue.
const redis = connectRedis("commands", false, busLog, () => void core.rejoinPresence());
// Until a reconnected subscriber has every channel back, this node takes no sends and no sockets.
let subscriberSynced = true;
const subscriber = connectRedis("subscriber", true, busLog, () => {
  router.resubscribeAll().then(
    () => {
      subscriberSynced = true;
      busLog.info({ channels: router.channelCount }, "subscriptions restored");
      core.flushEchoes();
    },
    (err: unknown) => busLog.warn({ err }, "resubscribe failed; waiting for the next reconnect"),
  );
});
subscriber.on("close", () => {
  subscriberSynced = false;
});
const redisServes = () => redis.status === "ready" && subscriber.status === "ready" && subscriberSynced;
const names = redisNames(config.redisPrefix);
const db = createDb(config.databaseUrl, { max: config.dbPoolSize, applicationName: `gateway ${config.nodeId}` });

let draining = false;
try {
  await Promise.all([redis.connect(), subscriber.connect()]);
} catch (err) {
  log.fatal({ err, redis: redactUrl(config.redisUrl) }, "redis unreachable at start-up");
  process.exit(1);
}

// The gauge reads the router at scrape time; the router exists by then.
const metrics = new GatewayMetrics(() => router.channelCount);
const router: SubscriptionRouter = new SubscriptionRouter(subscriber, {
  log: busLog,
  observe: (envelope) => metrics.deliverLatency.observe(Math.max(0, Date.now() - envelope.sentAt) / 1000),
});
const core = new GatewayCore({
  nodeId: config.nodeId,
  names,
  redis,
  router,
  metrics,
  presence: new RedisPresence(redis, names, config.presenceTtlMs),
  unread: { total: (u) => totalUnread(db.db, u), from: (u, o) => unreadFrom(db.db, u, o) },
  history: {
    positionOf: async (id, roomId) => {
      const row = await messageById(db.db, id);
      return row && row.roomId === roomId ? row.streamPosition : null;
    },
    latestAfter: async (roomId, position, limit) =>
      (await latestMessagesAfter(db.db, roomId, position, limit)).map((row) => ({ position: row.streamPosition, event: messageEvent(row) })),
  },
  maxReplay: config.maxReplay,
  redisReady: redisServes,
  limits: {
    ratePerSecond: config.rateMessagesPerSecond,
    burst: config.rateMessagesBurst,
    idempotencyTtlSeconds: config.idempotencyTtlSeconds,
  },
  maxMessageLength: config.maxMessageLength,
  log: log.child({ component: "gateway:sessions" }),
});
const connections = config.maxConnectionsPerUser > 0 ? new ConnectionLimit(redis, names, config.maxConnectionsPerUser, config.presenceTtlMs) : null;
if (connections) core.refreshConnections = (entries) => connections.refresh(entries);
core.startPresenceUpkeep();

const verifier = new TokenVerifier(config.jwtSecret, { audience: config.jwtAudience, issuer: config.jwtIssuer });
const storage: MediaStorage =
  config.mediaStorage === "s3"
    ? new S3MediaStorage({
        bucket: config.s3Bucket!,
        region: config.s3Region,
        endpoint: config.s3Endpoint,
        forcePathStyle: config.s3ForcePathStyle,
        urlTtlSeconds: config.s3UrlTtlSeconds,
      })
    : new LocalMediaStorage(config.mediaDir);
const api = new HttpApi({
  db: db.db,
  verifier,
  storage,
  upload: { maxBytes: config.uploadMaxBytes, contentTypes: config.uploadContentTypes },
  roomId: names.roomId,
  log: log.child({ component: "gateway:api" }),
});
const server = new GatewayServer(
  core,
  verifier,
  { ready: () => !draining && redisServes() },
  config,
  log.child({ component: "gateway:uws" }),
  metrics,
  api,
  connections,
);
const port = await server.listen();
log.info({ host: config.host, port, prefix: config.redisPrefix, development: config.development }, "listening");

/**
 * SIGTERM: turn not-ready at once (upgrades and /readyz answer 503), close sockets with 1001 spread
 * over the drain window, let their presence go, then disconnect and exit. Kubernetes'
 * terminationGracePeriodSeconds must exceed CHAT_DRAIN_WINDOW_MS plus a few seconds.
 */
async function shutdown(signal: string): Promise<void> {
  if (draining) return;
  draining = true;
  metrics.drains.inc();
  log.info({ signal, sockets: server.socketCount, windowMs: config.drainWindowMs }, "draining");
  await server.closeGradually(CloseCode.going_away, "server shutting down, reconnect", config.drainWindowMs);
  core.stopPresenceUpkeep();
  await Promise.allSettled([...core.pendingReleases]);
  server.stopListening();
  await Promise.allSettled([redis.quit(), subscriber.quit(), db.close()]);
  log.info({}, "stopped");
  process.exit(0);
}
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
