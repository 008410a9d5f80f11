import { spawn, type ChildProcess } from "node:child_process";
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
import {
  DATABASE_URL,
  connectReady,
  freePort,
  freshPrefix,
  refusedUpgrade,
  runScript,
  spawnNode,
  startGateway,
  startPrivateRedis,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
} from "./helpers/index.js";

// Register the pool's teardown at file level (the first query happens inside a test).
testSql();

const GATEWAY = "apps/gateway/dist/main.js";
const VALID_SECRET = "a-valid-secret-of-at-least-32-bytes-0123";

/** Runs the gateway to completion (it should refuse to start); a gateway that does start is killed after timeoutMs. */
async function runGateway(env: Record<string, string>, timeoutMs = 8000) {
  const r = await runScript(GATEWAY, [], { PORT: "0", HOST: "127.0.0.1", CHAT_REDIS_PREFIX: freshPrefix("startup"), ...env }, timeoutMs);
  const lines = r.stdout
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return { msg: "<non-json>", line: l };
      }
    });
  return { ...r, lines, listened: lines.some((l) => l["msg"] === "listening") };
}


async function readyz(port: number): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/readyz`);
  await res.arrayBuffer();
  return res.status;
}

describe("gateway start-up", () => {
  it.each([
    ["CHAT_JWT_SECRET empty", { CHAT_JWT_SECRET: "" }],
    ["CHAT_JWT_SECRET unset", {}],
    ["CHAT_JWT_SECRET empty and NODE_ENV=production", { CHAT_JWT_SECRET: "", NODE_ENV: "production" }],
    ["CHAT_JWT_SECRET empty and NODE_ENV=test", { CHAT_JWT_SECRET: "", NODE_ENV: "test" }],
  ])("exits non-zero without listening when %s", async (_what, env) => {
    const r = await runGateway(env);
    expect(r.listened, r.stdout).toBe(false);
    expect(r.code, `killed after the timeout, so it kept running; stdout: ${r.stdout}`).not.toBeNull();
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toContain("CHAT_JWT_SECRET");
  });

  it("starts in development mode without a secret and accepts a token from the token CLI", async () => {
    const user = uniqueUser("newcomer");
    const other = uniqueUser("friend");
    const cli = await runScript("apps/gateway/dist/token-cli.js", [user]);
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.stdout).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$/);
    const token = cli.stdout.trim();

    const g = await startGateway(freshPrefix("dev"), { NODE_ENV: "development", CHAT_JWT_SECRET: "" });
    const c = await connectReady(g.url, `/ws/${other}/`, token);
    expect(c.frames[0]).toEqual({ type: "online_user_list", users: [user] });
    c.send({ type: "chat_message", message: "hello", client_id: "dev-1" });
    expect(await c.next("chat_message")).toMatchObject({ from_user: { username: user }, client_id: "dev-1" });
    // The development secret is the only one it takes: a token with another secret is still refused.
    expect((await refusedUpgrade(`${g.url}/ws/${other}/?token=${await tokenFor(user)}`)).status).toBe(401);
    // And a gateway with a real secret refuses the development token.
    const prod = await startGateway(freshPrefix("prod"));
    expect((await refusedUpgrade(`${prod.url}/ws/${other}/?token=${token}`)).status).toBe(401);
  });

  it("token CLI refuses an invalid username without printing a token", async () => {
    const r = await runScript("apps/gateway/dist/token-cli.js", ["a b"]);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe("");
  });

  it.each([
    ["PORT=abc", { PORT: "abc" }, "PORT"],
    ["PORT=tcp://10.0.0.1:8000", { PORT: "tcp://10.0.0.1:8000" }, "PORT"],
    ["PORT=70000", { PORT: "70000" }, "PORT"],
    ["CHAT_MAX_FRAME_BYTES=10", { CHAT_MAX_FRAME_BYTES: "10" }, "CHAT_MAX_FRAME_BYTES"],
    ["CHAT_MAX_MESSAGE_LENGTH=ten", { CHAT_MAX_MESSAGE_LENGTH: "ten" }, "CHAT_MAX_MESSAGE_LENGTH"],
    ["REDIS_URL=http://127.0.0.1:6379", { REDIS_URL: "http://127.0.0.1:6379" }, "REDIS_URL"],
  ])("exits non-zero on invalid configuration %s, naming the variable", async (_what, env, variable) => {
    const r = await runGateway({ CHAT_JWT_SECRET: VALID_SECRET, ...env });
    expect(r.listened, r.stdout).toBe(false);
    expect(r.code, `killed after the timeout, so it kept running; stdout: ${r.stdout}`).not.toBeNull();
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toContain(variable);
  });

  it.each(["1", "true"])("exits non-zero instead of running on the JS fallback when UWS_USE_FALLBACK=%s", async (value) => {
    const r = await runGateway({ CHAT_JWT_SECRET: VALID_SECRET, UWS_USE_FALLBACK: value });
    expect(r.listened, r.stdout).toBe(false);
    expect(r.code, `killed after the timeout, so it kept running; stdout: ${r.stdout}`).not.toBeNull();
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toMatch(/uWebSockets/);
  });
});

describe("Redis outage", () => {
  it("refuses upgrades and messages while Redis is down, and recovers without a restart when it is back", async () => {
    const port = await freePort();
    let redis = await startPrivateRedis(port);
    const g = await startGateway(freshPrefix("outage"), { REDIS_URL: `redis://127.0.0.1:${port}` });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    expect(await readyz(g.port)).toBe(200);
    const a = await connectReady(g.url, `/ws/${bob}/`, ta);

    await redis.kill();
    await waitFor(async () => (await readyz(g.port)) === 503);
    const refused = await refusedUpgrade(`${g.url}/ws/${alice}/?token=${tb}`);
    expect(refused.status).toBe(503);
    expect(refused.body).toMatchObject({ error: expect.any(String), message: expect.any(String) });
    a.send({ type: "chat_message", message: "into the void", client_id: "lost-1" });
    expect(await a.next("error")).toEqual({ type: "error", code: "unavailable", message: expect.any(String), client_id: "lost-1" });
    expect(a.closeCode).toBeNull();

    redis = await startPrivateRedis(port);
    await waitFor(async () => (await readyz(g.port)) === 200, 15000);
    // The socket opened before the outage is subscribed again, and new sockets work.
    const b = await connectReady(g.url, `/ws/${alice}/`, tb);
    b.send({ type: "chat_message", message: "back", client_id: "b-1" });
    expect(await a.next("chat_message")).toMatchObject({ message: "back", from_user: { username: bob }, client_id: "b-1" });
    expect(await b.next("chat_message")).toMatchObject({ message: "back", client_id: "b-1" });
    a.send({ type: "chat_message", message: "welcome", client_id: "a-1" });
    expect(await b.next("chat_message")).toMatchObject({ message: "welcome", from_user: { username: alice }, client_id: "a-1" });
    // The sender's echo travels on its own socket: it may reach this process just after b's copy.
    expect(await a.next("chat_message")).toMatchObject({ message: "welcome", client_id: "a-1" });
    expect(a.ofType("chat_message").map((f) => f["message"])).toEqual(["back", "welcome"]);
    expect(a.schemaViolations).toEqual([]);
    expect(g.child.exitCode).toBeNull();
  });
});

