import {
  SubscriptionRouter,
  redisNames,
  type ChannelTransport,
  type ConnectionCounter,
  type MessageLog,
  type Presence,
  type Publisher,
  type RateLimiter,
} from "@chat/bus";
import { currentMemberships, groupRole, latestMessagesAfter, listConversations, messageById, totalUnread, unreadFrom, uploadById, type DbClient } from "@chat/db";
import { CloseCode } from "@chat/protocol";
import type { Logger } from "@chat/log";
import { HttpApi } from "./api/http-api.js";
import { messageEvent } from "./api/serialize.js";
import { TokenVerifier } from "./auth.js";
import type { GatewayConfig } from "./config.js";
import { LocalMediaStorage } from "./media/local-storage.js";
import { MediaUrlSigner } from "./media/signed-url.js";
import { MediaSweeper } from "./media/sweeper.js";
import type { MediaStorage } from "./media/storage.js";
import { IDLE_HEAP_DEFAULTS, IdleHeapCollector } from "./idle-heap.js";
import { GatewayMetrics } from "./metrics.js";
import { GatewayCore } from "./sessions/core.js";
import { announceGroupChange } from "./group-announcer.js";
import { PartitionProbe, PROBE_TARGET, type ProbePublish } from "./partition-probe.js";

/** What a gateway runs on: the bus of one engine (Redis, or memory in one process) and its database. */
export interface GatewayParts {
  publisher: Publisher;
  transport: ChannelTransport;
  stream: MessageLog;
  /** Each user's send budget; null when CHAT_RATE_MESSAGES_PER_SECOND is 0. */
  rateLimiter: RateLimiter | null;
  presence: Presence;
  /** Open sockets per user: the per-user limit, and who is online. */
  connections: ConnectionCounter;
  db: DbClient;
  /** Whether the bus serves: commands go through and every channel is subscribed. */
  busReady: () => boolean;
  /**
   * The log answers an accept only once the entry reached the replicas it must
   * (CHAT_REDIS_MIN_REPLICAS_ACK): the sender's echo is then sent when the accept answers, not
   * taken from the channel, which delivers as soon as the master has it.
   */
  echoOnAccept?: boolean;
  /**
   * Publishes on a shard channel and resolves to how many subscribers got it (SPUBLISH's reply): the
   * PartitionProbe's way of knowing this node's subscriptions are where the shard serves. Absent when
   * subscriptions cannot be lost on their own (the embedded engine) or only with the node's whole
   * connection (a single Redis).
   */
  probe?: ProbePublish;
  /**
   * Which server serves the slot of a key or shard channel now (a Redis Cluster's master, as the
   * client library last learnt it): after a failover the probe finds on one partition, the user
   * channels that server serves lost their notifications too. Absent where there is one server.
   */
  shardOf?: (key: string) => string | undefined;
}

/** Set by the engine's connection handling, once the gateway exists, to recover after an outage. */
export interface BusRecovery {
  /** Commands work again (the bus may have come back empty): restore what this node keeps there. */
  commandsBack(): void;
  /** The subscriber is back: subscribe every channel again; resolves once live delivery is whole. */
  resubscribe(): Promise<void>;
}

export interface RunningGateway {
  readonly port: number;
  /** Where /metrics is served: `port`, or CHAT_METRICS_PORT's. */
  readonly metricsPort: number;
  readonly recovery: BusRecovery;
  /** Turns not-ready, closes sockets over the drain window, lets their presence go, stops listening. */
  drain(): Promise<void>;
}

/**
 * Builds a gateway node on the given parts and starts listening. Fails fast (rejects) when the native
 * uWebSockets.js binary is missing, before any connection opens.
 */
