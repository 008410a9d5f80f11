import { openRedis, parseRedisTarget, type RedisClient, type RedisNames } from "@chat/bus";
import { startRedisCluster, type LocalRedisCluster } from "@chat/redis-cluster-harness";
import postgres from "postgres";
import { parentPid, type ProcessGroups } from "./proc.js";
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
  /** The local Redis Cluster the bench started for this cluster (absent: the shared Redis at REDIS_URL). */
  redisCluster?: BenchRedisCluster;
  stop(): Promise<void>;
}

/** A redis-server the bench started, whose CPU a load counts on its own. */
export interface RedisServer {
  /** Its process group in the CPU figures: `redis-1`, `redis-2`... */
  name: string;
  port: number;
  pid: number;
}

/** A local Redis Cluster of masters only, started for one bench cluster and stopped with it. */
export interface BenchRedisCluster {
  /** REDIS_URL of the gateways and the worker: redis+cluster://... */
  url: string;
  masters: RedisServer[];
}

export interface ChatClusterOptions {
  /** CHAT_REDIS_PREFIX of this cluster. */
  prefix: string;
  gateways?: number;
  /** Start the worker too (default true). */
  worker?: boolean;
  /** Extra node flags, e.g. --cpu-prof. */
  nodeArgs?: string[];
  /** Extra gateway settings (e.g. CHAT_GROUP_MAX_MEMBERS). */
  gatewaySettings?: Record<string, string>;
  /** REDIS_URL of the gateways and the worker (default: the bench's, env.redisUrl). */
  redisUrl?: string;
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
export async function startChatCluster(benchEnv: BenchEnv, o: ChatClusterOptions): Promise<Cluster> {
  const env = o.redisUrl ? { ...benchEnv, redisUrl: o.redisUrl } : benchEnv;
  const started = await Promise.allSettled([
    ...Array.from({ length: o.gateways ?? 2 }, (_, i) =>
      spawnNode({
        name: `gateway-${i + 1}`,
        script: "apps/gateway/dist/main.js",
        nodeArgs: o.nodeArgs,
        readyMessage: "listening",
        env: { ...gatewayEnv(env, o.prefix, `bench-gateway-${i + 1}`), ...o.gatewaySettings },
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

/**
 * Our cluster (two gateways and a worker) on a Redis Cluster of `masters` masters that it starts
 * itself on free loopback ports (@chat/redis-cluster-harness), instead of the shared Redis. No
 * replicas: they serve no load, and the figures are the masters' cost (a replica would add its own
 * process and the replication stream on its master). stop() stops the nodes, then kills every
 * redis-server by pid and removes their directory; the harness also kills them if the bench exits.
 */
export async function startChatOnRedisCluster(env: BenchEnv, o: ChatClusterOptions & { masters: number }): Promise<Cluster> {
  const redis: LocalRedisCluster = await startRedisCluster({ masters: o.masters, replicasPerMaster: 0 });
  try {
    const masters = (await redis.masters()).sort((a, b) => a.port - b.port).map((m, i) => ({ name: `redis-${i + 1}`, port: m.port, pid: m.pid }));
    const chat = await startChatCluster(env, { ...o, redisUrl: redis.url });
    return {
      ...chat,
      redisCluster: { url: redis.url, masters },
      stop: async () => {
        try {
          await chat.stop();
        } finally {
          await redis.stop();
        }
      },
    };
  } catch (err) {
    await redis.stop();
    throw err;
  }
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

/**
 * The services' processes whose CPU the bench counts: redis-server, and Postgres serving the bench
 * database; and the message log's backlog. On the shared Redis by default; on a local Redis Cluster
 * the bench started when given its servers (then env.redisUrl is that cluster's URL).
 */
export class ServicePids {
  private sql: postgres.Sql;
  private redis: RedisClient;
  private readonly redisServers: RedisServer[] | undefined;

  constructor(env: BenchEnv, redisServers?: RedisServer[]) {
    this.sql = postgres(env.databaseUrl, { max: 1, onnotice: () => undefined });
    this.redis = openRedis(parseRedisTarget(env.redisUrl), { connectionName: "bench", lazyConnect: true, maxRetriesPerRequest: 1 });
    // Errors reach the caller through the commands; a Cluster would throw an "error" nobody listens to.
    this.redis.on("error", () => undefined);
    this.redisServers = redisServers;
  }

  private async connected(): Promise<RedisClient> {
    if (this.redis.status === "wait") await this.redis.connect();
    return this.redis;
  }

  /** The redis-server pids: the servers given, or the shared one's (INFO server process_id) if that process is on this machine. */
  async redisPids(): Promise<number[]> {
    if (this.redisServers) return this.redisServers.map((s) => s.pid);
    await this.connected();
    const info = await this.redis.info("server");
    const pid = Number(/process_id:(\d+)/.exec(info)?.[1]);
    return Number.isInteger(pid) && parentPid(pid) !== undefined ? [pid] : [];
  }

  /** The redis-server process groups of a load's CPU figures: `redis` (the shared one), or one group per server given. */
  async redisGroups(): Promise<ProcessGroups> {
    if (this.redisServers) return Object.fromEntries(this.redisServers.map((s) => [s.name, [s.pid]]));
    return { redis: await this.redisPids() };
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
    await this.connected();
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
