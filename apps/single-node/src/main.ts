import { MemoryConnectionLimit, MemoryPresence, MemoryPubSub, redisNames } from "@chat/bus";
import { ConfigError } from "@chat/config";
import { createDb, redactUrl, runMigrations, survivePostgresClosedSocketWrites, type DbClient } from "@chat/db";
import { PostgresMessageLog, openEmbeddedPostgres, type EmbeddedPostgres } from "@chat/embedded";
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
  workerConfig = loadWorkerConfig();
} catch (err) {
  process.stderr.write(JSON.stringify({ level: "fatal", component: "single-node", msg: (err as Error).message, problems: (err as ConfigError).problems }) + "\n");
  process.exit(2);
}

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
    const pg: EmbeddedPostgres = await openEmbeddedPostgres(engine.dataDir);
    closers.push(() => pg.close());
    // One client of one connection for the whole process (see EmbeddedPostgres): the gateway, the
    // worker and the message log queue on it, so log positions also commit in assignment order.
    const db = createDb(pg.url, { max: 1, applicationName: "single-node", socketPath: pg.socketPath });
    closers.unshift(() => db.close());
    // The worker replaces a pool that stalls; with one shared connection there is nothing to swap
    // to, and closing it would take the gateway down too, so its "pool" never closes.
    const workerDb: DbClient = { ...db, close: async () => {} };
    const bus = new MemoryPubSub();
    const stream = await PostgresMessageLog.open(db.sql, bus, Date.now, {
      keyOf: redisNames(gatewayConfig.redisPrefix).clientMessage,
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
        presence: new MemoryPresence(presenceTtlMs),
        connections: maxConnectionsPerUser > 0 ? new MemoryConnectionLimit(maxConnectionsPerUser, presenceTtlMs) : null,
        db,
        busReady: () => true,
      },
      log,
    );
    worker = await startWorker(
      // One connection: parts of a batch could not be written at once.
      { ...workerConfig, parallelBatches: 1, databaseUrl: `pglite:${pg.dataDir}` },
      { stream, publisher: bus, openDb: () => workerDb, busReady: () => true },
      log,
    );
    describe = `embedded: in-process bus, PGlite under ${pg.dataDir}`;
  } else {
    const bus = await openRedisBus(gatewayConfig, log);
    closers.push(() => bus.close());
    const gatewayDb = createDb(engine.databaseUrl, { max: gatewayConfig.dbPoolSize, applicationName: `gateway ${gatewayConfig.nodeId}` });
    closers.unshift(() => gatewayDb.close());
    await runMigrations(engine.databaseUrl);
    gateway = await startGateway(gatewayConfig, { ...bus, db: gatewayDb }, log);
    bus.setRecovery(gateway.recovery);
    const workerBus = openRedisWorkerBus(workerConfig, log);
    closers.unshift(() => workerBus.close());
    const databaseUrl = engine.databaseUrl;
    const openDb = () => createDb(databaseUrl, { max: workerConfig.dbPoolSize, applicationName: `worker ${workerConfig.consumerName}` });
    worker = await startWorker(workerConfig, { ...workerBus, openDb }, log);
    describe = `redis: ${redactUrl(engine.redisUrl)}, postgres: ${redactUrl(engine.databaseUrl)}`;
  }
} catch (err) {
  log.fatal({ err, engine: engine.kind }, "cannot start");
  for (const close of closers) await close().catch(() => {});
  process.exit(1);
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