export async function startGateway(config: Readonly<GatewayConfig>, parts: GatewayParts, log: Logger): Promise<RunningGateway> {
  const { GatewayServer } = await import("./transport/server.js");
  const busLog = log.child({ component: "bus" });
  const names = redisNames(config.redisPrefix, parts.stream.partitions);
  const db = parts.db;
  let draining = false;

  // The gauge reads the router at scrape time; the router exists by then.
  const metrics = new GatewayMetrics(() => router.channelCount);
  const router: SubscriptionRouter = new SubscriptionRouter(parts.transport, {
    log: busLog,
    unsubscribeDelayMs: config.unsubscribeDelayMs,
    observe: (envelope) => {
      if (envelope.target !== PROBE_TARGET) metrics.deliverLatency.observe(Math.max(0, Date.now() - envelope.sentAt) / 1000);
    },
  });
  const core = new GatewayCore({
    nodeId: config.nodeId,
    names,
    publisher: parts.publisher,
    stream: parts.stream,
    router,
    metrics,
    presence: parts.presence,
    unread: { total: (u) => totalUnread(db.db, u), from: (u, o) => unreadFrom(db.db, u, o) },
    history: {
      positionOf: async (id, roomId) => {
        const row = await messageById(db.db, id);
        return row && row.roomId === roomId ? row.streamPosition : null;
      },
      latestAfter: async (roomId, position, limit) =>
        (await latestMessagesAfter(db.db, roomId, position, limit)).map((row) => ({ position: row.streamPosition, event: messageEvent(row) })),
      recentPartners: async (username, limit) => (await listConversations(db.db, username, { limit, directOnly: true })).map((row) => row.otherUsername),
    },
    groups: {
      isMember: async (groupId, username) => (await groupRole(db, groupId, username)) !== null,
      current: (pairs) => currentMemberships(db, pairs),
    },
    media: {
      uploaderOf: async (identifier) => (await uploadById(db.db, identifier))?.uploader ?? null,
      // `storage` is set below, before the first socket can send.
      locationOf: async (identifier) => (await storage.locate(identifier)).url,
    },
    maxReplay: config.maxReplay,
    presencePartners: config.presencePartners,
    connections: parts.connections,
    redisReady: parts.busReady,
    rateLimiter: parts.rateLimiter,
    echoOnAccept: parts.echoOnAccept ?? false,
    maxMessageLength: config.maxMessageLength,
    log: log.child({ component: "gateway:sessions" }),
  });
  core.startPresenceUpkeep();
  core.startMembershipSweep(config.groupMembershipRecheckMs);
  let lastResubscribe = 0;
  const resubscribe = (why: string) => {
    // At most once per second: a failover may report many partitions and echoes at once.
    const now = Date.now();
    if (now - lastResubscribe < 1000) return;
    lastResubscribe = now;
    busLog.info({ why }, "subscribing every channel again");
    router.resubscribeAll().catch((err: unknown) => busLog.warn({ err }, "subscribing every channel again failed"));
  };
  core.startEchoWatch(config.echoDeadlineMs, () => resubscribe("echoes overdue"));
  const probe = parts.probe
    ? new PartitionProbe(
        names,
        config.nodeId,
        router,
        parts.probe,
        parts.busReady,
        {
          back: (p) => {
            core.resyncPartition(p);
            // The users whose channels live on the same shard missed their notifications meanwhile.
            const shardOf = parts.shardOf;
            const shard = shardOf?.(names.probeChannel(p, config.nodeId));
            if (shardOf && shard !== undefined) core.resyncNotifications((channel) => shardOf(channel) === shard);
          },
          missing: () => resubscribe("a partition's subscription is missing"),
        },
        config.partitionProbeIntervalMs,
        metrics,
        busLog.child({ component: "gateway:probe" }),
      )
    : null;
  if (probe) {
    await probe.start();
    core.partitionAvailable = (p) => probe.available(p);
  }

  const verifier = new TokenVerifier(config.jwtSecret, { audience: config.jwtAudience, issuer: config.jwtIssuer, allowNoExp: config.jwtAllowNoExp });
  const signer = new MediaUrlSigner(config.jwtSecret, config.mediaUrlTtlSeconds);
  // The AWS SDK only when S3 is used: importing it costs about 250 ms of CPU at every start.
  const storage: MediaStorage =
    config.mediaStorage === "s3"
      ? new (await import("./media/s3-storage.js")).S3MediaStorage({
          bucket: config.s3Bucket!,
          region: config.s3Region,
          endpoint: config.s3Endpoint,
          forcePathStyle: config.s3ForcePathStyle,
          urlTtlSeconds: config.s3UrlTtlSeconds,
        })
      : new LocalMediaStorage(config.mediaDir, signer);
  const api = new HttpApi({
    db: db.db,
    client: db,
    groups: { maxMembers: config.groupMaxMembers, announce: (change) => announceGroupChange(names, (channel, frames, target) => core.publish(channel, frames, target), change) },
    verifier,
    storage,
    signer,
    upload: { maxBytes: config.uploadMaxBytes, contentTypes: config.uploadContentTypes, quotaBytesPerHour: config.uploadQuotaBytesPerHour },
    roomId: names.roomId,
    online: (users) => parts.connections.online(users),
    log: log.child({ component: "gateway:api" }),
    development: config.devSignIn,
    devTokenSigning: { secret: config.jwtSecret, audience: config.jwtAudience, issuer: config.jwtIssuer },
  });
  const server = new GatewayServer(
    core,
    verifier,
    {
      ready: () => !draining && parts.busReady(),
      detail: () => {
        const down = probe?.unavailablePartitions() ?? [];
        return down.length === 0 ? null : `partitions unavailable: ${down.join(",")} (sends to their conversations get unavailable)`;
      },
    },
    { ...config, metricsPort: config.metricsPort ?? null },
    log.child({ component: "gateway:uws" }),
    metrics,
    api,
    parts.connections,
  );
  const port = await server.listen();
  const idleHeap = new IdleHeapCollector(
    { ...IDLE_HEAP_DEFAULTS, growthBytes: config.idleGcGrowthMb * 1048576 },
    log.child({ component: "gateway:heap" }),
    (pause) => metrics.idleCollections.observe(pause),
  );
  idleHeap.start();
  const sweeper = new MediaSweeper(
    db.db,
    storage,
    { graceSeconds: config.uploadOrphanGraceSeconds, intervalSeconds: config.uploadSweepIntervalSeconds },
    log.child({ component: "gateway:media" }),
  );
  sweeper.start();
  if (config.development && !config.devSignIn) {
    log.warn({}, "development sign-in (POST /api/dev/token) is off: CHAT_JWT_SECRET is set, and the endpoint signs only with the built-in development secret");
  }
  log.info(
    { host: config.host, port, metricsPort: server.metricsPort ?? port, prefix: config.redisPrefix, development: config.development, devSignIn: config.devSignIn },
    "listening",
  );

  return {
    port,
    metricsPort: server.metricsPort ?? port,
    recovery: {
      commandsBack: () => void core.rejoinPresence(),
      resubscribe: async () => {
        await router.resubscribeAll();
        busLog.info({ channels: router.channelCount }, "subscriptions restored");
        core.flushEchoes();
        // The whole bus was down, not a shard: what the probe saw meanwhile is not a partition's loss.
        probe?.forget();
      },
    },
    async drain() {
      if (draining) return;
      draining = true;
      metrics.drains.inc();
      log.info({ sockets: server.socketCount, windowMs: config.drainWindowMs }, "draining");
      await server.closeGradually(CloseCode.going_away, "server shutting down, reconnect", config.drainWindowMs);
      core.stopPresenceUpkeep();
      probe?.stop();
      idleHeap.stop();
      await sweeper.stop();
      await Promise.allSettled([...core.pendingReleases]);
      server.stopListening();
    },
  };
}
