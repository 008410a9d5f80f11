import { MemoryConnectionLimit, MemoryPresence, MemoryPubSub, MemoryRateLimiter, onlineEnvelope, redisNames, socketLimit } from "@chat/bus";
import { StartupError, exitOnStartupFailure, portProblem } from "@chat/config";
import { DatabaseStartupError, checkDatabase, createDb, redactUrl, runMigrations, schemaStatus, survivePostgresClosedSocketWrites, warnIfSchemaAhead, type DbClient } from "@chat/db";
import { DataDirInUseError, PostgresMessageLog, openEmbeddedPostgres, type EmbeddedPostgres } from "@chat/embedded";
import { chatMessageEvent, loadGatewayConfig, openRedisBus, startGateway, type GatewayConfig, type RunningGateway } from "@chat/gateway";
import { createLogger } from "@chat/log";
import { loadWorkerConfig, openRedisWorkerBus, startWorker, type RunningWorker, type WorkerConfig } from "@chat/worker";
import { chooseEngine, type Engine } from "./engine.js";

// `npm start` passes --development: tokens from the development secret and the sign-in endpoint
// work without configuring anything. A deployment runs without the flag.
if (process.argv.includes("--development") && !process.env["NODE_ENV"]) process.env["NODE_ENV"] = "development";

let engine: Engine;
let gatewayConfig: Readonly<GatewayConfig>;
let workerConfig: Readonly<WorkerConfig>;
try {
  engine = chooseEngine(process.env);
  gatewayConfig = loadGatewayConfig();
  const loaded = loadWorkerConfig();
  // One port is enough: unless CHAT_WORKER_HTTP_PORT is set, the worker's /metrics takes a free port
  // (the banner and the `started` line say which) on the gateway's address.
  workerConfig = {
    ...loaded,
    httpPort: process.env["CHAT_WORKER_HTTP_PORT"] ? loaded.httpPort : 0,
    httpHost: process.env["CHAT_WORKER_HTTP_HOST"] ? loaded.httpHost : gatewayConfig.host,
  };
} catch (err) {
  exitOnStartupFailure("single-node", err);
}

/** The one line for an expected failure of this start-up, naming the setting to change. */
function explain(err: unknown, stage: string): unknown {
  if (err instanceof StartupError) return err;
  if (err instanceof DatabaseStartupError) return new StartupError(err.message);
  if (err instanceof DataDirInUseError) return new StartupError(`the data directory ${err.message}`);
  const code = (err as NodeJS.ErrnoException).code;
  if (stage === "worker" && code?.startsWith("E")) {
    return new StartupError(portProblem(code, workerConfig.httpHost, workerConfig.httpPort, "CHAT_WORKER_HTTP_PORT", "CHAT_WORKER_HTTP_HOST"));
  }
  const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message;
  if (stage === "redis") return new StartupError(`Redis does not answer at ${redactUrl(gatewayConfig.redisUrl)} (${cause}): start Redis or set REDIS_URL`);
  if (stage === "postgres") return new StartupError(`Postgres is not usable at ${redactUrl(gatewayConfig.databaseUrl)} (${cause}): start PostgreSQL or set DATABASE_URL`);
  return err;
}
let stage = "start";

const log = createLogger(gatewayConfig.logLevel, { component: "single-node", node: gatewayConfig.nodeId });
survivePostgresClosedSocketWrites(log);
const closers: (() => Promise<void>)[] = [];
let gateway: RunningGateway | undefined;
let worker: RunningWorker | undefined;
// Signals are handled from the start: a SIGTERM during start-up must not kill the process with the
// default action (exit by signal, no cleanup).
let stopping = false;
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
let describe: string;

