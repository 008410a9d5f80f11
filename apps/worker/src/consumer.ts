import type { LogPartition, ReceivedEntry } from "@chat/bus";
import type { Logger } from "@chat/log";
import type { BatchWriter } from "./batch-writer.js";

export interface ConsumerOptions {
  consumerName: string;
  batchSize: number;
  blockMs: number;
  claimIdleMs: number;
  claimIntervalMs: number;
  trimIntervalMs: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One loop over one partition's consumer group: read (or claim) what is there, hand it to the
 * worker's BatchWriter (one transaction with the other partitions' entries, then notifications),
 * then acknowledge. Nothing is acknowledged before its commit, so a worker killed at any point
 * loses nothing: its pending entries are claimed by the partition's next owner after `claimIdleMs`,
 * and the write is idempotent on the message id.
 */
export class StreamConsumer {
  private stopping = false;
  private stopped: Promise<void> | null = null;
  private trimTimer: NodeJS.Timeout | null = null;
  constructor(
    private readonly stream: LogPartition,
    private readonly writer: BatchWriter,
    private readonly options: ConsumerOptions,
    private readonly log: Logger,
    /** Told whether the partition's stream fails to be read or acknowledged now (for /readyz and metrics). */
    private readonly failing: (failing: boolean) => void,
  ) {}

  start(): void {
    this.stopped = this.run();
    this.trimTimer = startTrimming(this.stream, this.options.trimIntervalMs, this.log);
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
          // No wait here for more entries: the writer lets a short batch gather, and what comes
          // in meanwhile is read in one go once this batch is written.
          entries = await this.stream.read(consumerName, batchSize, Math.min(blockMs, Math.max(10, nextClaim - Date.now())));
        }
        if (entries.length > 0 && (await this.writer.write(entries, this.stream, () => this.stopping))) {
          await this.stream.ack(entries.map((e) => e.streamId));
        }
        if (backoff > 0) this.failing(false);
        backoff = 0;
      } catch (err) {
        if (err instanceof Error && err.message.includes("NOGROUP")) needGroup = true;
        if (backoff === 0) this.failing(true);
        backoff = Math.min(backoff === 0 ? 250 : backoff * 2, 5000);
        // An acknowledgement that failed leaves its entries pending: claimed again after
        // claimIdleMs and written again, which the idempotent write makes harmless.
        this.log.warn({ err, retryInMs: backoff }, "stream read or acknowledgement failed");
        await sleep(backoff);
      }
    }
  }
}

/**
 * Trims the partition's acknowledged entries every intervalMs until the timer is cleared. On its own
 * timer, not in a read loop: a batch held up (a lock, Postgres down) must not keep the partition's
 * acknowledged entries in Redis, and no other worker trims a partition it does not own.
 */
export function startTrimming(stream: LogPartition, intervalMs: number, log: Logger): NodeJS.Timeout {
  let trimming = false;
  const timer = setInterval(() => {
    if (trimming) return;
    trimming = true;
    stream
      .trimAcknowledged()
      .then(
        (trimmed) => {
          if (trimmed > 0) log.debug({ trimmed }, "stream trimmed");
        },
        (err: unknown) => log.warn({ err }, "stream trim failed"),
      )
      .finally(() => (trimming = false));
  }, intervalMs);
  timer.unref();
  return timer;
}
