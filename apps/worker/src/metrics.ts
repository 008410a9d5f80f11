import { createServer, type Server } from "node:http";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export interface StreamState {
  /** Entries in the stream not yet delivered to the group (XINFO GROUPS lag). */
  lag: number;
  /** Entries delivered to a consumer and not yet acknowledged. */
  pending: number;
}

/** The worker's Prometheus series, served with its health on CHAT_WORKER_HTTP_PORT. */
export class WorkerMetrics {
  readonly registry = new Registry();
  readonly batchSize = new Histogram({
    name: "chat_worker_batch_entries",
    help: "Stream entries per persisted batch",
    buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
    registers: [this.registry],
  });
  readonly batchDuration = new Histogram({
    name: "chat_worker_batch_duration_seconds",
    help: "From the start of a batch's write to its commit and notifications, retries included",
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly messagesPersisted = new Counter({
    name: "chat_worker_messages_persisted_total",
    help: "Messages inserted into Postgres (re-deliveries of stored messages excluded)",
    registers: [this.registry],
  });
  readonly readsApplied = new Counter({
    name: "chat_worker_reads_applied_total",
    help: "read_messages entries applied",
    registers: [this.registry],
  });
  readonly writeErrors = new Counter({
    name: "chat_worker_write_errors_total",
    help: "Batches whose write, publish or acknowledgement failed (and were retried)",
    registers: [this.registry],
  });
  readonly poolReplacements = new Counter({
    name: "chat_worker_pool_replacements_total",
    help: "Postgres pools replaced because no connection came, a batch lost its connection, or a batch got no answer (see CHAT_WORKER_STALL_TIMEOUT_MS)",
    registers: [this.registry],
  });
  readonly deadLettered = new Counter({
    name: "chat_worker_dead_lettered_total",
    help: "Entries moved to the dead-letter stream",
    registers: [this.registry],
  });
  readonly notificationsPublished = new Counter({
    name: "chat_worker_notifications_published_total",
    help: "Notifications published after commits: one per recipient and socket kind of each message and read (batched into one envelope per channel and target)",
    registers: [this.registry],
  });
  readonly partitionsOwned = new Gauge({
    name: "chat_worker_partitions_owned",
    help: "Message-log partitions this worker consumes now (its lease share)",
    registers: [this.registry],
  });
  readonly partitionsFailing = new Gauge({
    name: "chat_worker_partitions_failing",
    help: "Partitions this worker holds whose stream it cannot read or acknowledge right now (their Redis shard failing over or unreachable): their entries wait in Redis",
    registers: [this.registry],
  });
  readonly streamLag: Gauge;
  readonly pendingEntries: Gauge;

  /** @param readStream reads the stream's state at scrape time. */
  constructor(readStream: () => Promise<StreamState>) {
    let last: Promise<StreamState> | null = null;
    // One Redis round trip per scrape for both gauges.
    const state = () => (last ??= readStream().finally(() => setTimeout(() => (last = null), 0)));
    this.streamLag = new Gauge({
      name: "chat_worker_stream_lag",
      help: "Entries of this worker's partitions not yet delivered to any worker",
      registers: [this.registry],
      async collect() {
        this.set((await state()).lag);
      },
    });
    this.pendingEntries = new Gauge({
      name: "chat_worker_pending_entries",
      help: "Entries of this worker's partitions delivered to a worker and not yet acknowledged",
      registers: [this.registry],
      async collect() {
        this.set((await state()).pending);
      },
    });
    collectDefaultMetrics({ register: this.registry, prefix: "chat_worker_" });
  }

  /**
   * GET /metrics, /healthz (alive) and /readyz (its partitions are taken and Redis answers; still
   * 200 while some partitions fail, which `detail` names: the others are served).
   */
  serve(port: number, host: string, ready: () => boolean, detail: () => string | null = () => null): Promise<Server> {
    const server = createServer((req, res) => {
      if (req.url === "/healthz") return void res.end("ok");
      if (req.url === "/readyz") {
        const isReady = ready();
        const more = isReady ? detail() : null;
        res.statusCode = isReady ? 200 : 503;
        return void res.end(isReady ? (more === null ? "ready" : `ready; ${more}`) : "not ready");
      }
      if (req.url === "/metrics") {
        this.registry.metrics().then(
          (body) => {
            res.setHeader("content-type", this.registry.contentType);
            res.end(body);
          },
          (err: unknown) => {
            res.statusCode = 500;
            res.end(String(err));
          },
        );
        return;
      }
      res.statusCode = 404;
      res.end("not found");
    });
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve(server));
    });
  }
}