try {
  if (engine.kind === "embedded") {
    stage = "data";
    const pg: EmbeddedPostgres = await openEmbeddedPostgres(engine.dataDir);
    stage = "gateway";
    closers.push(() => pg.close());
    // One client of one connection for the whole process (see EmbeddedPostgres): the gateway, the
    // worker and the message log queue on it, so log positions also commit in assignment order.
    const db = createDb(pg.url, { max: 1, applicationName: "single-node", socketPath: pg.socketPath });
    closers.unshift(() => db.close());
    warnIfSchemaAhead(await schemaStatus(db.sql), pg.dataDir, log);
    // The worker replaces a pool that stalls; with one shared connection there is nothing to swap
    // to, and closing it would take the gateway down too, so its "pool" never closes.
    const workerDb: DbClient = { ...db, close: async () => {} };
    const bus = new MemoryPubSub();
    const names = redisNames(gatewayConfig.redisPrefix, 1);
    const stream = await PostgresMessageLog.open(db.sql, bus, names.roomChannel, {
      ttlSeconds: gatewayConfig.idempotencyTtlSeconds,
      frameOf: (entry) => JSON.stringify(chatMessageEvent(entry)),
    });
    const { presenceTtlMs, maxConnectionsPerUser } = gatewayConfig;
    gateway = await startGateway(
      gatewayConfig,
      {
        publisher: bus,
        transport: bus.transport(),
        stream,
        rateLimiter: gatewayConfig.rateMessagesPerSecond > 0 ? new MemoryRateLimiter(gatewayConfig.rateMessagesPerSecond, gatewayConfig.rateMessagesBurst) : null,
        presence: new MemoryPresence(presenceTtlMs),
        connections: new MemoryConnectionLimit(socketLimit(maxConnectionsPerUser), presenceTtlMs, (user, online) => {
          void bus.publish(names.onlineChannel(user), onlineEnvelope(gatewayConfig.nodeId, user, online));
        }),
        db,
        busReady: () => true,
      },
      log,
    );
    stage = "worker";
    worker = await startWorker(
      // One connection: parts of a batch could not be written at once.
      { ...workerConfig, parallelBatches: 1, databaseUrl: `pglite:${pg.dataDir}` },
      { stream, publisher: bus, openDb: () => workerDb, busReady: () => true, ownership: null },
      log,
    );
    describe = `embedded: in-process bus, PGlite under ${pg.dataDir}`;
  } else {
    stage = "redis";
    const bus = await openRedisBus(gatewayConfig, log);
    closers.push(() => bus.close());
    const gatewayDb = createDb(engine.databaseUrl, { max: gatewayConfig.dbPoolSize, applicationName: `gateway ${gatewayConfig.nodeId}` });
    closers.unshift(() => gatewayDb.close());
    stage = "postgres";
    // Migrates first, so the schema is never behind here; checked after, for a newer version's.
    await runMigrations(engine.databaseUrl);
    warnIfSchemaAhead(await checkDatabase(engine.databaseUrl), redactUrl(engine.databaseUrl), log);
    stage = "gateway";
    gateway = await startGateway(gatewayConfig, { ...bus, db: gatewayDb }, log);
    bus.setRecovery(gateway.recovery);
    const workerBus = await openRedisWorkerBus(workerConfig, log);
    closers.unshift(() => workerBus.close());
    const databaseUrl = engine.databaseUrl;
    const openDb = () => createDb(databaseUrl, { max: workerConfig.dbPoolSize, applicationName: `worker ${workerConfig.consumerName}` });
    stage = "worker";
    worker = await startWorker(workerConfig, { ...workerBus, openDb }, log);
    describe = `redis: ${redactUrl(engine.redisUrl)}, postgres: ${redactUrl(engine.databaseUrl)}`;
  }
} catch (err) {
  for (const close of closers) await close().catch(() => {});
  exitOnStartupFailure("single-node", explain(err, stage));
}

const everywhere = gatewayConfig.host === "0.0.0.0" || gatewayConfig.host === "::";
const url = `http://${everywhere ? "127.0.0.1" : gatewayConfig.host.includes(":") ? `[${gatewayConfig.host}]` : gatewayConfig.host}:${gateway!.port}/`;
log.info(
  { engine: engine.kind, parts: describe, url, host: gatewayConfig.host, workerHttpPort: worker!.httpPort, development: gatewayConfig.development, devSignIn: gatewayConfig.devSignIn },
  "started",
);
const signIn = !gatewayConfig.development
  ? ""
  : gatewayConfig.devSignIn
    ? `development mode: open ${url} in a browser and sign in with any username\n`
    : "development mode, but the sign-in (POST /api/dev/token) is off: CHAT_JWT_SECRET is set; sign tokens with npm run token\n";
process.stderr.write(
  `\nchat server on ${url} (engine ${describe})\n` +
    `worker metrics on http://${workerConfig.httpHost === "0.0.0.0" ? "127.0.0.1" : workerConfig.httpHost}:${worker!.httpPort}/metrics (CHAT_WORKER_HTTP_PORT)\n` +
    (everywhere ? `listening on every interface (HOST=${gatewayConfig.host}): reachable from the network\n` : "") +
    signIn +
    "\n",
);

async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, "signal received");
  await gateway?.drain();
  await worker?.stop();
  for (const close of closers) await close().catch((err: unknown) => log.warn({ err }, "close failed"));
  log.info({}, "stopped");
  process.exit(0);
}
