import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { describe, expect, it, onTestFinished } from "vitest";
import {
  DATABASE_URL,
  JWT_SECRET,
  REDIS_URL,
  REPO_ROOT,
  connectReady,
  freshPrefix,
  messagesBetween,
  refusedUpgrade,
  testSql,
  tokenFor,
  uniqueUser,
  unsignedToken,
  waitFor,
} from "./helpers/index.js";

testSql();

const DB_PASSWORD = "SeCr3tPw";
const OTHER_SECRET = "forger-secret-that-is-not-the-clusters-0001";

interface Captured {
  stdout: string[];
  stderr: string[];
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

/**
 * Runs an app with every byte of its stdout and stderr captured from the start (the shared helpers
 * keep only parsed lines), and resolves once a log line with `readyMsg` appeared.
 */
async function run(script: string, env: Record<string, string>, readyMsg: string): Promise<Captured & { ready: Record<string, unknown> }> {
  const child = spawn(process.execPath, [script], { cwd: REPO_ROOT, env: { PATH: process.env["PATH"], ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    return exited;
  };
  onTestFinished(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  });
  child.stderr.on("data", (d: Buffer) => stderr.push(d.toString()));
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${script} not ready; stdout ${stdout.join("\n")}; stderr ${stderr.join("")}`)), 15000);
    createInterface({ input: child.stdout }).on("line", (line) => {
      stdout.push(line);
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        if (entry["msg"] === readyMsg) {
          clearTimeout(timer);
          resolve(entry);
        }
      } catch {
        // checked below
      }
    });
    void exited.then((code) => reject(new Error(`${script} exited with ${code}; stderr ${stderr.join("")}`)));
  });
  return { stdout, stderr, exited, stop, ready };
}

describe("secrets in logs", () => {
  it("never logs the JWT secret, the database password or any token, at debug level, in gateway or worker; every stdout line is a JSON log", async () => {
    const url = new URL(DATABASE_URL);
    url.password = DB_PASSWORD;
    const prefix = freshPrefix("log-secrets");
    const env = { REDIS_URL, DATABASE_URL: url.toString(), CHAT_JWT_SECRET: JWT_SECRET, LOG_LEVEL: "debug", CHAT_REDIS_PREFIX: prefix };
    expect(env.DATABASE_URL).toContain(`:${DB_PASSWORD}@`);
    const [gateway, worker] = await Promise.all([
      run("apps/gateway/dist/main.js", { ...env, PORT: "0", HOST: "127.0.0.1", CHAT_DRAIN_WINDOW_MS: "0" }, "listening"),
      run("apps/worker/dist/main.js", { ...env, CHAT_WORKER_HTTP_PORT: "0", CHAT_WORKER_HTTP_HOST: "127.0.0.1" }, "consuming"),
    ]);
    const port = Number(gateway.ready["port"]);
    const ws = `ws://127.0.0.1:${port}`;
    const http = `http://127.0.0.1:${port}`;

    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const good = await tokenFor(alice);
    const goodBob = await tokenFor(bob);
    const bad = [
      await tokenFor(alice, { secret: OTHER_SECRET }),
      await tokenFor(alice, { expiresInSeconds: -60 }),
      await tokenFor(alice, { notBeforeSeconds: 3600 }),
      await tokenFor(alice, { alg: "HS512" }),
      await tokenFor("x'--"),
      unsignedToken(alice),
      `${good.slice(0, -4)}AAAA`,
    ];
    const tokens = [good, goodBob, ...bad];

    // Sockets, messages (persisted by the worker), reads, bad frames, a duplicate send.
    const a = await connectReady(ws, `/ws/${bob}/`, good);
    const b = await connectReady(ws, `/ws/${alice}/`, goodBob);
    const n = await connectReady(ws, "/ws/notifications/", goodBob);
    for (let i = 0; i < 3; i++) {
      a.send({ type: "chat_message", message: `hello ${i}`, client_id: `log-${i}` });
      await b.next("chat_message");
    }
    a.send({ type: "chat_message", message: "hello 0", client_id: "log-0" });
    await a.until((f) => f.filter((x) => x.type === "chat_message").length === 4, 5000, "duplicate echo");
    b.send({ type: "read_messages" });
    a.send("not json");
    await a.next("error");
    await n.until((f) => f.some((x) => x.type === "new_message_notification"), 10000, "notification");
    await waitFor(async () => expect(await messagesBetween(alice, bob)).toHaveLength(3), 15000);

    // Refused upgrades and HTTP requests, with tokens in the query and in the header.
    for (const t of bad) {
      expect((await refusedUpgrade(`${ws}/ws/${bob}/?token=${encodeURIComponent(t)}`)).status).toBe(401);
      expect((await refusedUpgrade(`${ws}/ws/notifications/`, { Authorization: `Bearer ${t}` })).status).toBe(401);
      expect((await fetch(`${http}/api/conversations`, { headers: { Authorization: `Bearer ${t}` } })).status).toBe(401);
      expect((await fetch(`${http}/api/conversations?token=${encodeURIComponent(t)}`)).status).toBe(401);
    }
    expect((await refusedUpgrade(`${ws}/ws/${alice}/?token=${good}`)).status).toBe(400);
    expect((await fetch(`${http}/api/conversations`, { headers: { Authorization: `Bearer ${good}` } })).status).toBe(200);
    expect((await fetch(`${http}/api/rooms/${bob}/messages?token=${good}`)).status).toBe(200);
    expect((await fetch(`${http}/api/rooms/${alice}/messages`, { headers: { Authorization: `Bearer ${good}` } })).status).toBe(400);

    await Promise.all([a.close(), b.close(), n.close()]);
    expect(await gateway.stop()).toBe(0);
    expect(await worker.stop()).toBe(0);

    for (const [name, p] of [["gateway", gateway], ["worker", worker]] as const) {
      // Debug logging was really on, so its lines were checked too.
      const entries = p.stdout.map((line, i) => {
        let entry: unknown;
        expect(() => (entry = JSON.parse(line)), `${name} stdout line ${i} is JSON: ${line.slice(0, 200)}`).not.toThrow();
        return entry as Record<string, unknown>;
      });
      expect(entries.length, name).toBeGreaterThan(2);
      for (const e of entries) {
        expect(e !== null && typeof e === "object" && !Array.isArray(e), `${name}: ${JSON.stringify(e)}`).toBe(true);
        expect(typeof e["level"], `${name} level: ${JSON.stringify(e).slice(0, 200)}`).toBe("string");
        expect(String(e["time"]), `${name} time: ${JSON.stringify(e).slice(0, 200)}`).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
        expect(typeof e["msg"] === "string" && (e["msg"] as string).length > 0, `${name} msg: ${JSON.stringify(e).slice(0, 200)}`).toBe(true);
      }
      expect(entries.some((e) => e["level"] === "debug"), `${name} logged at debug level`).toBe(true);

      const everything = [...p.stdout, ...p.stderr].join("\n");
      expect(everything.includes(JWT_SECRET), `${name} logged the JWT secret`).toBe(false);
      expect(everything.includes(OTHER_SECRET), `${name} logged a signing secret`).toBe(false);
      expect(everything.includes(DB_PASSWORD), `${name} logged the database password`).toBe(false);
      expect(everything.includes(encodeURIComponent(DB_PASSWORD)), `${name} logged the database password`).toBe(false);
      for (const t of tokens) {
        expect(everything.includes(t), `${name} logged a token`).toBe(false);
        // Nor a token's payload or signature on their own.
        for (const part of t.split(".").slice(1)) if (part.length > 8) expect(everything.includes(part), `${name} logged part of a token`).toBe(false);
      }
    }
  }, 60_000);
});