describe("migrations", () => {
  it("creates a missing database and is idempotent when run twice", async () => {
    const name = `chat_mig_${randomBytes(4).toString("hex")}`;
    const url = new URL(DATABASE_URL);
    url.pathname = `/${name}`;
    const admin = testSql();
    onTestFinished(async () => {
      await admin.unsafe(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    });
    const exists = async () => (await admin`SELECT 1 FROM pg_database WHERE datname = ${name}`).length === 1;
    expect(await exists()).toBe(false);

    const first = await runScript("packages/db/dist/migrate-cli.js", [], { DATABASE_URL: url.toString() });
    expect(first.code, first.stderr).toBe(0);
    expect(await exists()).toBe(true);

    const db = postgres(url.toString(), { max: 1, onnotice: () => {} });
    onTestFinished(() => db.end({ timeout: 5 }));
    const snapshot = async () => {
      const tables = await db<{ t: string }[]>`
        SELECT table_name AS t FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1`;
      const [{ n }] = (await db`SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations`) as unknown as [{ n: number }];
      return { tables: tables.map((r) => r.t), migrations: n };
    };
    const before = await snapshot();
    expect(before.tables).toEqual(expect.arrayContaining(["messages", "conversation_members"]));
    expect(before.migrations).toBeGreaterThan(0);
    await db`INSERT INTO conversation_members (username, other_username, unread_count) VALUES ('keep', 'me', 3)`;

    const second = await runScript("packages/db/dist/migrate-cli.js", [], { DATABASE_URL: url.toString() });
    expect(second.code, second.stderr).toBe(0);
    expect(await snapshot()).toEqual(before);
    const kept = await db<{ unread_count: number }[]>`
      SELECT unread_count FROM conversation_members WHERE username = 'keep' AND other_username = 'me'`;
    expect(kept).toEqual([{ unread_count: 3 }]);
  });
});

describe("gateway shutdown", () => {
  it("exits 0 on SIGTERM within seconds even while Redis is unreachable", async () => {
    const port = await freePort();
    const redis = await startPrivateRedis(port);
    const g = await startGateway(freshPrefix("gwstop"), { REDIS_URL: `redis://127.0.0.1:${port}`, CHAT_DRAIN_WINDOW_MS: "200" });
    await redis.kill();
    await waitFor(async () => (await readyz(g.port)) === 503);
    const signalledAt = Date.now();
    // The subscriber connection queues commands while it reconnects: shutdown must not wait for a Redis
    // that is not coming back (Kubernetes would SIGKILL the pod after its grace period).
    const exit = await Promise.race([g.stop("SIGTERM"), new Promise((r) => setTimeout(() => r("still running after 15 s"), 15_000))]);
    expect(exit).toBe(0);
    expect(Date.now() - signalledAt).toBeLessThan(10_000);
  });
});

describe("worker shutdown", () => {
  it("exits 0 on SIGTERM within CHAT_WORKER_STOP_TIMEOUT_MS even while Redis is unreachable", async () => {
    // The worker refuses to start without Redis: Redis goes away once it runs, and every read waits on it.
    const port = await freePort();
    const redis = await startPrivateRedis(port);
    const worker = await startWorker(freshPrefix("stop"), { REDIS_URL: `redis://127.0.0.1:${port}`, CHAT_WORKER_STOP_TIMEOUT_MS: "1500" });
    await redis.kill();
    const signalledAt = Date.now();
    expect(await worker.stop("SIGTERM")).toBe(0);
    expect(Date.now() - signalledAt).toBeLessThan(10_000);
    expect(worker.logs.some((l) => l["msg"] === "batch in hand not finished in time; leaving it pending for another worker")).toBe(true);
  });
});

/** Expects one plain line on stderr (no JSON, no stack) that names `setting`, and a non-zero exit. */
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
    const dataDir = mkdtempSync(join(tmpdir(), "chat-startup-"));
    onTestFinished(() => rmSync(dataDir, { recursive: true, force: true }));
    const embedded = { REDIS_URL: undefined, DATABASE_URL: undefined, CHAT_DATA_DIR: dataDir, NODE_ENV: "development", CHAT_JWT_SECRET: undefined };
    // No CHAT_WORKER_HTTP_PORT: the worker's metrics take a free port, not 9100.
    const first = await spawnNode(SINGLE, { env: { ...embedded, PORT: "0" }, readyMessage: "started", timeoutMs: 60_000 });
    expect(first.ready["workerHttpPort"]).not.toBe(9100);
    expect(Number(first.ready["workerHttpPort"])).toBeGreaterThan(0);
    const port = new URL(String(first.ready["url"])).port;
    const otherDir = mkdtempSync(join(tmpdir(), "chat-startup-"));
    onTestFinished(() => rmSync(otherDir, { recursive: true, force: true }));
    expectOneLine(await runScript(SINGLE, [], { ...embedded, CHAT_DATA_DIR: otherDir, PORT: port }, 30_000), "single-node", "PORT", 1);
    const again = await runScript(SINGLE, [], { ...embedded, PORT: "0" }, 30_000);
    expectOneLine(again, "single-node", "CHAT_DATA_DIR", 1);
    expect(again.stderr).toContain("in use");
  });
});
