import type { AddressInfo } from "node:net";
import { redisNames, type LogPartition, type MessageLog, type Publisher } from "@chat/bus";
import { redactUrl, type DbClient } from "@chat/db";
import type { Logger } from "@chat/log";
import type { WorkerConfig } from "./config.js";
import { BatchWriter, PoolHolder } from "./batch-writer.js";
import { StreamConsumer } from "./consumer.js";
import { MultiPartitionConsumer } from "./multi-consumer.js";
import type { LeaseEvents } from "./leases.js";
import { WorkerMetrics } from "./metrics.js";

/** Which partitions this worker consumes, as they are given to it and taken away. */
export interface PartitionOwnership {
  /** Resolves once the first share is held (its consumers started through the events). */
  start(): Promise<void>;
  /** Gives every partition back, each after its consumer stopped. */
  stop(): Promise<void>;
  owned(): ReadonlySet<number>;
}

/** What a worker runs on: the message log and publisher of one engine, and its database. */
export interface WorkerParts {
  stream: MessageLog;
  publisher: Publisher;
  /** Opens a pool; called again to replace one that stopped handing out connections. */
  openDb: () => DbClient;
  /** Whether the bus serves, for /readyz. */
  busReady: () => boolean;
  /**
   * Shares the log's partitions with the other workers (leases); null when this worker is the only
   * consumer and takes every partition (the embedded engine).
   */
  ownership: ((events: LeaseEvents) => PartitionOwnership) | null;
}

export interface RunningWorker {
  readonly httpPort: number;
  /** The partitions this worker consumes now. */
  owned(): ReadonlySet<number>;
  /**
   * Finishes the batches in hand (written, published, acknowledged), stops reading, gives its
   * partitions back and closes the pool; false when that took longer than
   * CHAT_WORKER_STOP_TIMEOUT_MS and was given up.
   */
  stop(): Promise<boolean>;
}

interface Running {
  /** Its own loop, or null when the worker's MultiPartitionConsumer reads it with the others. */
  consumer: StreamConsumer | null;
  partition: LogPartition;
}

/** Starts the consumers of the partitions this worker gets and the metrics/health HTTP server. */
export async function startWorker(config: Readonly<WorkerConfig>, parts: WorkerParts, log: Logger): Promise<RunningWorker> {
  const names = redisNames(config.redisPrefix, parts.stream.partitions);
  const running = new Map<number, Running>();
  const metrics = new WorkerMetrics(async () => {
    let lag = 0;
    let pending = 0;
    for (const b of await Promise.all([...running.values()].map(({ partition }) => partition.backlog()))) {
      lag += b.lag;
      pending += b.pending;
    }
    return { lag, pending };
  });
  const pool = new PoolHolder(parts.openDb(), parts.openDb, log.child({ component: "worker:pool" }), metrics);
  const writer = new BatchWriter(parts.publisher, pool, names, config, log.child({ component: "worker:writer" }), metrics);
  const consumerLog = log.child({ component: "worker:consumer" });
  /** Held partitions whose stream fails now (a shard failing over): named on /readyz, counted in metrics. */
  const failing = new Set<number>();
  const setFailing = (p: number, yes: boolean) => {
    if (yes) failing.add(p);
    else failing.delete(p);
    metrics.partitionsFailing.set(failing.size);
  };

  // Where the log reads many partitions in one command, one loop reads them all; else one loop each.
  const multiReader = parts.stream.openMultiReader?.();
  const multi = multiReader
    ? new MultiPartitionConsumer(multiReader, writer, config, consumerLog, (p, yes) => {
        // A partition given back and still finishing its batch in hand is no longer ours to mark.
        if (running.has(p)) setFailing(p, yes);
      })
    : null;

  const events: LeaseEvents = {
    acquired(p) {
      if (running.has(p)) return;
      const partition = parts.stream.partition(p);
      if (multi) {
        running.set(p, { consumer: null, partition });
        multi.add(partition, consumerLog.child({ partition: p }));
        metrics.partitionsOwned.set(running.size);
        return;
      }
      const consumer = new StreamConsumer(partition, writer, config, consumerLog.child({ partition: p }), (yes) => {
        // Only the partition's current consumer speaks for it: one stopping after its lease was
        // lost may still fail a read, and must not mark the partition it no longer holds.
        if (running.get(p)?.consumer === consumer) setFailing(p, yes);
      });
      running.set(p, { consumer, partition });
      consumer.start();
      metrics.partitionsOwned.set(running.size);
    },
    async released(p, reason) {
      const r = running.get(p);
      if (!r) return;
      running.delete(p);
      setFailing(p, false);
      metrics.partitionsOwned.set(running.size);
      // A lost lease: another worker may already consume it. Stopping still finishes the batch in
      // hand, which is safe (idempotent writes) and quicker for the new owner than leaving it pending.
      if (r.consumer) await r.consumer.stop();
      else await multi?.remove(p);
      await r.partition.close?.();
      consumerLog.info({ partition: p, reason }, "partition released");
    },
  };
  const ownership: PartitionOwnership = parts.ownership?.(events) ?? everyPartition(parts.stream.partitions, events);

  let started = false;
  let stopping = false;
  // A worker beyond the partition count holds none and stands by: still ready.
  const ready = () => started && !stopping && parts.busReady();
  const http = await metrics.serve(config.httpPort, config.httpHost, ready, () =>
    failing.size === 0 ? null : `partitions failing: ${[...failing].sort((a, b) => a - b).join(",")} (their entries wait in Redis)`,
  );
  const httpPort = (http.address() as AddressInfo).port;
  await ownership.start();
  started = true;
  log.info({ prefix: config.redisPrefix, database: redactUrl(config.databaseUrl), httpPort, partitions: [...ownership.owned()] }, "consuming");
  return {
    httpPort,
    owned: () => ownership.owned(),
    async stop() {
      stopping = true;
      // With Redis or Postgres unreachable a loop may wait on them for ever; what it holds stays
      // pending and the partition's next owner claims it, so giving up here loses nothing.
      let timer: NodeJS.Timeout | undefined;
      const stopped = await Promise.race([
        ownership
          .stop()
          .then(() => multi?.stop())
          .then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), config.stopTimeoutMs))),
      ]);
      clearTimeout(timer);
      if (!stopped) {
        log.warn({ timeoutMs: config.stopTimeoutMs }, "batch in hand not finished in time; leaving it pending for another worker");
        return false;
      }
      await new Promise((resolve) => http.close(resolve));
      await pool.current.close();
      return true;
    },
  };
}

/** Every partition, for a worker that is the log's only consumer. */
function everyPartition(partitions: number, events: LeaseEvents): PartitionOwnership {
  const owned = new Set<number>();
  return {
    async start() {
      for (let p = 0; p < partitions; p++) {
        owned.add(p);
        events.acquired(p);
      }
    },
    async stop() {
      await Promise.all([...owned].map((p) => events.released(p, "stopping")));
      owned.clear();
    },
    owned: () => owned,
  };
}
