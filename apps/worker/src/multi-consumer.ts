import type { LogPartition, MultiPartitionReader, ReceivedEntry } from "@chat/bus";
import type { Logger } from "@chat/log";
import type { BatchWriter } from "./batch-writer.js";
import { startTrimming, type ConsumerOptions } from "./consumer.js";

/**
 * How long a round waits for its writes before reading the partitions that are done: the same bound
 * after which the BatchWriter starts another write beside a held one (SLOW_WRITE_MS). A partition
 * whose write is held (a lock, a slow disk) is left out of the reads until it is written; the others
 * flow.
 */
const HELD_WRITE_MS = 1000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Member {
  partition: LogPartition;
  log: Logger;
  trimTimer: NodeJS.Timeout;
  /** Its last entries are being written and acknowledged: not read again until that is done. */
  busy: Promise<void> | null;
  needGroup: boolean;
  /** Just added: it may hold what its previous owner left pending, so it is claimed at once. */
  claimNow: boolean;
  /** Set while it is being given back: it is read no more, and this resolves once nothing of it is in hand. */
  leaving: (() => void) | null;
  failing: boolean;
}

/**
 * One loop over every partition a worker owns, for a log that reads many in one command (a single
 * Redis): read the new entries of all of them, hand them to the BatchWriter (one transaction), then
 * acknowledge them all in one round trip, and read again. Per round that is one read and one
 * acknowledgement whatever the number of partitions, where a loop per partition (StreamConsumer)
 * costs Redis a blocked reader, a wake-up and a reply per partition.
 *
 * The guarantees are StreamConsumer's: nothing is acknowledged before its commit; a partition's next
 * entries are read only after its last ones were written and acknowledged, so each partition is
 * written in stream order; what a killed worker held stays pending and is claimed by the partition's
 * next owner.
 */
export class MultiPartitionConsumer {
  private readonly members = new Map<number, Member>();
  /** Partitions in the read or claims in flight: a member among them is not let go until it returns. */
  private reading: ReadonlySet<number> = new Set();
  private nextClaim = 0;
  private stopping = false;
  private loop: Promise<void> | null = null;
  private wakeUp: (() => void) | null = null;
  /** A partition was added since the round in hand listed what to read. */
  private roundStale = false;
  /** A read that may block is in flight (one CLIENT UNBLOCK away from returning). */
  private blockingRead = false;
  private interruptScheduled = false;
  private ackQueue = new Map<number, readonly string[]>();
  private ackFlush: Promise<void> | null = null;

  constructor(
    private readonly reader: MultiPartitionReader,
    private readonly writer: BatchWriter,
    private readonly options: ConsumerOptions,
    private readonly log: Logger,
    /** Told whether a partition's stream fails to be read or acknowledged now (for /readyz and metrics). */
    private readonly failing: (partition: number, failing: boolean) => void,
  ) {}

  /** Starts reading the partition (at the next round when a read is in flight). */
  add(partition: LogPartition, log: Logger): void {
    const held = this.members.get(partition.index);
    if (held) {
      // Given back and acquired again before its entries in hand were done: keep reading it.
      if (held.leaving) {
        held.leaving();
        held.leaving = null;
        held.trimTimer = startTrimming(held.partition, this.options.trimIntervalMs, held.log);
      }
      return;
    }
    this.members.set(partition.index, {
      partition,
      log,
      trimTimer: startTrimming(partition, this.options.trimIntervalMs, log),
      busy: null,
      needGroup: true,
      claimNow: true,
      leaving: null,
      failing: false,
    });
    this.roundStale = true;
    this.loop ??= this.run();
    this.wake();
    this.interruptSoon();
  }

  /** Cuts short the blocking read in flight, once for all the partitions added or removed in this turn. */
  private interruptSoon(): void {
    if (this.interruptScheduled) return;
    this.interruptScheduled = true;
    setImmediate(() => {
      this.interruptScheduled = false;
      if (!this.blockingRead) return;
      this.reader.interrupt().catch((err: unknown) => this.log.warn({ err }, "could not cut the blocking read short; added partitions are read when it returns"));
    });
  }

  /** Stops reading the partition; resolves once its entries in hand are written and acknowledged (or given up). */
  remove(index: number): Promise<void> {
    const member = this.members.get(index);
    if (!member) return Promise.resolve();
    clearInterval(member.trimTimer);
    return new Promise((resolve) => {
      const earlier = member.leaving;
      member.leaving = () => {
        earlier?.();
        resolve();
      };
      this.settle(index);
      // In the read in flight: cut it short rather than wait out blockMs.
      if (this.reading.has(index)) this.interruptSoon();
    });
  }

  /** Gives every partition back as `remove` does, ends the loop and closes the reader. */
  async stop(): Promise<void> {
    const removed = Promise.all([...this.members.keys()].map((p) => this.remove(p)));
    this.stopping = true;
    await removed;
    this.wake();
    await this.loop;
    await this.reader.close();
  }

