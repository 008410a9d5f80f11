import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { ConfigError, commonSettings, integer, readSettings, text } from "@chat/config";

/** Signs and verifies tokens in development mode only (NODE_ENV=development without CHAT_JWT_SECRET). */
export const DEVELOPMENT_JWT_SECRET = "chat-cluster-development-secret-never-use-in-production";

/** Every setting of the gateway: variable, default, meaning. The README table follows this list. */
export const GATEWAY_SETTINGS = {
  port: { env: "PORT", default: "8000", description: "HTTP/WebSocket port (0 picks a free one)", parse: integer(0, 65535) },
  host: { env: "HOST", default: "0.0.0.0", description: "Address to listen on", parse: text },
  ...commonSettings,
  nodeId: { env: "CHAT_NODE_ID", default: undefined, description: "This node's id in logs and presence (default: hostname-pid-random)", parse: text },
  maxMessageLength: { env: "CHAT_MAX_MESSAGE_LENGTH", default: "4096", description: "Longest message text, in characters", parse: integer(1, 1_000_000) },
  maxFrameBytes: {
    env: "CHAT_MAX_FRAME_BYTES",
    default: "65536",
    description: "Largest client frame answered normally; larger gets error `frame_too_large`, 16x larger closes the socket (1009)",
    parse: integer(1024, 16 * 1024 * 1024),
  },
  maxBackpressureBytes: { env: "CHAT_MAX_BACKPRESSURE_BYTES", default: "4194304", description: "Bytes queued to a socket that does not read before it is closed", parse: integer(65536, 1 << 30) },
  idleTimeoutSeconds: { env: "CHAT_IDLE_TIMEOUT_SECONDS", default: "120", description: "A silent socket is closed after this; the server pings before", parse: integer(8, 960) },
  presenceTtlMs: { env: "CHAT_PRESENCE_TTL_MS", default: "30000", description: "Presence of a node that stops refreshing it expires after this (ms)", parse: integer(3000, 30000) },
  drainWindowMs: {
    env: "CHAT_DRAIN_WINDOW_MS",
    default: "10000",
    description: "On SIGTERM, sockets are closed (1001) spread over this window so clients do not reconnect all at once (ms)",
    parse: integer(0, 600000),
  },
  dbPoolSize: { env: "CHAT_DB_POOL_SIZE", default: "10", description: "Postgres connections per gateway (unread counts on connect)", parse: integer(1, 200) },
};

export interface GatewayConfig {
  port: number;
  host: string;
  redisUrl: string;
  databaseUrl: string;
  redisPrefix: string;
  logLevel: string;
  nodeId: string;
  maxMessageLength: number;
  maxFrameBytes: number;
  maxBackpressureBytes: number;
  idleTimeoutSeconds: number;
  presenceTtlMs: number;
  drainWindowMs: number;
  dbPoolSize: number;
  jwtSecret: string;
  development: boolean;
}

/** Reads and validates the environment once; throws a ConfigError listing every problem. */
export function loadGatewayConfig(env: NodeJS.ProcessEnv = process.env): Readonly<GatewayConfig> {
  const { values, problems } = readSettings(GATEWAY_SETTINGS, env);
  const development = env["NODE_ENV"] === "development";
  const jwtSecret = env["CHAT_JWT_SECRET"] || (development ? DEVELOPMENT_JWT_SECRET : undefined);
  if (!jwtSecret) problems.push("CHAT_JWT_SECRET is required (the HS256 secret) unless NODE_ENV=development");
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    ...(values as Omit<GatewayConfig, "jwtSecret" | "development" | "nodeId">),
    nodeId: values.nodeId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`,
    jwtSecret: jwtSecret!,
    development,
  });
}
