import type { LogPartition, Publisher, ReceivedEntry, RedisNames } from "@chat/bus";
import { BatchStalledError, ConnectionLostError, ReserveTimeoutError, persistBatch, type BatchOutcome, type DbClient } from "@chat/db";
import type { Logger } from "@chat/log";
import { notificationsFor, prepareBatch, splitByUsers, type PreparedBatch } from "./batch.js";
import type { WorkerMetrics } from "./metrics.js";

export interface WriterOptions {
  consumerName: string;
  batchSize: number;
  /** How long a short batch waits for more entries before it is written (ms). */
  batchWaitMs: number;
  /** A batch attempt with no answer from Postgres for this long is abandoned and the pool replaced (ms). */
  stallTimeoutMs: number;
  /** Most user-disjoint parts a full batch is written in at once (1: never split). */
  parallelBatches: number;
  /** The pool's size: the most writes in flight at once (see SLOW_WRITE_MS). */
  dbPoolSize: number;
}

/**
 * A write in flight longer than this (a lock held elsewhere, a slow disk) no longer keeps what other
 * partitions hand in waiting: another write starts beside it, up to one per pooled connection. The
 * partitions already in the held write wait with it; every other one flows.
 */
const SLOW_WRITE_MS = 1000;

/** Where the entries of one partition go when they cannot be written. */
export type DeadLetters = Pick<LogPartition, "deadLetter">;

/** What one partition's consumer handed in: written whole, then it acknowledges. */
interface Submission {
  entries: ReceivedEntry[];
  deadLetters: DeadLetters;
  /** True once its consumer stops: nobody waits for it any more. */
  abandoned: () => boolean;
  arrivedAt: number;
  resolve: (written: boolean) => void;
}

/** Postgres SQLSTATE classes that no retry can fix: data exceptions (22) and integrity violations (23). */
const isPermanentDbError = (err: unknown): boolean => {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && (code.startsWith("22") || code.startsWith("23"));
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The worker's Postgres pool, shared by its writes, and replaced when it stopped handing out
 * connections or answering: by the first write that finds it broken, once.
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

  /** Replaces `broken` unless another write already did. */
  replace(broken: DbClient, err: unknown): void {
    if (this.pool !== broken) return;
    this.metrics.poolReplacements.inc();
    this.log.warn({ err }, "replacing the Postgres pool");
    this.pool = this.open();
    void broken.close().catch(() => {});
  }
}

/**
 * Group commit across a worker's partitions. Each partition's consumer reads its own stream and
 * hands what it read here; what is handed in while a write is in flight goes into the next one.
 * One transaction per round for every partition a worker owns, instead of one per partition: with
 * 16 partitions and one worker, per-partition commits doubled the worker's and Postgres' CPU per
 * message and halved the most a deployment sustained.
 *
 * Order: a partition hands in its next entries only after the last ones were written and
 * acknowledged, so each partition's entries are written in stream order; entries of different
 * partitions belong to different conversations, and the per-user locks of persistBatch keep each
 * user's counts and announcements in commit order whatever the batches hold.
 */
