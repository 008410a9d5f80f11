import { StartupError, exitOnStartupFailure, portProblem } from "@chat/config";
import { createDb, survivePostgresClosedSocketWrites } from "@chat/db";
import { createLogger } from "@chat/log";
import { openRedisWorkerBus } from "./bus-redis.js";
import { loadWorkerConfig, type WorkerConfig } from "./config.js";
import { startWorker, type RunningWorker } from "./worker.js";

let config: Readonly<WorkerConfig>;
try {
  config = loadWorkerConfig();
} catch (err) {
  exitOnStartupFailure("worker", err);
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
  const code = (err as NodeJS.ErrnoException).code;
  exitOnStartupFailure(
    "worker",
    code?.startsWith("E") ? new StartupError(portProblem(code, config.httpHost, config.httpPort, "CHAT_WORKER_HTTP_PORT", "CHAT_WORKER_HTTP_HOST")) : err,
  );
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
