import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { Histogram, type HistogramJson, type HistogramSummary } from "./histogram.js";
import { addCounts, emptyCounts, type DeliveryCounts } from "./sequence-tracker.js";
import { LoadShard, type ShardOptions, type ShardResult } from "./shard.js";

export interface LoadOptions extends Omit<ShardOptions, "firstPair" | "pairCount"> {
  /** User pairs; each pair's two users sit on different nodes and send to each other. */
  pairs: number;
  /** Generator threads; pairs (sender and recipient together, so one clock times both) are split among them. */
  threads: number;
  /**
   * `connected`: every socket is ready, nothing sent yet (awaited). `scheduleStart`: the first
   * send is due. `drained`: every shard has its stragglers, the sockets are still open (awaited).
   * Between the last two lies the caller's measurement window.
   */
  hooks?: { connected?(): Promise<void>; scheduleStart?(): void; drained?(): void | Promise<void> };
}

/** A load run's figures. Latencies in milliseconds. */
export interface LoadResult {
  protocol: string;
  pairs: number;
  threads: number;
  /** The schedule's rate (messages per second, all senders). */
  offeredRate: number;
  /** Messages actually sent per second over the timed window. */
  achievedRate: number;
  durationMs: number;
  warmupMs: number;
  delivery: DeliveryCounts & { lossPct: number };
  refused: number;
  acks: number;
  unexpectedCloses: number;
  unmatchedFrames: number;
  latencyMs: HistogramSummary;
  latencyFromSendMs: HistogramSummary;
  sendLagMs: HistogramSummary;
  ackLatencyMs: HistogramSummary;
  /** Absent when the protocol has no notifications or they were not asked for. */
  notifications?: { expected: number; received: number; latencyMs: HistogramSummary; persistLagMs: HistogramSummary };
  generator: {
    /** CPU time of the whole generator process over the schedule, in ms. */
    cpuMs: number;
    wallMs: number;
    /** cpuMs / wallMs: 1 is one core fully busy. */
    coreShare: number;
    /** coreShare / cores of the machine. */
    boxShare: number;
    /** Busiest generator thread's event-loop utilization (0..1). */
    maxEventLoopUtilization: number;
    /** True when a generator thread was busy ≥ 90 % of the time: the figures measure the generator, not the servers. */
    saturated: boolean;
  };
  connectMs: number;
  /** The delivery latency histogram (µs buckets), for re-analysis. */
  latencyHistogram: HistogramJson;
}

type WorkerMessage =
  | { type: "connected" }
  | { type: "schedule-done" }
  | { type: "result"; result: ShardResult }
  | { type: "closed" }
  | { type: "error"; message: string };

/** A shard as runLoad drives it, inline or on a thread. */
interface ShardHandle {
  connected: Promise<void>;
  scheduleDone: Promise<void>;
  /** After the schedule and the stragglers; the sockets are still open. */
  result: Promise<ShardResult>;
  start(atEpochMs: number): void;
  /** Closes the sockets (and ends the thread). */
  close(): Promise<void>;
}

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A rejection nobody awaits yet (one shard fails while others connect) must not crash the process.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

function inlineShard(options: ShardOptions): ShardHandle {
  const shard = new LoadShard(options);
  const startAt = deferred<number>();
  const done = deferred<void>();
  const connected = shard.connect();
  connected.catch(() => undefined);
  const result = connected.then(() => startAt.promise).then((at) => shard.run(at, () => done.resolve()));
  result.catch(() => undefined);
  return { connected, scheduleDone: done.promise, result, start: startAt.resolve, close: () => shard.close() };
}

function threadShard(options: ShardOptions): ShardHandle {
  const worker = new Worker(new URL("./shard-worker.js", import.meta.url), { workerData: options });
  const connected = deferred<void>();
  const scheduleDone = deferred<void>();
  const result = deferred<ShardResult>();
  const closed = deferred<void>();
  const failAll = (e: Error) => [connected, scheduleDone, result, closed].forEach((d) => d.reject(e));
  worker.on("message", (m: WorkerMessage) => {
    if (m.type === "connected") connected.resolve();
    else if (m.type === "schedule-done") scheduleDone.resolve();
    else if (m.type === "result") result.resolve(m.result);
    else if (m.type === "closed") closed.resolve();
    else failAll(new Error(m.message));
  });
  worker.on("error", failAll);
  worker.on("exit", (code) => {
    closed.resolve();
    failAll(new Error(`generator thread exited (${code}) early`));
  });
  return {
    connected: connected.promise,
    scheduleDone: scheduleDone.promise,
    result: result.promise,
    start: (at) => worker.postMessage({ type: "start", at }),
    close: async () => {
      worker.postMessage({ type: "close" });
      const timer = setTimeout(() => void worker.terminate(), 15000);
      await closed.promise.catch(() => undefined);
      clearTimeout(timer);
    },
  };
}

