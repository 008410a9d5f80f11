import { Redis } from "ioredis";
import type { RedisNames } from "@chat/bus";
import postgres from "postgres";
import { parentPid } from "./proc.js";
import { spawnNode, type ManagedProcess } from "./processes.js";

/** Where the bench's servers live and how they authenticate. */
export interface BenchEnv {
  redisUrl: string;
  databaseUrl: string;
  /** HS256 secret the bench's gateways and baseline nodes accept. */
  secret: string;
  /** Uploads directory for the gateways (nothing is uploaded; keeps the checkout clean). */
  mediaDir: string;
  /** Cores of the machine, for CPU shares. */
  cores: number;
}

export type SystemName = "chat" | "socket.io";

/** Two nodes (and for us a worker) started for one scenario, stopped by pid. */
export interface Cluster {
  system: SystemName;
  /** Our cluster's CHAT_REDIS_PREFIX. */
  prefix?: string;
  /** Node base URLs, `ws://127.0.0.1:<port>`. */
  urls: string[];
  nodes: ManagedProcess[];
  worker?: ManagedProcess;
  stop(): Promise<void>;
}

export interface ChatClusterOptions {
  /** CHAT_REDIS_PREFIX of this cluster. */
  prefix: string;
  gateways?: number;
  /** Start the worker too (default true). */
  worker?: boolean;
  /** Extra node flags, e.g. --cpu-prof. */
  nodeArgs?: string[];
}

export function gatewayEnv(env: BenchEnv, prefix: string, nodeId: string): Record<string, string> {
  return {
    NODE_ENV: "production",
    PORT: "0",
    HOST: "127.0.0.1",
    REDIS_URL: env.redisUrl,
    DATABASE_URL: env.databaseUrl,
    CHAT_REDIS_PREFIX: prefix,
    CHAT_JWT_SECRET: env.secret,
    CHAT_NODE_ID: nodeId,
    CHAT_DRAIN_WINDOW_MS: "200",
    CHAT_MEDIA_DIR: env.mediaDir,
    LOG_LEVEL: "info",
  };
}

export function startWorker(env: BenchEnv, prefix: string, name: string, nodeArgs: string[] = []): Promise<ManagedProcess> {
  return spawnNode({
    name,
    script: "apps/worker/dist/main.js",
    nodeArgs,
    readyMessage: "consuming",
    env: {
      NODE_ENV: "production",
      REDIS_URL: env.redisUrl,
      DATABASE_URL: env.databaseUrl,
      CHAT_REDIS_PREFIX: prefix,
      CHAT_WORKER_NAME: name,
      CHAT_WORKER_HTTP_PORT: "0",
      CHAT_WORKER_HTTP_HOST: "127.0.0.1",
      LOG_LEVEL: "info",
    },
  });
}

async function stopAll(processes: (ManagedProcess | undefined)[]): Promise<void> {
  await Promise.allSettled(processes.map((p) => p?.stop()));
}

/** Our cluster: gateways on free ports and a worker, against the bench's Redis prefix and database. */
export async function startChatCluster(env: BenchEnv, o: ChatClusterOptions): Promise<Cluster> {
  const started = await Promise.allSettled([
    ...Array.from({ length: o.gateways ?? 2 }, (_, i) =>
      spawnNode({
        name: `gateway-${i + 1}`,
        script: "apps/gateway/dist/main.js",
        nodeArgs: o.nodeArgs,
        readyMessage: "listening",
        env: gatewayEnv(env, o.prefix, `bench-gateway-${i + 1}`),
      }),
    ),
    ...(o.worker === false ? [] : [startWorker(env, o.prefix, "bench-worker-1", o.nodeArgs)]),
  ]);
  const ok = started.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
  const failed = started.find((s) => s.status === "rejected");
  if (failed) {
    await stopAll(ok);
    throw (failed as PromiseRejectedResult).reason;
  }
  const nodes = ok.filter((p) => p.name.startsWith("gateway"));
  const worker = ok.find((p) => p.name.startsWith("bench-worker"));
  return {
    system: "chat",
    prefix: o.prefix,
    urls: nodes.map((n) => `ws://127.0.0.1:${Number(n.ready["port"])}`),
    nodes,
    worker,
    stop: () => stopAll(ok),
  };
}

