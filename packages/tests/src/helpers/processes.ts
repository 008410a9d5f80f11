import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { DATABASE_URL, freshPrefix, JWT_SECRET, REDIS_URL, REPO_ROOT } from "./env.js";
import { atEnd, atFileEnd } from "./scope.js";

export interface RunningProcess {
  readonly child: ChildProcess;
  /** Every JSON log line so far. */
  readonly logs: Record<string, unknown>[];
  /** Sends a signal and waits for the exit; resolves to the exit code (null when killed by signal). */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  readonly exited: Promise<number | null>;
}

export interface Gateway extends RunningProcess {
  port: number;
  url: string;
}

export interface SpawnOptions {
  env?: Record<string, string | undefined>;
  /** Resolve when a log line with this msg appears. */
  readyMessage: string;
  timeoutMs?: number;
  /** "test" (default): killed when the test ends, or the file's tests if started in a beforeAll; "file": when the file's tests are done. */
  lifetime?: "test" | "file";
}

const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of running) c.kill("SIGKILL");
});

/** Spawns a built script of the repository; env values set to undefined are left out of its environment. */
export function spawnNode(script: string, options: SpawnOptions): Promise<RunningProcess & { ready: Record<string, unknown> }> {
  const child = spawn(process.execPath, [script], {
    cwd: REPO_ROOT,
    env: {
      PATH: process.env["PATH"],
      REDIS_URL,
      DATABASE_URL,
      CHAT_JWT_SECRET: JWT_SECRET,
      LOG_LEVEL: "info",
      ...options.env,
    } as NodeJS.ProcessEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const logs: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  const exited = new Promise<number | null>((resolve) => {
    child.on("exit", (code) => {
      running.delete(child);
      resolve(code);
    });
  });
  const stop = async (signal: NodeJS.Signals = "SIGTERM") => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exited;
  };
  (options.lifetime === "file" ? atFileEnd : atEnd)(() => stop("SIGKILL"));
  child.stderr!.on("data", (d: Buffer) => stderr.push(d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${script} not ready after ${options.timeoutMs ?? 10000} ms; stderr: ${stderr.join("")}; logs: ${JSON.stringify(logs.slice(-5))}`));
    }, options.timeoutMs ?? 10000);
    createInterface({ input: child.stdout! }).on("line", (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        entry = { msg: "<non-json>", line };
      }
      logs.push(entry);
      if (entry["msg"] === options.readyMessage) {
        clearTimeout(timer);
        resolve({ child, logs, stop, exited, ready: entry });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${script} exited with ${code} before ready; stderr: ${stderr.join("")}; logs: ${JSON.stringify(logs)}`));
    });
  });
}

/** Starts a gateway process on a free port; it is killed when the test ends (or the file's tests, from a beforeAll). */
export async function startGateway(prefix: string, env: Record<string, string | undefined> = {}, lifetime: SpawnOptions["lifetime"] = "test"): Promise<Gateway> {
  const p = await spawnNode("apps/gateway/dist/main.js", {
    env: { PORT: "0", HOST: "127.0.0.1", CHAT_REDIS_PREFIX: prefix, ...env },
    readyMessage: "listening",
    lifetime,
  });
  const port = Number(p.ready["port"]);
  return Object.assign(p, { port, url: `ws://127.0.0.1:${port}` });
}

/** Starts a worker process; it is killed when the test ends. Its leases last 3 s: a restarted deployment writes again within about 4 s, not the 13 s of the default. */
export async function startWorker(prefix: string, env: Record<string, string | undefined> = {}, lifetime: SpawnOptions["lifetime"] = "test"): Promise<RunningProcess> {
  return spawnNode("apps/worker/dist/main.js", {
    lifetime,
    env: { CHAT_REDIS_PREFIX: prefix, CHAT_WORKER_HTTP_PORT: "0", CHAT_WORKER_HTTP_HOST: "127.0.0.1", CHAT_WORKER_CLAIM_IDLE_MS: "1000", CHAT_WORKER_CLAIM_INTERVAL_MS: "500", CHAT_WORKER_LEASE_TTL_MS: "3000", ...env },
    readyMessage: "consuming",
  });
}

/** Runs a script to completion and returns its exit code and output. */
export async function runScript(script: string, args: string[] = [], env: Record<string, string | undefined> = {}, timeoutMs = 15000) {
  const child = spawn(process.execPath, [script, ...args], {
    cwd: REPO_ROOT,
    env: { PATH: process.env["PATH"], REDIS_URL, DATABASE_URL, ...env } as NodeJS.ProcessEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [code] = (await once(child, "exit")) as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** A gateway and a worker on one Redis prefix, as sharedDeployment gives them. */
export interface SmallDeployment {
  gateway: Gateway;
  worker: RunningProcess;
  prefix: string;
}

/**
 * A gateway and a worker started on the first call and kept until the file's tests are done, for
 * tests that unique users keep apart and that need nothing fresh of the processes (no metrics, no
 * subscription counts, no faults). Starting one per test costs about a second each.
 */
export function sharedDeployment(label: string, gatewayEnv: Record<string, string | undefined> = {}): () => Promise<SmallDeployment> {
  let started: Promise<SmallDeployment> | null = null;
  return () =>
    (started ??= (async () => {
      const prefix = freshPrefix(label);
      const [gateway, worker] = await Promise.all([startGateway(prefix, gatewayEnv, "file"), startWorker(prefix, {}, "file")]);
      return { gateway, worker, prefix };
    })());
}

/** Like sharedDeployment, without a worker: a gateway for tests that never need anything persisted. */
export function sharedGateway(label: string, env: Record<string, string | undefined> = {}): () => Promise<Gateway> {
  let started: Promise<Gateway> | null = null;
  return () => (started ??= startGateway(freshPrefix(label), env, "file"));
}

/** Two gateways on one prefix (and a worker unless `worker` is false), shared like sharedDeployment. */
export function sharedPair(label: string, options: { env?: Record<string, string | undefined>; worker?: boolean } = {}): () => Promise<[Gateway, Gateway]> {
  let started: Promise<[Gateway, Gateway]> | null = null;
  return () =>
    (started ??= (async () => {
      const prefix = freshPrefix(label);
      const [g1, g2] = await Promise.all([startGateway(prefix, options.env, "file"), startGateway(prefix, options.env, "file")]);
      if (options.worker !== false) await startWorker(prefix, {}, "file");
      return [g1, g2] as [Gateway, Gateway];
    })());
}