const merged = (results: ShardResult[], pick: (h: ShardResult["histograms"]) => HistogramJson): Histogram =>
  results.reduce((acc, r) => acc.merge(Histogram.fromJSON(pick(r.histograms))), new Histogram());

/**
 * Runs an open-loop load: connects every pair (on `threads` generator threads; 1 runs inline),
 * starts all shards at one instant, sends the schedule, waits for stragglers, and merges the
 * shards' figures. Rejects when a socket cannot be opened.
 */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const threads = Math.max(1, Math.min(options.threads, options.pairs));
  const shards: ShardHandle[] = [];
  let firstPair = 0;
  for (let t = 0; t < threads; t++) {
    const pairCount = Math.floor(options.pairs / threads) + (t < options.pairs % threads ? 1 : 0);
    const { pairs: _pairs, threads: _threads, hooks: _hooks, ...common } = options;
    const shardOptions: ShardOptions = { ...common, firstPair, pairCount, rate: (options.rate * pairCount) / options.pairs };
    shards.push(threads === 1 ? inlineShard(shardOptions) : threadShard(shardOptions));
    firstPair += pairCount;
  }
  let results: ShardResult[];
  let cpu: NodeJS.CpuUsage;
  let wallMs: number;
  try {
    await Promise.all(shards.map((s) => s.connected));
    await options.hooks?.connected?.();
    const startAt = Date.now() + 250;
    for (const s of shards) s.start(startAt);
    await new Promise((r) => setTimeout(r, Math.max(0, startAt - Date.now())));
    options.hooks?.scheduleStart?.();
    const cpu0 = process.cpuUsage();
    const wall0 = performance.now();
    await Promise.all(shards.map((s) => s.scheduleDone));
    cpu = process.cpuUsage(cpu0);
    wallMs = performance.now() - wall0;
    results = await Promise.all(shards.map((s) => s.result));
    await options.hooks?.drained?.();
  } finally {
    await Promise.allSettled(shards.map((s) => s.close()));
  }
  const connectMs = Math.max(...results.map((r) => r.connectMs));

  const counts = results.reduce((acc, r) => addCounts(acc, r.counts), emptyCounts());
  const sum = (f: (r: ShardResult) => number) => results.reduce((a, r) => a + f(r), 0);
  const latency = merged(results, (h) => h.latency);
  const cpuMs = (cpu.user + cpu.system) / 1000;
  const coreShare = wallMs > 0 ? cpuMs / wallMs : 0;
  const maxElu = Math.max(...results.map((r) => r.eventLoopUtilization));
  const timedWindowMs = Math.max(...results.map((r) => r.timedWindowMs));
  const notifying = sum((r) => r.notificationsExpected) > 0;
  const result: LoadResult = {
    protocol: options.protocol,
    pairs: options.pairs,
    threads,
    offeredRate: options.rate,
    achievedRate: timedWindowMs > 0 ? (sum((r) => r.timedSent) / timedWindowMs) * 1000 : 0,
    durationMs: options.durationMs,
    warmupMs: options.warmupMs,
    delivery: { ...counts, lossPct: counts.sent > 0 ? (counts.lost / counts.sent) * 100 : 0 },
    refused: sum((r) => r.refused),
    acks: sum((r) => r.acks),
    unexpectedCloses: sum((r) => r.unexpectedCloses),
    unmatchedFrames: sum((r) => r.unmatchedFrames),
    latencyMs: latency.summary(1000),
    latencyFromSendMs: merged(results, (h) => h.latencyFromSend).summary(1000),
    sendLagMs: merged(results, (h) => h.sendLag).summary(1000),
    ackLatencyMs: merged(results, (h) => h.ack).summary(1000),
    generator: {
      cpuMs,
      wallMs,
      coreShare,
      boxShare: coreShare / availableParallelism(),
      maxEventLoopUtilization: maxElu,
      saturated: maxElu >= 0.9,
    },
    connectMs,
    latencyHistogram: latency.toJSON(),
  };
  if (notifying) {
    result.notifications = {
      expected: sum((r) => r.notificationsExpected),
      received: sum((r) => r.notificationsReceived),
      latencyMs: merged(results, (h) => h.notification).summary(1000),
      persistLagMs: merged(results, (h) => h.persistLag).summary(1000),
    };
  }
  return result;
}
