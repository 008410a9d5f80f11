import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { RedisTargetError, describeRedisTarget, openRedis, parseRedisTarget, type RedisTarget } from "@chat/bus";
import { redactUrl, runMigrations } from "@chat/db";

// A newcomer's cluster: the same processes as production (two gateways, one worker), in
// development mode unless NODE_ENV says otherwise, so that `npm run token` tokens work without
// configuring a secret. An operator's NODE_ENV (production, with CHAT_JWT_SECRET) is kept.
const nodeEnv = process.env["NODE_ENV"] || "development";
const root = fileURLToPath(new URL("../../../", import.meta.url));
const redisUrl = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";
const databaseUrl = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/chat";
const basePort = Number(process.env["PORT"] ?? 8000);

/** One line a person can act on, like the other commands' (the processes it starts print their own). */
function fail(message: string): never {
  process.stderr.write(`local-cluster: ${message}\n`);
  process.exit(1);
}

let target: RedisTarget;
try {
  target = parseRedisTarget(redisUrl);
} catch (err) {
  fail(err instanceof RedisTargetError ? err.message : String(err));
}
let redisError: string | undefined;
// A single Redis or a Redis Cluster (redis+cluster://): the processes it starts read REDIS_URL the same way.
const probe = openRedis(target, { connectionName: "local-cluster-probe", lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
probe.on("error", (err: Error) => (redisError = err.message));
try {
  await probe.connect();
  await probe.ping();
  probe.disconnect();
} catch (err) {
  probe.disconnect();
  fail(`Redis does not answer at ${describeRedisTarget(target)} (${redisError ?? (err as Error).message}): start Redis (redis-server --daemonize yes --save "" --appendonly no) or set REDIS_URL`);
}
// Migrating first: the gateways and the worker refuse a schema behind this version.
try {
  await runMigrations(databaseUrl);
} catch (err) {
  const cause = (err as Error & { cause?: Error }).cause;
  fail(`Postgres is not usable at ${redactUrl(databaseUrl)} (${cause?.message ?? (err as Error).message}): start PostgreSQL or set DATABASE_URL`);
}

const children: ChildProcess[] = [];
let stopping = false;

function start(name: string, script: string, env: Record<string, string>, readyMsg: string): Promise<void> {
  const child = spawn(process.execPath, [script], {
    cwd: root,
    env: { ...process.env, NODE_ENV: nodeEnv, REDIS_URL: redisUrl, DATABASE_URL: databaseUrl, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  child.on("exit", (code, signal) => {
    if (stopping) return;
    process.stderr.write(`${name} exited (${code ?? signal}); stopping the cluster\n`);
    void stop(1);
  });
  return new Promise((resolve) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      let level = "info";
      let msg = line;
      try {
        const entry = JSON.parse(line) as { level?: string; msg?: string; [k: string]: unknown };
        level = entry.level ?? level;
        if (entry.msg === readyMsg) resolve();
        const { level: _l, time: _t, msg: m, component: _c, node: _n, consumer: _w, ...fields } = entry;
        msg = `${m ?? ""} ${Object.keys(fields).length ? JSON.stringify(fields) : ""}`;
      } catch {
        // not JSON: print as is
      }
      process.stdout.write(`${name.padEnd(9)} ${level.padEnd(5)} ${msg}\n`);
    });
  });
}

async function stop(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  for (const c of children) c.kill("SIGTERM");
  await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once("exit", r)) : null)));
  process.exit(code);
}
process.on("SIGINT", () => void stop(0));
process.on("SIGTERM", () => void stop(0));

await Promise.all([
  start("gateway-1", "apps/gateway/dist/main.js", { PORT: String(basePort), CHAT_NODE_ID: "gateway-1" }, "listening"),
  start("gateway-2", "apps/gateway/dist/main.js", { PORT: String(basePort + 1), CHAT_NODE_ID: "gateway-2" }, "listening"),
  // The worker's metrics stay on this machine unless CHAT_WORKER_HTTP_HOST says otherwise.
  start("worker", "apps/worker/dist/main.js", { CHAT_WORKER_NAME: "worker-1", CHAT_WORKER_HTTP_HOST: process.env["CHAT_WORKER_HTTP_HOST"] || "127.0.0.1" }, "consuming"),
]);

process.stdout.write(`
  Chat cluster running (NODE_ENV=${nodeEnv}, Ctrl-C stops it)
    gateways   ws://127.0.0.1:${basePort}   ws://127.0.0.1:${basePort + 1}
    worker     persisting to ${redactUrl(databaseUrl)}

  Get a token:       npm run -s token -- alice
  Chat with bob:     npx wscat -c "ws://127.0.0.1:${basePort}/ws/bob/?token=$(npm run -s token -- alice)"
  As bob, elsewhere: npx wscat -c "ws://127.0.0.1:${basePort + 1}/ws/alice/?token=$(npm run -s token -- bob)"
  Then send:         {"type":"chat_message","message":"hello"}

`);