/** The Socket.IO 4 + Redis adapter baseline: two nodes sharing the bench's Redis under their own key. */
export async function startBaselineCluster(env: BenchEnv, key: string, nodeArgs: string[] = []): Promise<Cluster> {
  const started = await Promise.allSettled(
    [1, 2].map((i) =>
      spawnNode({
        name: `socket.io-${i}`,
        script: "apps/bench/dist/baseline/socket-io-server.js",
        nodeArgs,
        readyMessage: "listening",
        env: { NODE_ENV: "production", PORT: "0", HOST: "127.0.0.1", REDIS_URL: env.redisUrl, CHAT_JWT_SECRET: env.secret, BASELINE_KEY: key },
      }),
    ),
  );
  const ok = started.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
  const failed = started.find((s) => s.status === "rejected");
  if (failed) {
    await stopAll(ok);
    throw (failed as PromiseRejectedResult).reason;
  }
  return {
    system: "socket.io",
    urls: ok.map((n) => `ws://127.0.0.1:${Number(n.ready["port"])}`),
    nodes: ok,
    stop: () => stopAll(ok),
  };
}

/** The shared services' processes whose CPU the bench counts: redis-server, and Postgres serving the bench database. */
export class ServicePids {
  private sql: postgres.Sql;
  private redis: Redis;

  constructor(env: BenchEnv) {
    this.sql = postgres(env.databaseUrl, { max: 1, onnotice: () => undefined });
    this.redis = new Redis(env.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  }

  /** The redis-server pid (INFO server process_id), if that process is on this machine. */
  async redisPids(): Promise<number[]> {
    if (this.redis.status === "wait") await this.redis.connect();
    const info = await this.redis.info("server");
    const pid = Number(/process_id:(\d+)/.exec(info)?.[1]);
    return Number.isInteger(pid) && parentPid(pid) !== undefined ? [pid] : [];
  }

  /**
   * Postgres processes that work for the bench: backends connected to its database, the
   * background processes (checkpointer, WAL writer...) and the postmaster. Backends of other
   * databases (another developer's tests) are left out.
   */
  async postgresPids(): Promise<number[]> {
    const rows = await this.sql<{ pid: number }[]>`
      SELECT pid FROM pg_stat_activity WHERE (datname = current_database() OR datname IS NULL) AND pid <> pg_backend_pid()`;
    const pids = rows.map((r) => r.pid).filter((p) => parentPid(p) !== undefined);
    const postmaster = pids.length > 0 ? parentPid(pids[0]!) : undefined;
    if (postmaster !== undefined && postmaster > 1) pids.push(postmaster);
    return pids;
  }

  /**
   * A consumer group's backlog: entries delivered but not acknowledged, and entries not yet
   * delivered (0 exactly when the group's last-delivered-id is the stream's last id). Both 0 when
   * the stream does not exist yet.
   */
  async groupState(stream: string, group: string): Promise<{ pending: number; lag: number; lastDelivered: string } | null> {
    if (this.redis.status === "wait") await this.redis.connect();
    let info: unknown[];
    let groups: unknown[][];
    try {
      [info, groups] = (await Promise.all([this.redis.xinfo("STREAM", stream), this.redis.xinfo("GROUPS", stream)])) as [unknown[], unknown[][]];
    } catch (err) {
      if ((err as Error).message.includes("no such key")) return { pending: 0, lag: 0, lastDelivered: "0-0" };
      throw err;
    }
    const field = (list: unknown[], name: string): unknown => {
      const i = list.findIndex((v, k) => k % 2 === 0 && v === name);
      return i >= 0 ? list[i + 1] : undefined;
    };
    const g = groups.find((entry) => field(entry, "name") === group);
    if (!g) return null;
    const lastDelivered = String(field(g, "last-delivered-id"));
    const lastGenerated = String(field(info, "last-generated-id"));
    const lag = lastDelivered === lastGenerated ? 0 : Number(field(g, "lag") ?? 1) || 1;
    return { pending: Number(field(g, "pending") ?? 0), lag, lastDelivered };
  }

  /** The consumer group's state summed over every partition of a deployment's log (null when a partition has no group yet). */
  async logState(names: RedisNames): Promise<{ pending: number; lag: number } | null> {
    const states = await Promise.all(Array.from({ length: names.partitions }, (_, p) => this.groupState(names.stream(p), names.group)));
    let pending = 0;
    let lag = 0;
    for (const state of states) {
      if (!state) return null;
      pending += state.pending;
      lag += state.lag;
    }
    return { pending, lag };
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.sql.end({ timeout: 2 }), this.redis.quit()]);
  }
}