export class BatchWriter {
  private readonly queue: Submission[] = [];
  /** Writes in flight (gathering included), with when each started. */
  private readonly writes = new Set<{ startedAt: number }>();
  /**
   * Numbers this writer's batches in its logs. Their first and last stream ids do not identify
   * them: each partition is a stream of its own, and two partitions can hand out the same id.
   */
  private batchSeq = 0;
  private slowTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly publisher: Publisher,
    private readonly pool: PoolHolder,
    private readonly names: RedisNames,
    private readonly options: WriterOptions,
    private readonly log: Logger,
    private readonly metrics: WorkerMetrics,
  ) {}

  /**
   * Writes `entries` (one partition's, in stream order) with whatever else is handed in meanwhile,
   * publishes their notifications, and resolves true once committed; false when every consumer
   * whose entries were in that write stopped before it succeeded (the entries stay pending and the
   * partition's next owner writes them; the write is idempotent).
   */
  write(entries: ReceivedEntry[], deadLetters: DeadLetters, abandoned: () => boolean): Promise<boolean> {
    return new Promise((resolve) => {
      this.queue.push({ entries, deadLetters, abandoned, arrivedAt: Date.now(), resolve });
      this.pump();
    });
  }

  private queued(): number {
    let n = 0;
    for (const s of this.queue) n += s.entries.length;
    return n;
  }

  /** Starts a write for what is queued: when none is in flight, or when every one in flight is slow. */
  private pump(): void {
    if (this.queue.length === 0) return;
    const now = Date.now();
    let youngest = 0;
    for (const w of this.writes) youngest = Math.max(youngest, w.startedAt);
    if (this.writes.size === 0 || (this.writes.size < this.options.dbPoolSize && now - youngest >= SLOW_WRITE_MS)) {
      void this.writeOne();
      return;
    }
    if (this.writes.size < this.options.dbPoolSize && this.slowTimer === null) {
      this.slowTimer = setTimeout(() => {
        this.slowTimer = null;
        this.pump();
      }, youngest + SLOW_WRITE_MS - now);
      this.slowTimer.unref();
    }
  }

  private async writeOne(): Promise<void> {
    const write = { startedAt: Date.now() };
    this.writes.add(write);
    try {
      // A short batch costs a whole transaction: at a steady trickle, the oldest entries wait a few
      // ms (persistence lag, not delivery latency) for the other partitions' entries. Under load the
      // writes are back to back and each takes what arrived during the one before.
      const first = this.queue[0];
      const wait = first ? first.arrivedAt + this.options.batchWaitMs - Date.now() : 0;
      if (wait > 0 && this.queued() < this.options.batchSize) await sleep(wait);
      write.startedAt = Date.now();
      const taken: Submission[] = [];
      let size = 0;
      while (this.queue.length > 0 && (taken.length === 0 || size + this.queue[0]!.entries.length <= this.options.batchSize)) {
        const s = this.queue.shift()!;
        taken.push(s);
        size += s.entries.length;
      }
      if (taken.length === 0) return;
      let written = false;
      try {
        written = await this.handle(taken);
      } catch (err) {
        // handle() retries everything transient itself; this is a bug, and the entries stay pending.
        this.log.error({ err }, "batch write failed unexpectedly");
      }
      for (const s of taken) s.resolve(written);
    } finally {
      this.writes.delete(write);
      this.pump();
    }
  }

  /**
   * Writes the taken entries, in user-disjoint parts at once when they fill a batch, then what could
   * not be split off. False when they were given up (every consumer concerned stopped).
   */
  private async handle(taken: Submission[]): Promise<boolean> {
    const entries: ReceivedEntry[] = [];
    const origin = new Map<ReceivedEntry, Submission>();
    for (const s of taken) {
      for (const e of s.entries) {
        entries.push(e);
        origin.set(e, s);
      }
    }
    // A consumer that stops (its lease lost, the worker stopping) is let go at the next failed
    // attempt, without waiting for the others; its entries stay pending for the partition's next
    // owner, and writing them here too is harmless (idempotent; each message is announced by the
    // write that inserted it). The write is given up once nobody waits for it.
    const givenUp = () => {
      for (const s of taken) if (s.abandoned()) s.resolve(false);
      return taken.every((s) => s.abandoned());
    };
    // Only a full batch is split: the streams hold more, a backlog (after an outage, or above what
    // one connection writes), and Postgres working on two cores drains it sooner. Below that, each
    // part's own round trip, commit and publish cost more than they save: measured at 10,000 msg/s,
    // splitting batches of 100 or more raised delivery p99 from 20-26 to 38-52 ms.
    if (this.options.parallelBatches > 1 && entries.length >= this.options.batchSize) {
      const { groups, rest } = splitByUsers(entries, this.options.parallelBatches);
      if (groups.length > 1) {
        const done = await Promise.all(groups.map((group) => this.handleOne(group, origin, givenUp)));
        // A part left unwritten must not be overtaken by later entries of its users. The rest is
        // written whole, not split again: at most parts + 1 writes per round.
        if (!done.every(Boolean)) return false;
        return rest.length === 0 || (await this.handleOne(rest, origin, givenUp));
      }
    }
    return this.handleOne(entries, origin, givenUp);
  }

  /**
   * Writes and publishes one batch, retrying transient failures until it is done (true) or given
   * up (false).
   */
  private async handleOne(entries: ReceivedEntry[], origin: ReadonlyMap<ReceivedEntry, Submission>, givenUp: () => boolean): Promise<boolean> {
    const startedAt = process.hrtime.bigint();
    const batch = prepareBatch(entries, this.names);
    const first = entries[0]?.streamId;
    const last = entries.at(-1)?.streamId;
    const batchNo = ++this.batchSeq;
    let backoff = 250;
    for (let attempt = 1; ; attempt++) {
      // The pool of this attempt: parts written at once may fail together, and only the first of
      // them replaces it.
      const db = this.pool.current;
      try {
        if (batch.poison.length > 0) await this.deadLetter(batch.poison, origin, "undecodable stream entry");
        batch.poison = [];
        const outcome = await this.persist(batch, db, entries, origin, givenUp);
        this.metrics.batchSize.observe(entries.length);
        this.metrics.batchDuration.observe(Number(process.hrtime.bigint() - startedAt) / 1e9);
        this.metrics.messagesPersisted.inc(outcome.inserted.size);
        this.metrics.readsApplied.inc(batch.reads.length);
        this.log.debug({ batch: batchNo, entries: entries.length, first, last, inserted: outcome.inserted.size, attempt }, "batch persisted");
        return true;
      } catch (err) {
        this.metrics.writeErrors.inc();
        const poolBroken = err instanceof ReserveTimeoutError || err instanceof BatchStalledError || err instanceof ConnectionLostError;
        if (poolBroken) this.pool.replace(db, err);
        this.log.warn({ err, batch: batchNo, entries: entries.length, first, last, attempt, retryInMs: backoff }, "batch failed, will retry");
        // Left pending: the partition's next owner claims it after claimIdleMs.
        if (givenUp()) return false;
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
  private publishNotifications(batch: PreparedBatch, givenUp: () => boolean): (outcome: BatchOutcome) => Promise<void> {
    return async (outcome) => {
      const { publishes, notifications } = notificationsFor(batch, outcome, this.names, this.options.consumerName);
      if (publishes.length === 0) return;
      for (let attempt = 1; ; attempt++) {
        try {
          await this.publisher.publishAll(publishes);
          break;
        } catch (err) {
          if (attempt >= 5 || givenUp()) {
            this.log.error({ err, notifications, envelopes: publishes.length }, "notifications not published after commit");
            return;
          }
        }
        await sleep(100 * attempt);
      }
      this.metrics.notificationsPublished.inc(notifications);
    };
  }

  /** One transaction for the batch; on a data error, entry by entry so one bad entry cannot block the rest. */
  private async persist(
    batch: PreparedBatch,
    db: DbClient,
    entries: readonly ReceivedEntry[],
    origin: ReadonlyMap<ReceivedEntry, Submission>,
    givenUp: () => boolean,
  ): Promise<BatchOutcome> {
    try {
      return await persistBatch(db, batch.messages, batch.reads, this.publishNotifications(batch, givenUp), this.options.stallTimeoutMs);
    } catch (err) {
      if (!isPermanentDbError(err)) throw err;
      this.log.warn({ err }, "batch has invalid data; writing entries one by one");
    }
    const partitionOf = new Map<string, DeadLetters>();
    for (const e of entries) if (e.entry?.kind === "message") partitionOf.set(e.entry.id, origin.get(e)!.deadLetters);
    const merged: BatchOutcome = { inserted: new Set(), pairUnread: new Map(), totalUnread: new Map(), lastRead: new Map() };
    const kept: PreparedBatch["messages"] = [];
    const singles: PreparedBatch[] = [
      ...batch.messages.map((m) => ({ messages: [m], reads: [], poison: [] })),
      ...(batch.reads.length > 0 ? [{ messages: [], reads: batch.reads, poison: [] }] : []),
    ];
    for (const single of singles) {
      try {
        const o = await persistBatch(db, single.messages, single.reads, this.publishNotifications(single, givenUp), this.options.stallTimeoutMs);
        for (const id of o.inserted) merged.inserted.add(id);
        kept.push(...single.messages);
      } catch (err) {
        const message = single.messages[0];
        if (!isPermanentDbError(err) || !message) throw err;
        this.metrics.deadLettered.inc();
        this.log.error({ err, id: message.id }, "message cannot be persisted; moved to the dead-letter stream");
        await partitionOf.get(message.id)!.deadLetter({ id: message.id, error: String((err as Error).message ?? err) });
      }
    }
    batch.messages = kept;
    return merged;
  }

  private async deadLetter(entries: ReceivedEntry[], origin: ReadonlyMap<ReceivedEntry, Submission>, reason: string): Promise<void> {
    for (const e of entries) {
      this.metrics.deadLettered.inc();
      this.log.error({ streamId: e.streamId, reason }, "poison stream entry; moved to the dead-letter stream");
      await origin.get(e)!.deadLetters.deadLetter({ streamId: e.streamId, raw: e.raw.slice(0, 65536), error: reason });
    }
  }
}
