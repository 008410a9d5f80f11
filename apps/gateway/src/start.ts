import { DatabaseStartupError, checkDatabase, createDb, redactUrl, survivePostgresClosedSocketWrites, warnIfSchemaAhead } from "@chat/db";
import { StartupError, exitOnStartupFailure } from "@chat/config";
import { createLogger } from "@chat/log";
import { PartitionCountMismatchError, RedisTargetError } from "@chat/bus";
import { RedisUnreachableError, openRedisBus, type RedisGatewayBus } from "./bus-redis.js";
import { loadGatewayConfig, type GatewayConfig } from "./config.js";
import { startGateway, type RunningGateway } from "./gateway.js";

let config: Readonly<GatewayConfig>;
try {
  config = loadGatewayConfig();
} catch (err) {
  exitOnStartupFailure("gateway", err);
}

const log = createLogger(config.logLevel, { component: "gateway", node: config.nodeId });
survivePostgresClosedSocketWrites(log);

let bus: RedisGatewayBus;
try {
  bus = await openRedisBus(config, log);
} catch (err) {
  if (err instanceof RedisTargetError || err instanceof PartitionCountMismatchError) exitOnStartupFailure("gateway", new StartupError(err.message));
  if (!(err instanceof RedisUnreachableError)) exitOnStartupFailure("gateway", err);
  exitOnStartupFailure("gateway", new StartupError(`Redis does not answer at ${err.where} (${(err.cause as Error | undefined)?.message ?? "no answer"}): start Redis or set REDIS_URL`));
}
// Postgres is checked here, once: the pool below connects lazily, and a gateway on a database it
// cannot use (unreachable, or a schema older than this version) would fail request by request.
try {
  warnIfSchemaAhead(await checkDatabase(config.databaseUrl), redactUrl(config.databaseUrl), log);
} catch (err) {
  exitOnStartupFailure("gateway", err instanceof DatabaseStartupError ? new StartupError(err.message) : err);
}
const db = createDb(config.databaseUrl, { max: config.dbPoolSize, applicationName: `gateway ${config.nodeId}` });

// Signals are handled from the start: a SIGTERM during start-up must not kill the process with the
// default action (exit by signal, no cleanup).
let gateway: RunningGateway | undefined;
let stopping = false;
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));

try {
  gateway = await startGateway(config, { ...bus, db }, log);
} catch (err) {
  exitOnStartupFailure("gateway", err);
}
bus.setRecovery(gateway.recovery);

/**
 * SIGTERM: turn not-ready at once (upgrades and /readyz answer 503), close sockets with 1001 spread
 * over the drain window, let their presence go, then disconnect and exit. Kubernetes'
 * terminationGracePeriodSeconds must exceed CHAT_DRAIN_WINDOW_MS plus a few seconds.
 */
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, "signal received");
  await gateway?.drain();
  await Promise.allSettled([bus.close(), db.close()]);
  log.info({}, "stopped");
  process.exit(0);
}
