import {
  RedisChannelTransport,
  RedisConnectionLimit,
  RedisMessageLog,
  RedisPresence,
  RedisPublisher,
  RedisRateLimiter,
  checkPartitionCount,
  checkPrefixForTarget,
  describeRedisTarget,
  openRedis,
  parseRedisTarget,
  redisNames,
  slotOf,
  socketLimit,
  type RedisClient,
} from "@chat/bus";
import type { Logger } from "@chat/log";
import type { Cluster } from "ioredis";
import type { GatewayConfig } from "./config.js";
import type { BusRecovery, GatewayParts } from "./gateway.js";

/** A gateway's Redis bus: a command connection and a subscriber connection, with outage recovery. */
export interface RedisGatewayBus extends Omit<GatewayParts, "db"> {
  /** Hands the gateway's recovery steps to the reconnect handlers (Redis cannot reconnect before start-up ends). */
  setRecovery(recovery: BusRecovery): void;
  close(): Promise<void>;
}

export class RedisUnreachableError extends Error {
  override readonly name = "RedisUnreachableError";
  readonly code = "redis_unreachable";
  constructor(
    /** REDIS_URL as it may be shown (no password). */
    readonly where: string,
    options: { cause: unknown },
  ) {
    super(`redis unreachable at ${where}`, options);
  }
}

/**
 * Connects both clients (to one Redis, or a Redis Cluster: see REDIS_URL); rejects with
 * RedisUnreachableError when Redis does not answer at start-up, RedisTargetError on a REDIS_URL or
 * CHAT_REDIS_PREFIX that cannot work, PartitionCountMismatchError on another CHAT_PARTITIONS than
 * the deployment's.
 */
export async function openRedisBus(config: Readonly<GatewayConfig>, log: Logger): Promise<RedisGatewayBus> {
  const target = parseRedisTarget(config.redisUrl);
  checkPrefixForTarget(config.redisPrefix, target);
  const shown = describeRedisTarget(target);
  const busLog = log.child({ component: "bus" });
  let recovery: BusRecovery | null = null;
  // ioredis rejects a failed first connect with "Connection is closed."; the socket's own error
  // (ECONNREFUSED, ENOTFOUND...) comes through the error event, and is what a person can act on.
  let lastError: Error | null = null;

  function connect(name: string, enableOfflineQueue: boolean, onReconnect: () => void): RedisClient {
    const redis = openRedis(target, {
      connectionName: `${config.nodeId}:${name}`,
      enableOfflineQueue,
      // No auto-pipelining: it defers every command to setImmediate and wraps it in a pipeline of its
      // own, and uWebSockets.js calls us once per frame, so batches rarely formed. Measured at 2,000 and
      // 5,000 msg/s: 8-12 µs of gateway CPU per message more with it, and a worse delivery p99.
      maxRetriesPerRequest: enableOfflineQueue ? null : 1,
      retryStrategy: (times) => Math.min(times * 200, 2000),
      lazyConnect: true,
    });
    let wasReady = false;
    redis.on("ready", () => {
      if (wasReady) {
        busLog.info({ client: name }, "redis reconnected");
        onReconnect();
      }
      wasReady = true;
    });
    redis.on("error", (err: Error) => {
      lastError = err;
      busLog.warn({ client: name, err: err.message, redis: shown }, "redis error");
    });
    return redis;
  }

  // Commands fail at once while disconnected (the sender gets `error`), instead of waiting in a queue.
  const redis = connect("commands", false, () => recovery?.commandsBack());
  // Until a reconnected subscriber has every channel back, this node takes no sends and no sockets.
  let subscriberSynced = true;
  // WAIT blocks the connection it runs on: accepts that wait for replicas get one of their own.
  const replicated = config.redisMinReplicasAck > 0 ? connect("replicated", false, () => {}) : null;
  const subscriber = connect("subscriber", true, () => {
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
  try {
    await Promise.all([redis.connect(), subscriber.connect(), replicated?.connect()]);
  } catch (cause) {
    redis.disconnect();
    subscriber.disconnect();
    replicated?.disconnect();
    throw new RedisUnreachableError(shown, { cause: lastError ?? cause });
  }

  const names = redisNames(config.redisPrefix, config.partitions);
  const rate = config.rateMessagesPerSecond > 0 ? { perSecond: config.rateMessagesPerSecond, burst: config.rateMessagesBurst } : undefined;
  // On a single Redis the log's accept takes from the sender's bucket in the same script; a cluster
  // keeps the bucket in the user's slot, so the limiter runs first, on its own.
  const inAccept = target.mode === "single";
  try {
    await checkPartitionCount(redis, names);
  } catch (err) {
    redis.disconnect();
    subscriber.disconnect();
    replicated?.disconnect();
    throw err;
  }
  const publisher = new RedisPublisher(redis);
  return {
    publisher,
    // A single Redis has every subscription of the node while its connection is up, which busReady
    // already follows: probing each partition there would cost Redis 16 scripts a second per node
    // for nothing.
    probe: target.mode === "cluster" ? (channel, payload) => publisher.probe(channel, payload) : undefined,
    // The master of the key's slot as the command connection knows it: that is the connection the
    // probe that just came back went through, so its map is the one after the failover.
    shardOf: target.mode === "cluster" ? (key) => (redis as Cluster).slots[slotOf(key)]?.[0] : undefined,
    transport: new RedisChannelTransport(subscriber),
    stream: new RedisMessageLog(redis, names, {
      idempotencyTtlSeconds: config.idempotencyTtlSeconds,
      rate: inAccept ? rate : undefined,
      replicas: replicated ? { count: config.redisMinReplicasAck, timeoutMs: config.redisReplicasAckTimeoutMs, client: replicated } : undefined,
    }),
    echoOnAccept: replicated !== null,
    rateLimiter: rate && !inAccept ? new RedisRateLimiter(redis, names, rate.perSecond, rate.burst) : null,
    presence: new RedisPresence(redis, names, config.presenceTtlMs),
    connections: new RedisConnectionLimit(redis, names, socketLimit(config.maxConnectionsPerUser), config.presenceTtlMs, config.nodeId),
    busReady: () => redis.status === "ready" && subscriber.status === "ready" && subscriberSynced && (replicated === null || replicated.status === "ready"),
    setRecovery: (r) => {
      recovery = r;
    },
    close: async () => {
      await Promise.allSettled([redis.quit(), subscriber.quit(), replicated?.quit()]);
    },
  };
}
