import { Session } from "node:inspector";
import { performance, type EventLoopUtilization } from "node:perf_hooks";
import { getHeapStatistics } from "node:v8";
import type { Logger } from "@chat/log";

export interface IdleHeapOptions {
  /** Growth of the heap's committed memory since the last full collection that makes an idle node collect, bytes. */
  growthBytes: number;
  /** How often the heap and the event loop are looked at, ms. */
  checkIntervalMs: number;
  /** Event-loop utilization (0–1) over one check interval below which the node counts as idle. */
  idleUtilization: number;
  /** Least time between two collections of ours, ms: bounds what they can cost a lightly loaded node. */
  minIntervalMs: number;
}

export const IDLE_HEAP_DEFAULTS: Omit<IdleHeapOptions, "growthBytes"> = {
  checkIntervalMs: 500,
  idleUtilization: 0.05,
  minIntervalMs: 30_000,
};

/**
 * Memory the heap holds from the system, bytes. Both generations count: a burst grows the young
 * generation's semispaces too, and V8 keeps them at that size while the node idles.
 */
function heapCommitted(): number {
  return getHeapStatistics().total_heap_size;
}

/**
 * Runs a full garbage collection when the node has gone idle after its heap grew.
 *
 * Why: each socket's set-up (token check, presence, subscription, greeting) leaves a few KB of
 * garbage that lives through a Redis round trip, long enough to be promoted out of the young
 * generation, and the burst grows the young generation's semispaces. V8 shrinks neither until
 * allocation pushes it to, and Node runs no idle-time collection, so a gateway that takes a burst of
 * connections (a rolling deploy makes every client reconnect) and then idles keeps it resident: about
 * 7 KB per socket, over twice what the sockets themselves hold. The collection happens only when the
 * event loop is nearly idle, so its pause (tens of ms for a heap of a few hundred MB) falls where no
 * traffic waits on it, and at most once per `minIntervalMs`.
 *
 * The collection goes through an in-process inspector session (`HeapProfiler.collectGarbage`, V8's
 * low-memory collection, which also returns the freed pages): no flag, no port.
 */
export class IdleHeapCollector {
  private timer: NodeJS.Timeout | null = null;
  /** Both set by start(). */
  private lastElu!: EventLoopUtilization;
  /** The heap's committed memory right after the last full collection (ours or V8's), bytes. */
  private floor = 0;
  private lastRunAt = -Infinity;
  private collecting = false;

  constructor(
    private readonly options: IdleHeapOptions,
    private readonly log: Logger,
    private readonly onCollected: (pauseSeconds: number) => void = () => {},
  ) {}

  start(): void {
    if (this.timer || this.options.growthBytes <= 0) return;
    this.lastElu = performance.eventLoopUtilization();
    this.floor = heapCommitted();
    this.timer = setInterval(() => this.check(), this.options.checkIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private check(): void {
    const now = performance.eventLoopUtilization();
    const utilization = performance.eventLoopUtilization(now, this.lastElu).utilization;
    this.lastElu = now;
    const used = heapCommitted();
    // V8 ran a full collection of its own since the last look.
    if (used < this.floor) this.floor = used;
    if (this.collecting || utilization >= this.options.idleUtilization) return;
    if (used - this.floor < this.options.growthBytes) return;
    if (performance.now() - this.lastRunAt < this.options.minIntervalMs) return;
    this.collect(used);
  }

  private collect(usedBefore: number): void {
    this.collecting = true;
    const startedAt = performance.now();
    const session = new Session();
    try {
      session.connect();
    } catch (err) {
      // The inspector refused the session: it will not change its mind, so stop looking.
      this.collecting = false;
      this.stop();
      this.log.warn({ err }, "idle heap collection unavailable: no inspector; turned off");
      return;
    }
    session.post("HeapProfiler.collectGarbage", (err) => {
      // Not from inside this callback: it runs under the heap profiler agent's lock, which
      // disconnecting takes again (a deadlock in Node 20).
      setImmediate(() => session.disconnect());
      this.collecting = false;
      const pauseMs = performance.now() - startedAt;
      this.lastRunAt = performance.now();
      const usedAfter = heapCommitted();
      this.floor = usedAfter;
      if (err) {
        this.log.warn({ err }, "idle heap collection failed");
        return;
      }
      this.onCollected(pauseMs / 1000);
      this.log.info(
        { heapBeforeMiB: mib(usedBefore), heapAfterMiB: mib(usedAfter), pauseMs: Math.round(pauseMs) },
        "idle heap collected",
      );
    });
  }
}

const mib = (bytes: number) => Math.round((bytes / 1048576) * 10) / 10;
