import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { runMigrations } from "@chat/db";
import { DATABASE_URL, REPO_ROOT } from "./helpers/env.js";
import { missingClusterBinaries, startRedisCluster, type LocalRedisCluster } from "@chat/redis-cluster-harness";

/**
 * The suite runs against the built apps and, when Postgres answers (see vitest.config.ts), a migrated
 * database. It also makes one migrated embedded data directory that every embedded deployment of the
 * run starts from (a copy), as a Postgres template database would: migrating a new PGlite costs each
 * start about 3 s of CPU. Starting from an empty directory is still tested (single-node.test.ts).
 *
 * With Redis and Postgres up, it also starts a local Redis Cluster (3 masters, 3 replicas, on free
 * loopback ports) that the engine suites' third engine runs on (CHAT_TEST_REDIS_CLUSTER_URL); the
 * services reporter says when it could not.
 */
export default async function setup(): Promise<() => Promise<void>> {
  const template = mkdtempSync(join(tmpdir(), "chat-embedded-template-"));
  const servicesUp = process.env["CHAT_TEST_SERVICES"] === "up";
  const missing = missingClusterBinaries();
  let cluster: LocalRedisCluster | null = null;
  const startCluster = async () => {
    if (!servicesUp) return;
    if (missing.length > 0) {
      process.env["CHAT_TEST_REDIS_CLUSTER"] = `not on PATH: ${missing.join(", ")} (Debian: apt-get install redis-server redis-tools)`;
      return;
    }
    try {
      cluster = await startRedisCluster();
      process.env["CHAT_TEST_REDIS_CLUSTER_URL"] = cluster.url;
      process.env["CHAT_TEST_REDIS_CLUSTER"] = "up";
    } catch (err) {
      process.env["CHAT_TEST_REDIS_CLUSTER"] = `could not start: ${(err as Error).message.split("\n")[0]}`;
    }
  };
  await Promise.all([servicesUp ? runMigrations(DATABASE_URL) : undefined, migrateEmbedded(template), startCluster()]);
  process.env["CHAT_TEST_EMBEDDED_TEMPLATE"] = template;
  return async () => {
    rmSync(template, { recursive: true, force: true });
    await (cluster as LocalRedisCluster | null)?.stop();
  };
}

/** Starts the embedded single node on `dataDir` until it says it started, then stops it cleanly. */
async function migrateEmbedded(dataDir: string): Promise<void> {
  const child = spawn(process.execPath, ["apps/single-node/dist/main.js"], {
    cwd: REPO_ROOT,
    env: { PATH: process.env["PATH"], CHAT_DATA_DIR: dataDir, PORT: "0", HOST: "127.0.0.1", CHAT_WORKER_HTTP_PORT: "0", CHAT_JWT_SECRET: "template-only-secret-of-at-least-32-bytes" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = once(child, "exit");
  const started = new Promise<void>((resolve) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (line.includes('"msg":"started"')) resolve();
    });
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  await Promise.race([started, exited.then(() => Promise.reject(new Error(`the embedded template's single node exited before it started: ${stderr}`)))]);
  child.kill("SIGTERM");
  const [code] = (await exited) as [number | null];
  clearTimeout(timer);
  if (code !== 0) throw new Error(`the embedded template's single node exited with ${code} on SIGTERM: ${stderr}`);
}
