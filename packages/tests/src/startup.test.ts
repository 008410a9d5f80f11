import { randomBytes } from "node:crypto";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate } from "drizzle-orm/postgres-js/migrator";
import { Redis } from "ioredis";
import postgres from "postgres";
import { describe, expect, it, onTestFinished } from "vitest";
import { DATABASE_URL, connectReady, freePort, freshPrefix, refusedUpgrade, runScript, startGateway, startPrivateRedis, startWorker, testSql, tokenFor, uniqueUser, waitFor } from "./helpers/index.js";
import { VALID_SECRET, runGateway } from "./helpers/run-gateway.js";

// Register the pool's teardown at file level (the first query happens inside a test).
testSql();

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
