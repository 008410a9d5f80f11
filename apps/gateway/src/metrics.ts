import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/** The gateway's Prometheus series, served on GET /metrics. */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly openSockets = new Gauge({
    name: "chat_gateway_open_sockets",
    help: "Open WebSocket connections by endpoint",
    labelNames: ["endpoint"] as const,
    registers: [this.registry],
  });
  readonly messagesReceived = new Counter({
    name: "chat_gateway_messages_received_total",
    help: "Client chat_message frames accepted into the stream",
    registers: [this.registry],
  });
  readonly readsReceived = new Counter({
    name: "chat_gateway_reads_received_total",
    help: "Client read_messages frames accepted into the stream",
    registers: [this.registry],
  });
  readonly framesFannedOut = new Counter({
    name: "chat_gateway_frames_fanned_out_total",
    help: "Frames delivered from Redis channels to local sockets",
    registers: [this.registry],
  });
  readonly deliverLatency = new Histogram({
    name: "chat_gateway_publish_to_deliver_seconds",
    help: "From PUBLISH on the origin node to hand-off to local sockets on this node",
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly partitionsUnavailable = new Gauge({
    name: "chat_gateway_partitions_unavailable",
    help: "Message-log partitions whose shard does not serve or lacks this node's subscriptions (the probe): sends to their conversations are refused",
    registers: [this.registry],
  });
  readonly resyncs = new Counter({
    name: "chat_gateway_resyncs_total",
    help: "Chat sockets closed with 4002 (reconnect with ?since=) because their partition's subscriptions were lost for a while",
    registers: [this.registry],
  });
  readonly sendsUnreplicated = new Counter({
    name: "chat_gateway_sends_unreplicated_total",
    help: "Sends answered `unavailable` because their entry reached fewer than CHAT_REDIS_MIN_REPLICAS_ACK replicas within CHAT_REDIS_REPLICAS_ACK_TIMEOUT_MS",
    registers: [this.registry],
  });
  readonly echoesOverdue = new Counter({
    name: "chat_gateway_echoes_overdue_total",
    help: "Echoes the sender's channel did not deliver within CHAT_ECHO_DEADLINE_MS, sent directly (a subscription on a shard was lost)",
    registers: [this.registry],
  });
  readonly subscriptions: Gauge;
  readonly framesRejected = new Counter({
    name: "chat_gateway_frames_rejected_total",
    help: "Client frames answered with an error, by error code",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly upgradesRefused = new Counter({
    name: "chat_gateway_upgrades_refused_total",
    help: "WebSocket upgrades refused, by HTTP status",
    labelNames: ["status"] as const,
    registers: [this.registry],
  });
  readonly idleCollections = new Histogram({
    name: "chat_gateway_idle_collection_pause_seconds",
    help: "Full garbage collections run while idle after the heap grew (CHAT_IDLE_GC_GROWTH_MB), by pause",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [this.registry],
  });
  readonly drains = new Counter({
    name: "chat_gateway_drains_total",
    help: "Drains started (SIGTERM received)",
    registers: [this.registry],
  });

  /** @param channelCount reads how many Redis channels the node is subscribed to, at scrape time. */
  constructor(channelCount: () => number) {
    this.subscriptions = new Gauge({
      name: "chat_gateway_redis_subscriptions",
      help: "Redis channels this node is subscribed to",
      registers: [this.registry],
      collect() {
        this.set(channelCount());
      },
    });
    collectDefaultMetrics({ register: this.registry, prefix: "chat_gateway_" });
  }
}
