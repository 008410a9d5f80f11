import { randomBytes } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { migrationsFolder } from "@chat/db";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate } from "drizzle-orm/postgres-js/migrator";
import { Redis } from "ioredis";
import postgres from "postgres";
import { describe, expect, it, onTestFinished } from "vitest";
import { DATABASE_URL, embeddedDataDir, freePort, freshPrefix, runScript, spawnNode, startGateway, startWorker, testSql } from "./helpers/index.js";
import { runGateway } from "./helpers/run-gateway.js";

// Register the pool's teardown at file level (the first query happens inside a test).
testSql();

function expectOneLine(r: { code: number | null; stderr: string; stdout: string }, program: string, setting: string, exitCode?: number): void {
  expect(r.code, `still running at the timeout; stdout: ${r.stdout.slice(-400)}`).not.toBeNull();
  expect(r.code).not.toBe(0);
  if (exitCode !== undefined) expect(r.code).toBe(exitCode);
  const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(new RegExp(`^${program}: `));
  expect(lines[0]).not.toMatch(/^\{|"level"/);
  expect(lines[0]).toContain(setting);
}

/**
 * A database of its own on the test server, dropped when the test ends. `apply(n)` applies the first
 * n checked-in migrations with drizzle's migrator, as a version that shipped only those would have.
 */
async function scratchDatabase(): Promise<{ url: string; sql: postgres.Sql; create(): Promise<void>; apply(n: number): Promise<void> }> {
  const name = `chat_schema_${randomBytes(4).toString("hex")}`;
  const u = new URL(DATABASE_URL);
  u.pathname = `/${name}`;
  const url = u.toString();
  const admin = testSql();
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  onTestFinished(async () => {
    await sql.end({ timeout: 5 });
    await admin.unsafe(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  });
  return {
    url,
    sql,
    create: async () => void (await admin.unsafe(`CREATE DATABASE "${name}"`)),
    apply: async (n) => {
      const folder = mkdtempSync(join(tmpdir(), "chat-migrations-"));
      try {
        cpSync(migrationsFolder, folder, { recursive: true });
        const journalPath = join(folder, "meta", "_journal.json");
        const journal = JSON.parse(readFileSync(journalPath, "utf8")) as { entries: unknown[] };
        writeFileSync(journalPath, JSON.stringify({ ...journal, entries: journal.entries.slice(0, n) }));
        await migrate(drizzle(sql), { migrationsFolder: folder });
      } finally {
        rmSync(folder, { recursive: true, force: true });
      }
    },
  };
}

const KNOWN_MIGRATIONS = (JSON.parse(readFileSync(join(migrationsFolder, "meta", "_journal.json"), "utf8")) as { entries: { when: number }[] }).entries;

describe("start-up failures: one plain line on stderr naming the setting, exit non-zero", () => {
  const strong = "a-valid-secret-of-at-least-32-bytes-0123";

  it("gateway: configuration (exit 2), a secret shorter than 32 bytes in production, Redis unreachable", async () => {
    expectOneLine(await runGateway({ CHAT_JWT_SECRET: strong, PORT: "abc" }), "gateway", "PORT", 2);
    const short = await runGateway({ CHAT_JWT_SECRET: "short-secret" });
    expectOneLine(short, "gateway", "CHAT_JWT_SECRET", 2);
    expect(short.stderr).toContain("at least 32");
    expect(short.stderr).not.toContain("short-secret");
    expect(short.listened).toBe(false);
    // The development mode's own secret needs no length check; a short one is fine there for trying things.
    const dev = await startGateway(freshPrefix("dev-short"), { NODE_ENV: "development", CHAT_JWT_SECRET: "short-secret" });
    expect(dev.port).toBeGreaterThan(0);
    const deadRedis = `redis://127.0.0.1:${await freePort()}`;
    const redisDown = await runGateway({ CHAT_JWT_SECRET: strong, REDIS_URL: deadRedis });
    expectOneLine(redisDown, "gateway", "REDIS_URL", 1);
    // The socket's own error, not ioredis' "Connection is closed.".
    expect(redisDown.stderr).toContain(`(connect ECONNREFUSED ${deadRedis.slice("redis://".length)})`);
  });

  it("worker: configuration (exit 2) and its HTTP port in use", async () => {
    expectOneLine(await runScript("apps/worker/dist/main.js", [], { CHAT_WORKER_BATCH_SIZE: "0" }), "worker", "CHAT_WORKER_BATCH_SIZE", 2);
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    onTestFinished(() => void taken.close());
    const port = (taken.address() as AddressInfo).port;
    const r = await runScript("apps/worker/dist/main.js", [], { CHAT_WORKER_HTTP_PORT: String(port), CHAT_WORKER_HTTP_HOST: "127.0.0.1", CHAT_REDIS_PREFIX: freshPrefix("wport") });
    expectOneLine(r, "worker", "CHAT_WORKER_HTTP_PORT", 1);
    expect(r.stderr).toContain(`port ${port} is already in use`);
  });

  it("gateway and worker: Postgres unreachable (password left out), the worker's Redis unreachable", async () => {
    const deadPostgres = `postgres://postgres:hunter2@127.0.0.1:${await freePort()}/chat`;
    const WORKER = "apps/worker/dist/main.js";
    const workerEnv = { CHAT_WORKER_HTTP_PORT: "0", CHAT_WORKER_HTTP_HOST: "127.0.0.1", CHAT_REDIS_PREFIX: freshPrefix("wdown") };
    const [gateway, worker, workerRedis] = await Promise.all([
      runGateway({ CHAT_JWT_SECRET: strong, DATABASE_URL: deadPostgres }),
      runScript(WORKER, [], { ...workerEnv, DATABASE_URL: deadPostgres }),
      runScript(WORKER, [], { ...workerEnv, REDIS_URL: `redis://127.0.0.1:${await freePort()}` }),
    ]);
    for (const [r, program] of [
      [gateway, "gateway"],
      [worker, "worker"],
    ] as const) {
      expectOneLine(r, program, "DATABASE_URL", 1);
      expect(r.stderr).toContain("Postgres is not usable at postgres://postgres:***@127.0.0.1:");
      expect(r.stderr).not.toContain("hunter2");
    }
    expect(gateway.listened).toBe(false);
    expect(worker.stdout).not.toContain('"msg":"consuming"');
    expectOneLine(workerRedis, "worker", "REDIS_URL", 1);
    expect(workerRedis.stderr).toContain("Redis does not answer at redis://127.0.0.1:");
    expect(workerRedis.stdout).not.toContain('"msg":"consuming"');
  });

  it("gateway and worker: refuse a database that does not exist, is unmigrated or behind; start with a warning on one ahead", async () => {
    const db = await scratchDatabase();
    const WORKER = "apps/worker/dist/main.js";
    const both = () =>
      Promise.all([
        runGateway({ CHAT_JWT_SECRET: strong, DATABASE_URL: db.url }),
        runScript(WORKER, [], { DATABASE_URL: db.url, CHAT_WORKER_HTTP_PORT: "0", CHAT_WORKER_HTTP_HOST: "127.0.0.1", CHAT_REDIS_PREFIX: freshPrefix("wschema") }),
      ]);
    const expectRefused = (results: Awaited<ReturnType<typeof both>>, text: string) => {
      const [gateway, worker] = results;
      expectOneLine(gateway, "gateway", "DATABASE_URL", 1);
      expectOneLine(worker, "worker", "DATABASE_URL", 1);
      expect(gateway.stderr).toContain(text);
      expect(worker.stderr).toContain(text);
      expect(gateway.listened).toBe(false);
      expect(worker.stdout).not.toContain('"msg":"consuming"');
    };
    const known = KNOWN_MIGRATIONS.length;
    expect(known).toBeGreaterThan(2);

    expectRefused(await both(), `the database at ${db.url} does not exist: run npm run migrate`);
    await db.create();
    expectRefused(await both(), `the database schema at ${db.url} is behind this version (applied 0 of ${known} migrations): run npm run migrate (DATABASE_URL)`);
    await db.apply(known - 2);
    expectRefused(await both(), `is behind this version (applied ${known - 2} of ${known} migrations): run npm run migrate (DATABASE_URL)`);

    // A newer version (during its rollout) migrated it further: this version still starts, and says so.
    await db.apply(known);
    await db.sql`INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ('a newer version', ${KNOWN_MIGRATIONS.at(-1)!.when + 1000})`;
    const ahead = { DATABASE_URL: db.url };
    const prefix = freshPrefix("ahead");
    const [gateway, worker] = await Promise.all([startGateway(prefix, ahead), startWorker(prefix, ahead)]);
    for (const p of [gateway, worker]) {
      expect(p.logs).toContainEqual(expect.objectContaining({ level: "warn", state: "ahead", applied: known, known, newer: 1 }));
    }
  });

  it("migrate: Postgres unreachable", async () => {
    const r = await runScript("packages/db/dist/migrate-cli.js", [], { DATABASE_URL: `postgres://postgres:hunter2@127.0.0.1:${await freePort()}/chat` });
    expectOneLine(r, "migrate", "DATABASE_URL", 1);
    expect(r.stderr).toContain("Postgres");
    expect(r.stderr).not.toContain("hunter2");
  });

  it("start:cluster: Redis or Postgres unreachable (password left out)", async () => {
    const cluster = (env: Record<string, string>) => runScript("apps/local-cluster/dist/main.js", [], { NODE_ENV: "development", CHAT_WORKER_HTTP_PORT: "0", ...env }, 20_000);
    const redisPort = await freePort();
    const noRedis = await cluster({ REDIS_URL: `redis://127.0.0.1:${redisPort}` });
    expectOneLine(noRedis, "local-cluster", "REDIS_URL", 1);
    expect(noRedis.stderr).toContain(`Redis does not answer at redis://127.0.0.1:${redisPort} (connect ECONNREFUSED`);
    const noPostgres = await cluster({ DATABASE_URL: `postgres://postgres:hunter2@127.0.0.1:${await freePort()}/chat` });
    expectOneLine(noPostgres, "local-cluster", "DATABASE_URL", 1);
    expect(noPostgres.stderr).toContain("Postgres is not usable at");
    expect(noPostgres.stderr).not.toContain("hunter2");
  });

  it("token: a bad username or lifetime", async () => {
    expectOneLine(await runScript("apps/gateway/dist/token-cli.js", ["a b"]), "token", "username", 2);
    const r = await runScript("apps/gateway/dist/token-cli.js", ["alice", "1h"]);
    expectOneLine(r, "token", "seconds", 2);
    expect(r.stdout).toBe("");
  });

  it("npm start: Postgres or Redis unreachable, a port in use, a data directory in use; and no second port needed", async () => {
    const SINGLE = "apps/single-node/dist/main.js";
    const deadPort = String(await freePort());
    expectOneLine(
      await runScript(SINGLE, ["--development"], { DATABASE_URL: `postgres://postgres@127.0.0.1:${deadPort}/chat`, PORT: "0", CHAT_REDIS_PREFIX: freshPrefix("sn") }, 20_000),
      "single-node",
      "DATABASE_URL",
      1,
    );
    expectOneLine(
      await runScript(SINGLE, ["--development"], { REDIS_URL: `redis://127.0.0.1:${deadPort}`, PORT: "0", CHAT_REDIS_PREFIX: freshPrefix("sn") }, 20_000),
      "single-node",
      "REDIS_URL",
      1,
    );
    const dataDir = embeddedDataDir();
    const embedded = { REDIS_URL: undefined, DATABASE_URL: undefined, CHAT_DATA_DIR: dataDir, NODE_ENV: "development", CHAT_JWT_SECRET: undefined };
    // No CHAT_WORKER_HTTP_PORT: the worker's metrics take a free port, not 9100.
    const first = await spawnNode(SINGLE, { env: { ...embedded, PORT: "0" }, readyMessage: "started", timeoutMs: 60_000 });
    expect(first.ready["workerHttpPort"]).not.toBe(9100);
    expect(Number(first.ready["workerHttpPort"])).toBeGreaterThan(0);
    const port = new URL(String(first.ready["url"])).port;
    const otherDir = embeddedDataDir();
    expectOneLine(await runScript(SINGLE, [], { ...embedded, CHAT_DATA_DIR: otherDir, PORT: port }, 30_000), "single-node", "PORT", 1);
    const again = await runScript(SINGLE, [], { ...embedded, PORT: "0" }, 30_000);
    expectOneLine(again, "single-node", "CHAT_DATA_DIR", 1);
    expect(again.stderr).toContain("in use");
  }, 60_000); // four single-node starts, one after another
});
