import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { ConfigError, commonSettings, integer, oneOf, readSettings, text } from "@chat/config";

/** Signs and verifies tokens in development mode only (NODE_ENV=development without CHAT_JWT_SECRET). */
export const DEVELOPMENT_JWT_SECRET = "chat-cluster-development-secret-never-use-in-production";

/** Shortest CHAT_JWT_SECRET accepted outside development mode: HS256 wants a key as long as its hash (32 bytes). */
export const MIN_JWT_SECRET_BYTES = 32;

/** Every setting of the gateway: variable, default, meaning. The README table follows this list. */
export const GATEWAY_SETTINGS = {
  port: { env: "PORT", default: "8000", description: "HTTP/WebSocket port (0 picks a free one)", parse: integer(0, 65535) },
  host: { env: "HOST", default: "0.0.0.0", description: "Address to listen on; in development mode (NODE_ENV=development) `127.0.0.1` unless set", parse: text },
  metricsPort: { env: "CHAT_METRICS_PORT", default: undefined, description: "Serve `/metrics` on this port only, not on PORT (0 picks a free one); unset: on PORT, open to every client of the API", parse: integer(0, 65535) },
  metricsHost: { env: "CHAT_METRICS_HOST", default: undefined, description: "Address of CHAT_METRICS_PORT (default: HOST)", parse: text },
  ...commonSettings,
  nodeId: { env: "CHAT_NODE_ID", default: undefined, description: "This node's id in logs and presence (default: hostname-pid-random)", parse: text },
  maxMessageLength: { env: "CHAT_MAX_MESSAGE_LENGTH", default: "4096", description: "Longest message text, in characters", parse: integer(1, 1_000_000) },
  maxFrameBytes: {
    env: "CHAT_MAX_FRAME_BYTES",
    default: "65536",
    description: "Largest client frame answered normally; larger gets error `frame_too_large`, 16x larger drops the connection (1006)",
    parse: integer(1024, 16 * 1024 * 1024),
  },
  maxBackpressureBytes: { env: "CHAT_MAX_BACKPRESSURE_BYTES", default: "4194304", description: "Bytes queued to a socket that does not read before it is closed", parse: integer(65536, 1 << 30) },
  idleTimeoutSeconds: { env: "CHAT_IDLE_TIMEOUT_SECONDS", default: "120", description: "A silent socket is closed after this; the server pings before", parse: integer(8, 960) },
  echoDeadlineMs: {
    env: "CHAT_ECHO_DEADLINE_MS",
    default: "3000",
    description:
      "A sender's echo that its conversation's channel has not delivered this long after the accept is sent directly, and the node subscribes every channel again (a shard's subscription was lost, e.g. in a failover; ms)",
    parse: integer(200, 60000),
  },
  partitionProbeIntervalMs: {
    env: "CHAT_PARTITION_PROBE_INTERVAL_MS",
    default: "1000",
    description:
      "On a Redis Cluster, how often the node checks, per partition, that the shard serving it has this node's subscriptions (a probe publish): while not, sends to its conversations get `unavailable`, and once back its chat sockets are closed with 4002 to catch up with ?since= (ms). A single Redis is one shard that has them all while the node's connection is up: no probe",
    parse: integer(100, 60000),
  },
  unsubscribeDelayMs: {
    env: "CHAT_UNSUBSCRIBE_DELAY_MS",
    default: "2000",
    description: "A node keeps a channel subscribed this long after its last local socket for it closed, so a quick reconnect does not unsubscribe and subscribe again (ms)",
    parse: integer(0, 60000),
  },
  presenceTtlMs: { env: "CHAT_PRESENCE_TTL_MS", default: "30000", description: "Presence of a node that stops refreshing it expires after this (ms)", parse: integer(3000, 30000) },
  presencePartners: {
    env: "CHAT_PRESENCE_PARTNERS",
    default: "50",
    description: "An all-conversations notifications socket is told when the partners of the user's this many most recent conversations come online or go offline (one subscription each, per socket's node)",
    parse: integer(0, 1000),
  },
  groupMaxMembers: {
    env: "CHAT_GROUP_MAX_MEMBERS",
    default: "256",
    description: "Most members a group conversation may have; adding or creating beyond it is refused with 409 `group_full`",
    parse: integer(2, 10000),
  },
  groupMembershipRecheckMs: {
    env: "CHAT_GROUP_MEMBERSHIP_RECHECK_MS",
    default: "30000",
    description: "How often a gateway reads again the membership of its open group sockets (one query for all), closing those of removed members with 4003 in case the removal's own close was lost (ms)",
    parse: integer(100, 3_600_000),
  },
  maxReplay: { env: "CHAT_MAX_REPLAY", default: "500", description: "Most missed messages replayed to a chat socket opened with ?since=", parse: integer(0, 10000) },
  rateMessagesPerSecond: { env: "CHAT_RATE_MESSAGES_PER_SECOND", default: "100", description: "Sends (messages and reads) per second per user, cluster-wide; more get error `rate_limited`; 0 disables", parse: integer(0, 1_000_000) },
  rateMessagesBurst: { env: "CHAT_RATE_MESSAGES_BURST", default: "200", description: "Burst allowance of that limit", parse: integer(1, 1_000_000) },
  redisMinReplicasAck: {
    env: "CHAT_REDIS_MIN_REPLICAS_ACK",
    default: "0",
    description:
      "A sender's echo waits until its message reached this many Redis replicas (WAIT); past CHAT_REDIS_REPLICAS_ACK_TIMEOUT_MS the send gets error `unavailable` and the client retries with the same client_id. 0: the echo comes once the master has it. Set 1 wherever masters have replicas: a failover then loses no echoed message",
    parse: integer(0, 16),
  },
  redisReplicasAckTimeoutMs: { env: "CHAT_REDIS_REPLICAS_ACK_TIMEOUT_MS", default: "1000", description: "How long a send waits for CHAT_REDIS_MIN_REPLICAS_ACK replicas before it is answered `unavailable` (ms)", parse: integer(10, 60000) },
  idempotencyTtlSeconds: { env: "CHAT_IDEMPOTENCY_TTL_SECONDS", default: "300", description: "How long a client_id is remembered (s): a retried send within it is not stored twice. Redis keeps one small key per message sent with a client_id for this long (about 0.4 KiB each: at 2,000 msg/s, 300 s is about 240 MiB)", parse: integer(10, 7 * 86400) },
  maxConnectionsPerUser: { env: "CHAT_MAX_CONNECTIONS_PER_USER", default: "100", description: "Open sockets per user across the cluster; more are refused with 429; 0 disables the limit (sockets are still counted: that is who is online)", parse: integer(0, 1_000_000) },
  upgradesPerIpPerSecond: { env: "CHAT_RATE_UPGRADES_PER_IP", default: "0", description: "Upgrades per second per client address on one node (429 beyond, bursts of 2x); 0 disables: a load balancer or NAT puts many users behind one address", parse: integer(0, 1_000_000) },
  allowedOrigins: {
    env: "CHAT_ALLOWED_ORIGINS",
    default: "",
    description: "Comma-separated Origins (`https://chat.example.com`) allowed to open sockets besides the page's own; `*` allows any. A browser upgrade whose Origin differs from its Host and is not listed gets 403; clients that send no Origin are not checked",
    parse: (raw: string) => raw.split(",").map((o) => o.trim()).filter(Boolean),
  },
  jwtAudience: { env: "CHAT_JWT_AUDIENCE", default: undefined, description: "When set, tokens must carry this `aud`", parse: text },
  jwtIssuer: { env: "CHAT_JWT_ISSUER", default: undefined, description: "When set, tokens must carry this `iss`", parse: text },
  jwtAllowNoExp: { env: "CHAT_JWT_ALLOW_NO_EXP", default: "false", description: "`true` accepts tokens without `exp` (they never expire); by default they are refused", parse: (raw: string) => oneOf("true", "false")(raw) === "true" },
  drainWindowMs: {
    env: "CHAT_DRAIN_WINDOW_MS",
    default: "10000",
    description: "On SIGTERM, sockets are closed (1001) spread over this window so clients do not reconnect all at once (ms)",
    parse: integer(0, 600000),
  },
  idleGcGrowthMb: {
    env: "CHAT_IDLE_GC_GROWTH_MB",
    default: "16",
    description: "An idle gateway runs a full garbage collection (at most every 30 s) once its heap grew by this much (MiB) since the last one, so the memory of a burst of connection set-ups goes back to the system; 0 disables",
    parse: integer(0, 65536),
  },
  dbPoolSize: { env: "CHAT_DB_POOL_SIZE", default: "10", description: "Postgres connections per gateway (counts on connect, HTTP API)", parse: integer(1, 200) },
  mediaStorage: { env: "CHAT_MEDIA_STORAGE", default: "local", description: "Where uploads go: `local` (CHAT_MEDIA_DIR, served under /chat-media/) or `s3`", parse: oneOf("local", "s3") },
  mediaDir: { env: "CHAT_MEDIA_DIR", default: "./.data/media", description: "Upload directory of local storage (a volume in Kubernetes)", parse: text },
  uploadMaxBytes: { env: "CHAT_UPLOAD_MAX_BYTES", default: "26214400", description: "Largest upload (bytes); larger gets 413", parse: integer(1, 5 * 1024 * 1024 * 1024) },
  uploadContentTypes: {
    env: "CHAT_UPLOAD_CONTENT_TYPES",
    default: "image/*,video/*,audio/*,application/pdf,text/plain",
    description: "Allowed upload content types, comma-separated (`type/*` for a family), matched against the type sniffed from the file's bytes (the declared type and name are ignored); others get 415. Only types the gateway recognises (PNG, JPEG, GIF, WebP, HEIC, PDF, MP4, QuickTime, WebM, Ogg, WAV, MP3, M4A, plain text) are ever stored: never SVG or HTML",
    parse: (raw: string) => raw.split(",").map((t) => t.trim().toLowerCase()).filter(Boolean),
  },
  s3Bucket: { env: "CHAT_S3_BUCKET", default: undefined, description: "S3 bucket (required with CHAT_MEDIA_STORAGE=s3); credentials come from the AWS SDK's default chain", parse: text },
  s3Region: { env: "CHAT_S3_REGION", default: "us-east-1", description: "S3 region", parse: text },
  s3Endpoint: { env: "CHAT_S3_ENDPOINT", default: undefined, description: "Endpoint of an S3-compatible store (MinIO, R2...)", parse: text },
  s3ForcePathStyle: { env: "CHAT_S3_FORCE_PATH_STYLE", default: "false", description: "Path-style bucket addressing (most S3-compatible stores)", parse: (raw: string) => oneOf("true", "false")(raw) === "true" },
  s3UrlTtlSeconds: { env: "CHAT_S3_URL_TTL_SECONDS", default: "3600", description: "Lifetime of presigned media URLs (s)", parse: integer(60, 7 * 24 * 3600) },
  mediaUrlTtlSeconds: { env: "CHAT_MEDIA_URL_TTL_SECONDS", default: "900", description: "Lifetime of the signed /chat-media/ URLs of local storage (s); clients renew them through /api/rooms/check-url/ and refresh-url/", parse: integer(10, 7 * 24 * 3600) },
  uploadQuotaBytesPerHour: { env: "CHAT_UPLOAD_QUOTA_BYTES_PER_HOUR", default: "104857600", description: "Bytes one user may upload per hour, across the cluster (reserved before storing); beyond it 429 `upload_quota_exceeded`; 0 disables", parse: integer(0, Number.MAX_SAFE_INTEGER) },
  uploadOrphanGraceSeconds: { env: "CHAT_UPLOAD_ORPHAN_GRACE_SECONDS", default: "86400", description: "An upload no message references is deleted once older than this (s), as are stray files in CHAT_MEDIA_DIR", parse: integer(1, 365 * 86400) },
  uploadSweepIntervalSeconds: { env: "CHAT_UPLOAD_SWEEP_INTERVAL_SECONDS", default: "3600", description: "How often a gateway sweeps unreferenced uploads (s; one gateway at a time, under a Postgres advisory lock); 0 disables", parse: integer(0, 7 * 86400) },
};