  private settle(index: number): void {
    const member = this.members.get(index);
    if (!member?.leaving || member.busy || this.reading.has(index)) return;
    this.members.delete(index);
    member.leaving();
  }

  private wake(): void {
    const wakeUp = this.wakeUp;
    this.wakeUp = null;
    wakeUp?.();
  }

  private markFailing(index: number, failing: boolean): void {
    const member = this.members.get(index);
    if (!member || member.failing === failing) return;
    member.failing = failing;
    this.failing(index, failing);
  }

  private async run(): Promise<void> {
    const { consumerName, batchSize, blockMs, claimIdleMs, claimIntervalMs } = this.options;
    let backoff = 0;
    while (!this.stopping) {
      const ready = [...this.members].filter(([, m]) => !m.busy && !m.leaving).map(([p]) => p);
      if (ready.length === 0) {
        // Until a partition is added or one's write is done (both wake the loop).
        await new Promise<void>((resolve) => (this.wakeUp = resolve));
        continue;
      }
      this.reading = new Set(ready);
      this.roundStale = false;
      let failed = false;
      try {
        for (const p of ready) {
          const member = this.members.get(p)!;
          if (!member.needGroup) continue;
          // The group is (re)created at start and whenever Redis says it is gone (a Redis restarted
          // without persistence comes back empty).
          await member.partition.ensureGroup();
          member.needGroup = false;
        }
        let got = new Map<number, ReceivedEntry[]>();
        const claimAll = Date.now() >= this.nextClaim;
        if (claimAll) this.nextClaim = Date.now() + claimIntervalMs;
        for (const p of ready) {
          const member = this.members.get(p)!;
          if (claimAll || member.claimNow) {
            member.claimNow = false;
            const claimed = await member.partition.claim(consumerName, claimIdleMs, batchSize);
            if (claimed.length === 0) continue;
            member.log.info({ count: claimed.length, first: claimed[0]?.streamId }, "claimed pending entries");
            got.set(p, claimed);
          }
        }
        // Claimed entries are written first; the others' new entries wait for the next round.
        if (got.size === 0) {
          // Partitions added meanwhile: list them too before waiting on the others.
          if (this.roundStale) continue;
          this.blockingRead = true;
          try {
            got = await this.reader.read(ready, consumerName, batchSize, Math.min(blockMs, Math.max(10, this.nextClaim - Date.now())));
          } finally {
            this.blockingRead = false;
          }
        }
        for (const p of ready) this.markFailing(p, false);
        backoff = 0;
        for (const [p, entries] of got) this.hand(p, entries);
      } catch (err) {
        if (err instanceof Error && err.message.includes("NOGROUP")) for (const p of ready) this.members.get(p)!.needGroup = true;
        for (const p of ready) this.markFailing(p, true);
        backoff = Math.min(backoff === 0 ? 250 : backoff * 2, 5000);
        this.log.warn({ err, partitions: ready, retryInMs: backoff }, "stream read failed");
        failed = true;
      } finally {
        this.reading = new Set();
        for (const p of ready) this.settle(p);
      }
      if (failed) await sleep(backoff);
      else await this.writesDone();
    }
  }

  /** Writes one partition's entries with the round's others, then acknowledges them with theirs. */
  private hand(index: number, entries: ReceivedEntry[]): void {
    const member = this.members.get(index)!;
    const done = async () => {
      if (!(await this.writer.write(entries, member.partition, () => member.leaving !== null))) return;
      try {
        await this.ack(index, entries.map((e) => e.streamId));
      } catch (err) {
        // They stay pending: claimed again after claimIdleMs and written again, which the
        // idempotent write makes harmless.
        this.markFailing(index, true);
        member.log.warn({ err, count: entries.length }, "stream acknowledgement failed");
      }
    };
    member.busy = done().finally(() => {
      member.busy = null;
      this.settle(index);
      this.wake();
    });
  }

  /** The writes of one transaction resolve together: their acknowledgements go out as one. */
  private ack(index: number, ids: readonly string[]): Promise<void> {
    this.ackQueue.set(index, ids);
    this.ackFlush ??= new Promise((resolve) => setImmediate(resolve)).then(() => {
      const acks = this.ackQueue;
      this.ackQueue = new Map();
      this.ackFlush = null;
      return this.reader.ack(acks);
    });
    return this.ackFlush;
  }

  /** Until every write in hand is done, or HELD_WRITE_MS: then the partitions that are done read on. */
  private async writesDone(): Promise<void> {
    const busy = [...this.members.values()].flatMap((m) => (m.busy ? [m.busy] : []));
    if (busy.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(busy), new Promise((resolve) => (timer = setTimeout(resolve, HELD_WRITE_MS)))]);
    clearTimeout(timer);
  }
}
