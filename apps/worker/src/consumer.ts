import type { LogPartition, Publisher, RedisNames, ReceivedEntry } from "@chat/bus";
import { BatchStalledError, ConnectionLostError, ReserveTimeoutError, persistBatch, type BatchOutcome, type DbClient } from "@chat/db";
import type { Logger } from "@chat/log";
import type { WorkerMetrics } from "./metrics.js";
import { notificationsFor, prepareBatch, splitByUsers, type PreparedBatch } from "./batch.js";

export interface ConsumerOptions {
  consumerName: string;
  batchSize: number;
  blockMs: number;
  claimIdleMs: number;
  claimIntervalMs: number;
  trimIntervalMs: number;
  /** How long a short batch waits to fill up before it is written. */
  batchWaitMs: number;
  /** A batch attempt with no answer from Postgres for this long is abandoned and the pool replaced (ms). */
  stallTimeoutMs: number;
  /** Most user-disjoint parts a full batch is written in at once (1: never split). */
  parallelBatches: number;
}

/** Postgres SQLSTATE classes that no retry can fix: data exceptions (22) and integrity violations (23). */
const isPermanentDbError = (err: unknown): boolean => {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && (code.startsWith("22") || code.startsWith("23"));
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The worker's Postgres pool, shared by its partitions' consumers, and replaced when it stopped
 * handing out connections or answering: by the first consumer that finds it broken, once.
 */
export class PoolHolder {
  constructor(
    private pool: DbClient,
    private readonly open: () => DbClient,
    private readonly log: Logger,
    private readonly metrics: WorkerMetrics,
  ) {}

  get current(): DbClient {
    return this.pool;
  }

  /** Replaces `broken` unless another consumer already did. */
  replace(broken: DbClient, err: unknown): void {
    if (this.pool !== broken) return;
    this.metrics.poolReplacements.inc();
    this.log.warn({ err }, "replacing the Postgres pool");
    this.pool = this.open();
    void broken.close().catch(() => {});
  }
}

/**
 * One loop over one partition's consumer group: read (or claim) a batch, write it in one
 * transaction, publish its notifications, then acknowledge. Nothing is acknowledged before its
 * commit, so a worker killed at any point loses nothing: its pending entries are claimed by the
 * partition's next owner after `claimIdleMs`, and the write is idempotent on the message id.
 */
export class StreamConsumer {
  private stopping = false;
  private stopped: Promise<void> | null = null;
  private trimTimer: NodeJS.Timeout | null = null;
  constructor(
    private readonly stream: LogPartition,
    private readonly publisher: Publisher,
    private readonly pool: PoolHolder,
    private readonly names: RedisNames,
    private readonly options: ConsumerOptions,
    private readonly log: Logger,
    private readonly metrics: WorkerMetrics,
  ) {}

  start(): void {
    this.stopped = this.run();
    // On its own timer, not in the loop: a batch held up (a lock, Postgres down) must not keep the
    // partition's acknowledged entries in Redis, and no other worker trims a partition it does not own.
    let trimming = false;
    this.trimTimer = setInterval(() => {
      if (trimming) return;
      trimming = true;
      this.stream
        .trimAcknowledged()
        .then(
          (trimmed) => {
            if (trimmed > 0) this.log.debug({ trimmed }, "stream trimmed");
          },
          (err: unknown) => this.log.warn({ err }, "stream trim failed"),
        )
        .finally(() => (trimming = false));
    }, this.options.trimIntervalMs);
    this.trimTimer.unref();
  }

  /** Finishes the batch in hand (written, published, acknowledged) and stops reading. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.trimTimer) clearInterval(this.trimTimer);
    await this.stopped;
  }

  private async run(): Promise<void> {
    const { consumerName, batchSize, blockMs, claimIdleMs, claimIntervalMs } = this.options;
    let nextClaim = 0;
    let backoff = 0;
    // The group is (re)created at start and whenever Redis says it is gone (a Redis restarted
    // without persistence comes back empty).
    let needGroup = true;
    // Entries the last read returned: a short batch means a steady trickle (see below).
    let lastRead = 0;
    while (!this.stopping) {
      try {
        if (needGroup) {
          await this.stream.ensureGroup();
          needGroup = false;
        }
        const now = Date.now();
        let entries: ReceivedEntry[];
        if (now >= nextClaim) {
          nextClaim = now + claimIntervalMs;
          entries = await this.stream.claim(consumerName, claimIdleMs, batchSize);
          if (entries.length > 0) this.log.info({ count: entries.length, first: entries[0]?.streamId }, "claimed pending entries");
        } else {
          // A short batch costs a whole transaction: at a steady trickle, let it fill for a few ms
          // (persistence lag, not delivery latency) instead of committing tiny batches back to back.
          // After a short batch the next one gathers before it is read, in one read; after an empty
          // read the first entry wakes a blocking read and the rest is read once it had time to come.
          const trickle = lastRead > 0 && lastRead < batchSize && this.options.batchWaitMs > 0;
          if (trickle) await sleep(this.options.batchWaitMs);
          entries = await this.stream.read(consumerName, batchSize, Math.min(blockMs, Math.max(10, nextClaim - Date.now())));
          if (!trickle && entries.length > 0 && entries.length < batchSize && this.options.batchWaitMs > 0) {
            await sleep(this.options.batchWaitMs);
            entries = entries.concat(await this.stream.read(consumerName, batchSize - entries.length, null));
          }
          lastRead = entries.length;
        }
        if (entries.length > 0) await this.handle(entries);
        backoff = 0;
      } catch (err) {
        if (err instanceof Error && err.message.includes("NOGROUP")) needGroup = true;
        backoff = Math.min(backoff === 0 ? 250 : backoff * 2, 5000);
        this.log.warn({ err, retryInMs: backoff }, "stream read failed");
        await sleep(backoff);
      }
    }
  }

  /**
   * Writes a batch, in user-disjoint parts at once when it is full, then what could not be split
   * off. Stops short (leaving entries pending) when stopping.
   */
  private async handle(entries: ReceivedEntry[]): Promise<void> {
    // Only a full batch is split: the stream holds more, a backlog (after an outage, or above what
    // one connection writes), and Postgres working on two cores drains it sooner. Below that, each
    // part's own round trip, commit and publish cost more than they save: measured at 10,000 msg/s,
    // splitting batches of 100 or more raised delivery p99 from 20-26 to 38-52 ms.
    if (this.options.parallelBatches > 1 && entries.length >= this.options.batchSize) {
      const { groups, rest } = splitByUsers(entries, this.options.parallelBatches);
      if (groups.length > 1) {
        const done = await Promise.all(groups.map((group) => this.handleOne(group)));
        // A part left unwritten (stopping) must not be overtaken by later entries of its users. The
        // rest is written whole, not split again: at most parts + 1 writes per read, whatever the
        // conversations look like.
        if (rest.length > 0 && done.every(Boolean)) await this.handleOne(rest);
        return;
      }
    }
    await this.handleOne(entries);
  }

  /**
   * Writes, publishes and acknowledges one batch, retrying transient failures until it is done
   * (true) or we stop (false).
   */
  private async handleOne(entries: ReceivedEntry[]): Promise<boolean> {
    const startedAt = process.hrtime.bigint();
    const batch = prepareBatch(entries, this.names);
    const ids = entries.map((e) => e.streamId);
    let backoff = 250;
    for (let attempt = 1; ; attempt++) {
      // The pool of this attempt: parts written at once may fail together, and only the first of
      // them replaces it.
      const db = this.pool.current;
      try {
        if (batch.poison.length > 0) await this.deadLetter(batch.poison, "undecodable stream entry");
        batch.poison = [];
        const outcome = await this.persist(batch, db);
        await this.stream.ack(ids);
        this.metrics.batchSize.observe(ids.length);
        this.metrics.batchDuration.observe(Number(process.hrtime.bigint() - startedAt) / 1e9);
        this.metrics.messagesPersisted.inc(outcome.inserted.size);
        this.metrics.readsApplied.inc(batch.reads.length);
        this.log.debug({ entries: ids.length, first: ids[0], last: ids.at(-1), inserted: outcome.inserted.size, attempt }, "batch persisted");
        return true;
      } catch (err) {
        this.metrics.writeErrors.inc();
        const poolBroken = err instanceof ReserveTimeoutError || err instanceof BatchStalledError || err instanceof ConnectionLostError;
        if (poolBroken) this.pool.replace(db, err);
        this.log.warn({ err, first: ids[0], last: ids.at(-1), attempt, retryInMs: backoff }, "batch failed, will retry");
        // Left pending: another worker claims it after claimIdleMs.
        if (this.stopping) return false;
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }

  /**
   * Publishes a batch's notifications right after its commit, while its users' locks are still
   * held (see persistBatch): two workers announcing counts of the same user do so in commit order,
   * so the last count a client sees is the persisted one. A publish that keeps failing is given up
   * after a few tries (the data is committed; counts are right again on the next change or connect).
   */
  private publishNotifications(batch: PreparedBatch): (outcome: BatchOutcome) => Promise<void> {
    return async (outcome) => {
      const notifications = notificationsFor(batch, outcome, this.names, this.options.consumerName);
      if (notifications.length === 0) return;
      for (let attempt = 1; ; attempt++) {
        try {
          await this.publisher.publishAll(notifications);
          break;
        } catch (err) {
          if (attempt >= 5 || this.stopping) {
            this.log.error({ err, notifications: notifications.length }, "notifications not published after commit");
            return;
          }
        }
        await sleep(100 * attempt);
      }
      this.metrics.notificationsPublished.inc(notifications.length);
    };
  }

  /** One transaction for the batch; on a data error, entry by entry so one bad entry cannot block the rest. */
  private async persist(batch: PreparedBatch, db: DbClient): Promise<BatchOutcome> {
    try {
      return await persistBatch(db, batch.messages, batch.reads, this.publishNotifications(batch), this.options.stallTimeoutMs);
    } catch (err) {
      if (!isPermanentDbError(err)) throw err;
      this.log.warn({ err }, "batch has invalid data; writing entries one by one");
    }
    const merged: BatchOutcome = { inserted: new Set(), pairUnread: new Map(), totalUnread: new Map() };
    const kept: PreparedBatch["messages"] = [];
    const singles: PreparedBatch[] = [
      ...batch.messages.map((m) => ({ messages: [m], reads: [], poison: [] })),
      ...(batch.reads.length > 0 ? [{ messages: [], reads: batch.reads, poison: [] }] : []),
    ];
    for (const single of singles) {
      try {
        const o = await persistBatch(db, single.messages, single.reads, this.publishNotifications(single), this.options.stallTimeoutMs);
        for (const id of o.inserted) merged.inserted.add(id);
        kept.push(...single.messages);
      } catch (err) {
        if (!isPermanentDbError(err) || !single.messages[0]) throw err;
        await this.deadLetterMessage(single.messages[0].id, err);
      }
    }
    batch.messages = kept;
    return merged;
  }

  private async deadLetterMessage(id: string, err: unknown): Promise<void> {
    this.metrics.deadLettered.inc();
    this.log.error({ err, id }, "message cannot be persisted; moved to the dead-letter stream");
    await this.stream.deadLetter({ id, error: String((err as Error).message ?? err) });
  }

  private async deadLetter(entries: ReceivedEntry[], reason: string): Promise<void> {
    for (const e of entries) {
      this.metrics.deadLettered.inc();
      this.log.error({ streamId: e.streamId, reason }, "poison stream entry; moved to the dead-letter stream");
      await this.stream.deadLetter({ streamId: e.streamId, raw: e.raw.slice(0, 65536), error: reason });
    }
  }
}
