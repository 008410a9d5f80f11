import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll } from "vitest";
import { freshPrefix } from "./env.js";
import { spawnNode, startGateway, startWorker, type RunningProcess, type SpawnOptions } from "./processes.js";
import { atEnd, atFileEnd } from "./scope.js";

/** The engines the same code runs on: embedded, Redis + Postgres, and a Redis Cluster + Postgres. */
export type EngineKind = "embedded" | "redis" | "redis-cluster";

/** Set by vitest.config.ts after probing: "up" when Redis and Postgres answer, else why not. */
export const servicesUp = process.env["CHAT_TEST_SERVICES"] === "up";

/** The local Redis Cluster of this run (global-setup.ts), when it started. */
export const REDIS_CLUSTER_URL = process.env["CHAT_TEST_REDIS_CLUSTER_URL"] || null;

/** The engines this run can test: embedded always, Redis and Postgres when they answer, the cluster when it started. */
export const engines: EngineKind[] = servicesUp ? ["embedded", "redis", ...(REDIS_CLUSTER_URL ? (["redis-cluster"] as const) : [])] : ["embedded"];

/** The engines on Redis, for suites about Redis behaviour: the single instance, and the cluster when it started. */
export const redisEngines: ("redis" | "redis-cluster")[] = servicesUp ? ["redis", ...(REDIS_CLUSTER_URL ? (["redis-cluster"] as const) : [])] : [];

/** The environment that points a gateway or worker at an engine's Redis. */
export const redisEnv = (kind: "redis" | "redis-cluster"): Record<string, string> => (kind === "redis-cluster" ? { REDIS_URL: REDIS_CLUSTER_URL! } : {});

/** A running deployment of one engine, seen from outside: WebSocket and HTTP entry points. */
export interface EngineDeployment {
  readonly kind: EngineKind;
  /** Two entry points: two gateway processes on Redis; the one process, twice, embedded. */
  readonly nodes: readonly [string, string];
  /** HTTP base URL of each entry point. */
  readonly http: readonly [string, string];
  /**
   * Kills every process of the deployment with SIGKILL, then starts them again on the same data.
   * The entry points change (new ports): read `nodes` and `http` again afterwards.
   */
  crashAndRestart(): Promise<void>;
}

const wsOf = (port: number) => `ws://127.0.0.1:${port}`;
const httpOf = (port: number) => `http://127.0.0.1:${port}`;

/**
 * One deployment for every test of the enclosing describe block: started before its first test, stopped
 * when the file's tests are done. For tests that do not need a fresh deployment (unique users keep them
 * apart); a test may still crash and restart it.
 */
export function sharedEngine(kind: EngineKind, env: Record<string, string | undefined> = {}): () => EngineDeployment {
  let engine: EngineDeployment | null = null;
  beforeAll(async () => {
    engine = await startEngine(kind, env, "file");
  }, 60_000);
  return () => {
    if (!engine) throw new Error("sharedEngine: no deployment (use it inside the tests of the describe block that declared it)");
    return engine;
  };
}

/** Starts a deployment; every process is killed and its data removed when the test ends. */
export async function startEngine(kind: EngineKind, env: Record<string, string | undefined> = {}, lifetime: Lifetime = "test"): Promise<EngineDeployment> {
  return kind === "embedded" ? startEmbedded(env, lifetime) : startRedis(kind, { ...redisEnv(kind), ...env }, lifetime);
}

/** Whose end stops a deployment's processes, its restarts' included: the test's, or the file's. */
type Lifetime = NonNullable<SpawnOptions["lifetime"]>;

/**
 * A data directory for a single node, removed when the test (or file) ends: a copy of the run's migrated
 * one (global-setup.ts), what a new one would be minus the migrations, which cost a few seconds of CPU
 * each. The global setup's own start covers migrating an empty directory.
 */
export function embeddedDataDir(lifetime: Lifetime = "test"): string {
  const dataDir = mkdtempSync(join(tmpdir(), "chat-embedded-"));
  (lifetime === "file" ? atFileEnd : atEnd)(() => rmSync(dataDir, { recursive: true, force: true }));
  const template = process.env["CHAT_TEST_EMBEDDED_TEMPLATE"];
  if (template) cpSync(template, dataDir, { recursive: true });
  return dataDir;
}

async function startEmbedded(env: Record<string, string | undefined>, lifetime: Lifetime): Promise<EngineDeployment> {
  const dataDir = embeddedDataDir(lifetime);
  let proc: RunningProcess;
  let port = 0;
  const start = async () => {
    const p = await spawnNode("apps/single-node/dist/main.js", {
      env: {
        REDIS_URL: undefined,
        DATABASE_URL: undefined,
        CHAT_DATA_DIR: dataDir,
        PORT: "0",
        HOST: "127.0.0.1",
        CHAT_WORKER_HTTP_PORT: "0",
        CHAT_WORKER_HTTP_HOST: "127.0.0.1",
        ...env,
      },
      readyMessage: "started",
      timeoutMs: 30_000,
      lifetime,
    });
    proc = p;
    port = Number(new URL(String(p.ready["url"])).port);
  };
  await start();
  return {
    kind: "embedded",
    get nodes() {
      return [wsOf(port), wsOf(port)] as const;
    },
    get http() {
      return [httpOf(port), httpOf(port)] as const;
    },
    async crashAndRestart() {
      await proc.stop("SIGKILL");
      await start();
    },
  };
}

async function startRedis(kind: "redis" | "redis-cluster", env: Record<string, string | undefined>, lifetime: Lifetime): Promise<EngineDeployment> {
  const prefix = freshPrefix("engine");
  let processes: RunningProcess[] = [];
  const ports: [number, number] = [0, 0];
  const start = async () => {
    const [g1, g2] = await Promise.all([startGateway(prefix, env, lifetime), startGateway(prefix, env, lifetime)]);
    // The same worker name across crashAndRestart, as a Kubernetes pod keeps its name when its
    // container restarts: the restarted worker takes its own leases back at once instead of waiting
    // for them to expire (a new name waits out the lease TTL: worker-takeover.test.ts).
    const w = await startWorker(prefix, { CHAT_WORKER_NAME: `${prefix}worker`, ...env }, lifetime);
    ports[0] = g1.port;
    ports[1] = g2.port;
    processes = [g1, g2, w];
  };
  await start();
  return {
    kind,
    get nodes() {
      return [wsOf(ports[0]), wsOf(ports[1])] as const;
    },
    get http() {
      return [httpOf(ports[0]), httpOf(ports[1])] as const;
    },
    async crashAndRestart() {
      await Promise.all(processes.map((p) => p.stop("SIGKILL")));
      await start();
    },
  };
}
