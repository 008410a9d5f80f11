import { performance } from "node:perf_hooks";
import { Histogram, type HistogramSummary } from "./histogram.js";
import { protocolNamed, type ProtocolName } from "./protocols/index.js";
import type { UserConnection } from "./protocols/protocol.js";
import { pool } from "./shard.js";
import { signToken } from "./token.js";

export interface OpenConnectionsOptions {
  protocol: ProtocolName;
  urls: string[];
  secret: string;
  /** Socket i is user `${userPrefix}${i}` talking to user i^1, on node i mod n (so partners sit on different nodes). */
  userPrefix: string;
  count: number;
  /** Upgrades in flight at once. */
  concurrency: number;
  timeoutMs: number;
}

export interface OpenConnectionsResult {
  opened: number;
  failed: number;
  /** The first few failure messages. */
  errors: string[];
  /** From the first upgrade request to the last socket ready. */
  elapsedMs: number;
  /** Sockets ready per second over elapsedMs. */
  perSecond: number;
  /** Upgrade request → ready (first event), per socket. */
  latencyMs: HistogramSummary;
  /** Generator CPU over elapsedMs, as a share of one core. */
  generatorCoreShare: number;
  /** Sockets the server closed while they were open. */
  unexpectedCloses(): number;
  /** Closes every socket opened; resolves when all are closed. */
  closeAll(concurrency?: number): Promise<void>;
}

/**
 * Opens `count` sockets (a chat socket each, no notification socket), `concurrency` at a time,
 * each timed from its upgrade request until ready (our protocol: the first event; Socket.IO: the
 * namespace CONNECT acknowledgement). The sockets stay open until closeAll.
 */
export async function openConnections(o: OpenConnectionsOptions): Promise<OpenConnectionsResult> {
  const protocol = protocolNamed(o.protocol);
  const connections: UserConnection[] = [];
  const latency = new Histogram();
  const errors: string[] = [];
  let failed = 0;
  let closes = 0;
  const noop = () => undefined;
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  const indexes = Array.from({ length: o.count }, (_, i) => i);
  await pool(indexes, o.concurrency, async (i) => {
    const t0 = performance.now();
    try {
      const name = `${o.userPrefix}${i}`;
      const c = await protocol.connectUser({
        url: o.urls[i % o.urls.length]!,
        username: name,
        partner: `${o.userPrefix}${i ^ 1}`,
        token: signToken(name, o.secret),
        text: "",
        notifications: false,
        timeoutMs: o.timeoutMs,
        events: { message: noop, notification: noop, refused: noop, closed: () => closes++ },
      });
      latency.record((performance.now() - t0) * 1000);
      connections.push(c);
    } catch (err) {
      failed++;
      if (errors.length < 5) errors.push((err as Error).message);
    }
  });
  const elapsedMs = performance.now() - started;
  const cpu = process.cpuUsage(cpu0);
  return {
    opened: connections.length,
    failed,
    errors,
    elapsedMs,
    perSecond: elapsedMs > 0 ? (connections.length / elapsedMs) * 1000 : 0,
    latencyMs: latency.summary(1000),
    generatorCoreShare: elapsedMs > 0 ? (cpu.user + cpu.system) / 1000 / elapsedMs : 0,
    unexpectedCloses: () => closes,
    closeAll: async (concurrency = 500) => {
      await pool(connections.splice(0), concurrency, (c) => c.close());
    },
  };
}