export interface GatewayConfig {
  port: number;
  host: string;
  metricsPort?: number;
  metricsHost?: string;
  jwtAllowNoExp: boolean;
  redisUrl: string;
  databaseUrl: string;
  redisPrefix: string;
  partitions: number;
  logLevel: string;
  nodeId: string;
  maxMessageLength: number;
  maxFrameBytes: number;
  maxBackpressureBytes: number;
  idleTimeoutSeconds: number;
  unsubscribeDelayMs: number;
  partitionProbeIntervalMs: number;
  echoDeadlineMs: number;
  presenceTtlMs: number;
  drainWindowMs: number;
  idleGcGrowthMb: number;
  presencePartners: number;
  groupMaxMembers: number;
  groupMembershipRecheckMs: number;
  maxReplay: number;
  rateMessagesPerSecond: number;
  rateMessagesBurst: number;
  idempotencyTtlSeconds: number;
  redisMinReplicasAck: number;
  redisReplicasAckTimeoutMs: number;
  maxConnectionsPerUser: number;
  upgradesPerIpPerSecond: number;
  allowedOrigins: string[];
  jwtAudience?: string;
  jwtIssuer?: string;
  dbPoolSize: number;
  mediaStorage: "local" | "s3";
  mediaDir: string;
  uploadMaxBytes: number;
  uploadContentTypes: string[];
  s3Bucket?: string;
  s3Region: string;
  s3Endpoint?: string;
  s3ForcePathStyle: boolean;
  s3UrlTtlSeconds: number;
  mediaUrlTtlSeconds: number;
  uploadQuotaBytesPerHour: number;
  uploadOrphanGraceSeconds: number;
  uploadSweepIntervalSeconds: number;
  jwtSecret: string;
  development: boolean;
  /** POST /api/dev/token signs tokens: development mode with the built-in secret only, never with CHAT_JWT_SECRET. */
  devSignIn: boolean;
}

