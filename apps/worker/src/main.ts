import { ConfigError } from "@chat/config";
import { createDb, survivePostgresClosedSocketWrites } from "@chat/db";
import { createLogger } from "@chat/log";
import { openRedisWorkerBus } from "./bus-redis.js";
import { loadWorkerConfig, type WorkerConfig } from "./config.js";
import { startWorker, type RunningWorker } from "./worker.js";

let config: Readonly<WorkerConfig>;
try {
  config = loadWorkerConfig();
} catch (err) {
  process.stderr.write(JSON.stringify({ level: "fatal", component: "worker", msg: (err as Error).message, problems: (err as ConfigError).problems }) + "\n");
  process.exit(2);
}

const log = createLogger(config.logLevel, { component: "worker", consumer: config.consumerName });
survivePostgresClosedSocketWrites(log);
const bus = openRedisWorkerBus(config, log);

// Signals are handled from the start: a SIGTERM during start-up must not kill the process with the
// default action (exit by signal, no cleanup); it stops the worker once it is up.
let worker: RunningWorker | undefined;
let stopping = false;
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));

try {
  worker = await startWorker(
    config,
    {
      ...bus,
      openDb: () => createDb(config.databaseUrl, { max: config.dbPoolSize, applicationName: `worker ${config.consumerName}` }),
    },
    log,
  );
} catch (err) {
  log.fatal({ err, port: config.httpPort }, "cannot open the metrics port");
  process.exit(1);
}

async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, "stopping after the batch in hand");
  await worker?.stop();
  await bus.close();
  log.info({}, "stopped");
  process.exit(0);
}
