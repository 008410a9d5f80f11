import type { AddressInfo } from "node:net";
import { redisNames, type MessageLog, type Publisher } from "@chat/bus";
import { redactUrl, type DbClient } from "@chat/db";
import type { Logger } from "@chat/log";
import type { WorkerConfig } from "./config.js";
import { StreamConsumer } from "./consumer.js";
import { WorkerMetrics } from "./metrics.js";

/** What a worker runs on: the message log and publisher of one engine, and its database. */
export interface WorkerParts {
  stream: MessageLog;
  publisher: Publisher;
  /** Opens a pool; called again to replace one that stopped handing out connections. */
  openDb: () => DbClient;
  /** Whether the bus serves, for /readyz. */
  busReady: () => boolean;
}

export interface RunningWorker {
  readonly httpPort: number;
  /**
   * Finishes the batch in hand (written, published, acknowledged), stops reading and closes the
   * pool; false when that took longer than CHAT_WORKER_STOP_TIMEOUT_MS and was given up.
   */
  stop(): Promise<boolean>;
}

/** Starts the consume loop and the metrics/health HTTP server. */
export async function startWorker(config: Readonly<WorkerConfig>, parts: WorkerParts, log: Logger): Promise<RunningWorker> {
  const metrics = new WorkerMetrics(() => consumer.streamState());
  const consumer: StreamConsumer = new StreamConsumer(
    parts.stream,
    parts.publisher,
    parts.openDb(),
    redisNames(config.redisPrefix),
    config,
    log.child({ component: "worker:consumer" }),
    metrics,
    parts.openDb,
  );
  const http = await metrics.serve(config.httpPort, config.httpHost, () => consumer.running && parts.busReady());
  const httpPort = (http.address() as AddressInfo).port;
  consumer.start();
  log.info({ prefix: config.redisPrefix, database: redactUrl(config.databaseUrl), httpPort }, "consuming");
  return {
    httpPort,
    async stop() {
      // With Redis or Postgres unreachable the loop may wait on them for ever; what it holds stays
      // pending and another worker claims it, so giving up here loses nothing.
      let timer: NodeJS.Timeout | undefined;
      const stopped = await Promise.race([
        consumer.stop().then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), config.stopTimeoutMs))),
      ]);
      clearTimeout(timer);
      if (!stopped) {
        log.warn({ timeoutMs: config.stopTimeoutMs }, "batch in hand not finished in time; leaving it pending for another worker");
        return false;
      }
      await new Promise((resolve) => http.close(resolve));
      await consumer.dbClient.close();
      return true;
    },
  };
}