/** Reads and validates the environment once; throws a ConfigError listing every problem. */
export function loadGatewayConfig(env: NodeJS.ProcessEnv = process.env): Readonly<GatewayConfig> {
  const { values, problems } = readSettings(GATEWAY_SETTINGS, env);
  const development = env["NODE_ENV"] === "development";
  const jwtSecret = env["CHAT_JWT_SECRET"] || (development ? DEVELOPMENT_JWT_SECRET : undefined);
  if (!jwtSecret) problems.push("CHAT_JWT_SECRET is required (the HS256 secret) unless NODE_ENV=development");
  else if (!development && Buffer.byteLength(jwtSecret) < MIN_JWT_SECRET_BYTES) {
    // The length only: never the secret itself.
    problems.push(`CHAT_JWT_SECRET is ${Buffer.byteLength(jwtSecret)} bytes; outside development mode it must be at least ${MIN_JWT_SECRET_BYTES} (generate one: openssl rand -hex 32)`);
  }
  if (values.mediaStorage === "s3" && !values.s3Bucket) problems.push("CHAT_S3_BUCKET is required when CHAT_MEDIA_STORAGE=s3");
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    ...(values as Omit<GatewayConfig, "jwtSecret" | "development" | "nodeId">),
    nodeId: values.nodeId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`,
    // Development mode listens on loopback unless HOST says otherwise: its sign-in mints tokens for anyone.
    host: development && !env["HOST"] ? "127.0.0.1" : values.host!,
    jwtSecret: jwtSecret!,
    development,
    devSignIn: development && jwtSecret === DEVELOPMENT_JWT_SECRET,
  });
}
