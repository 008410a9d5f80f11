import { execFile } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import postgres from "postgres";
import { describe, expect, it, onTestFinished } from "vitest";
import { redisNames } from "@chat/bus";
import {
  connect,
  connectReady,
  freshPrefix,
  runScript,
  startGateway,
  startWorker,
  testRedis,
  tokenFor,
  uniqueUser,
  waitFor,
  type Gateway,
  type TestClient,
} from "./helpers/index.js";
import { conversationsBacklog, dropPrefixAtEnd } from "./helpers/redis.js";
import { freePort } from "./helpers/private-redis.js";

const run = promisify(execFile);
// Register the Redis connection's teardown at file level (it is first used inside the test).
testRedis();
const PG_BIN = "/usr/lib/postgresql/15/bin";
/** Long enough for the worker's backoff to reach its longest delays (250 ms doubling to 5 s). */
const OUTAGE_MS = 12_000;
/** One message per flow every this many ms: 4 flows, 80 messages/s in all. */
const PACE_MS = 50;

interface PrivatePostgres {
  url: string;
  /** The postmaster's pid while it runs (from postmaster.pid), else null. */
  pid(): number | null;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A private PostgreSQL 15 cluster in a temp dir on a free loopback port, so that this test can stop
 * it without touching the shared server. initdb refuses root: as root, its commands run as `postgres`.
 * Stopped (pg_ctl, then its pid) and deleted when the test ends.
 */
async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "chat-fault-pg-"));
  const data = join(dir, "data");
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    const uid = Number((await run("id", ["-u", "postgres"])).stdout.trim());
    const gid = Number((await run("id", ["-g", "postgres"])).stdout.trim());
    chownSync(dir, uid, gid);
  }
  const pg = (bin: string, args: string[]) =>
    asRoot ? run("runuser", ["-u", "postgres", "--", join(PG_BIN, bin), ...args]) : run(join(PG_BIN, bin), args);
  const pid = (): number | null => {
    const file = join(data, "postmaster.pid");
    if (!existsSync(file)) return null;
    const n = Number(readFileSync(file, "utf8").split("\n")[0]);
    return Number.isInteger(n) && n > 0 ? n : null;
  };
  const start = async () => {
    await pg("pg_ctl", ["-D", data, "-l", join(dir, "log"), "-w", "-t", "30", "-o", `-p ${port} -c listen_addresses=127.0.0.1 -k ${dir}`, "start"]);
  };
  const stop = async () => {
    await pg("pg_ctl", ["-D", data, "-m", "fast", "-w", "-t", "30", "stop"]);
  };
  onTestFinished(async () => {
    await pg("pg_ctl", ["-D", data, "-m", "immediate", "-w", "-t", "10", "stop"]).catch(() => undefined);
    const left = pid();
    if (left !== null) {
      try {
        process.kill(left, "SIGKILL");
      } catch {
        // already gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });
  await pg("initdb", ["-A", "trust", "-U", "postgres", "-N", "-D", data]);
  await start();
  return { url: `postgres://postgres@127.0.0.1:${port}/chat_fault`, pid, start, stop };
}

interface Flow {
  from: string;
  to: string;
  chat: TestClient;
  sent: number;
  /** Sent after b's read receipt (a>b only). */
  sentAfterRead: number;
  paused: boolean;
}

const tag = (f: Flow, k: number) => `${f.from}>${f.to}#${k}`;
const mine = (f: Flow) => (x: Record<string, unknown>) => String(x["client_id"] ?? "").startsWith(`${f.from}>${f.to}#`);
const answered = (f: Flow) => f.chat.frames.filter((x) => (x.type === "chat_message" || x.type === "error") && mine(f)(x)).length;

function send(f: Flow, afterRead: boolean): void {
  f.chat.send({ type: "chat_message", message: tag(f, f.sent), client_id: tag(f, f.sent) });
  f.sent++;
  if (afterRead) f.sentAfterRead++;
}

describe("Postgres outage", () => {
  it(
    "keeps accepting while Postgres is stopped for 12 s, the HTTP API answers 503 meanwhile; the worker backs off, then persists the backlog exactly once with exact counts",
    async () => {
      const pg = await startPrivatePostgres();
      const migrated = await runScript("packages/db/dist/migrate-cli.js", [], { DATABASE_URL: pg.url });
      expect(migrated.code, migrated.stderr).toBe(0);
      const db = postgres(pg.url, { max: 2, onnotice: () => {} });
      onTestFinished(() => db.end({ timeout: 1 }));

      const prefix = freshPrefix("pgdown");
      const names = redisNames(prefix);
      dropPrefixAtEnd(prefix);
      const env = { DATABASE_URL: pg.url };
      const gateways: Gateway[] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
      // A batch in flight when Postgres shuts down is sometimes never answered (the connection's
      // close does not reject it in postgres.js): it fails only at the stall timeout. 30 s by default,
      // longer than the outage; 3 s here so that case still shows the backoff within the outage.
      const worker = await startWorker(prefix, { ...env, CHAT_WORKER_STALL_TIMEOUT_MS: "3000" });

      const [a, b, c, d] = [uniqueUser("a"), uniqueUser("b"), uniqueUser("c"), uniqueUser("d")];
      const directed: [string, string][] = [
        [a, b],
        [b, a],
        [c, b],
        [d, a],
      ];
      const flows: Flow[] = await Promise.all(
        directed.map(async ([from, to], i) => ({
          from,
          to,
          chat: await connectReady(gateways[i % 2]!.url, `/ws/${to}/`, await tokenFor(from)),
          sent: 0,
          sentAfterRead: 0,
          paused: false,
        })),
      );
      const [ab, ba] = flows as [Flow, Flow, Flow, Flow];
      // b watches its unread total on the other node.
      const bNotes = await connectReady(gateways[1]!.url, "/ws/notifications/", await tokenFor(b));
      expect(bNotes.frames[0]).toEqual({ type: "unread_count", unread_count: 0 });

      let readDone = false;
      let sending = true;
      const sender = (async () => {
        while (sending) {
          for (const f of flows) if (!f.paused) send(f, readDone && f === ab);
          // Pacing only: a steady rate over the whole outage.
          await new Promise((r) => setTimeout(r, PACE_MS));
        }
      })();
      const persisted = async () => {
        const [row] = await db<{ n: number }[]>`SELECT count(*)::int AS n FROM messages WHERE from_user IN ${db([a, b, c, d])}`;
        return row!.n;
      };

      try {
        // Traffic is being persisted before the fault.
        await waitFor(async () => (await persisted()) > 50, 10000);

        const stopAt = Date.now();
        await pg.stop();
        expect(pg.pid()).toBeNull();
        const sentAtStop = flows.reduce((n, f) => n + f.sent, 0);
        console.log(`[reliability] postgres stopped after ${Date.now() - stopAt} ms (pg_ctl stop -m fast); ${sentAtStop} messages sent so far`);

        // Halfway through the outage, b reads the conversation with a: a>b pauses until its echoes
        // are in, b's read and then b's next message go out on b's socket, and a>b resumes once that
        // message is echoed, so every later a>b message is after the read in the stream.
        await new Promise((r) => setTimeout(r, OUTAGE_MS / 2));
        ab.paused = true;
        await ab.chat.until(() => answered(ab) === ab.sent, 10000, "a>b echoes before the read");
        ba.paused = true;
        await ba.chat.until(() => answered(ba) === ba.sent, 10000, "b>a echoes before the read");
        ba.chat.send({ type: "read_messages" });
        send(ba, false);
        await ba.chat.until(() => answered(ba) === ba.sent, 10000, "b's message after its read");
        readDone = true;
        ab.paused = false;
        ba.paused = false;
        // The gateways stay ready and accepting: Redis holds the backlog.
        for (const g of gateways) expect((await fetch(`http://127.0.0.1:${g.port}/readyz`)).status).toBe(200);
        // The HTTP API needs Postgres: meanwhile it answers 503 with Retry-After, on both nodes.
        for (const g of gateways) {
          const during = await conversationsOf(g, a);
          expect(during.status).toBe(503);
          expect(during.headers.get("retry-after")).toBe("5");
          expect(await during.json()).toEqual({ error: "unavailable", message: "the database is unreachable; retry later" });
        }
        // A new notifications socket needs its first count from Postgres: closed with 1013 (reconnect later).
        const lateNotes = await connect(gateways[0]!.url, "/ws/notifications/", await tokenFor(c));
        await lateNotes.until(() => lateNotes.closeCode !== null, 15000, "close of a notifications socket opened during the outage");
        expect(lateNotes.closeCode).toBe(1013);
        expect(lateNotes.frames).toEqual([]);
        const worked = Date.now() - stopAt;
        // The deliberate outage: Postgres stays down for OUTAGE_MS while messages keep flowing.
        await new Promise((r) => setTimeout(r, Math.max(0, OUTAGE_MS - worked)));

        const sentAtRestart = flows.reduce((n, f) => n + f.sent, 0);
        const group = await conversationsBacklog(testRedis(), names, directed);
        const restartAt = Date.now();
        await pg.start();
        const restartedAt = Date.now();
        expect(pg.pid()).not.toBeNull();

        // Some more traffic after the restart, then stop sending.
        await new Promise((r) => setTimeout(r, 1000));
        sending = false;
        await sender;

        // Every send was answered with an echo: accepted during the outage too, nothing refused.
        const accepted = new Map<Flow, string[]>();
        for (const f of flows) {
          await f.chat.until(() => answered(f) === f.sent, 10000, `echoes of ${f.from}>${f.to}`);
          expect(f.chat.ofType("error"), "no send refused").toEqual([]);
          expect(f.chat.schemaViolations).toEqual([]);
          accepted.set(f, f.chat.ofType("chat_message").filter(mine(f)).map((x) => String(x["id"])));
        }
        const all = [...accepted.values()].flat();
        expect(new Set(all).size).toBe(all.length);
        const total = all.length;

        // Recovery: from the restart until the backlog is persisted and the group has nothing left.
        await waitFor(
          async () => {
            const last = worker.logs.at(-1) ?? {};
            expect(
              await persisted(),
              `persisted messages; the worker's last log line (${Math.round((Date.now() - Date.parse(String(last["time"]))) / 1000)} s ago): ${JSON.stringify(last).slice(0, 300)}`,
            ).toBeGreaterThanOrEqual(total);
            const g = await conversationsBacklog(testRedis(), names, directed);
            expect(g).toMatchObject({ pending: 0, lag: 0 });
          },
          30000,
          50,
        );
        const recoveryMs = Date.now() - restartedAt;
        for (const g of gateways) expect((await conversationsOf(g, a)).status).toBe(200);

        // Exactly once: every accepted id once, nothing else, no content twice.
        const rows = await db<{ id: string; from_user: string; to_user: string; content: string }[]>`
          SELECT id::text AS id, from_user, to_user, content FROM messages WHERE from_user IN ${db([a, b, c, d])}`;
        expect(rows).toHaveLength(total);
        expect(new Set(rows.map((r) => r.id))).toEqual(new Set(all));
        expect(new Set(rows.map((r) => r.content)).size).toBe(total);

        // Counts exact: b read a's messages up to its read receipt, nobody read anything else.
        const unread = async (u: string, o: string) => {
          const r = await db<{ n: number }[]>`SELECT unread_count AS n FROM conversation_members WHERE username = ${u} AND other_username = ${o}`;
          return r[0]?.n ?? 0;
        };
        const [, , cb, da] = flows as [Flow, Flow, Flow, Flow];
        const expected: [string, string, number][] = [
          [b, a, ab.sentAfterRead],
          [a, b, ba.sent],
          [b, c, cb.sent],
          [a, d, da.sent],
        ];
        expect(ab.sentAfterRead).toBeGreaterThan(0);
        expect(ab.sentAfterRead).toBeLessThan(ab.sent);
        for (const [u, o, n] of expected) expect(await unread(u, o), `unread of ${u} from ${o}`).toBe(n);
        // And b's notifications socket ends on that total.
        const bTotal = ab.sentAfterRead + cb.sent;
        await bNotes.until(
          (frames) => {
            const counts = frames.filter((x) => x.type === "new_message_notification" || x.type === "unread_count");
            return counts.at(-1)?.["unread_count"] === bTotal;
          },
          10000,
          `b's unread total ${bTotal}`,
        );
        expect(bNotes.schemaViolations).toEqual([]);

        // The worker backed off and retried (growing delays) and never died. Batches written beside
        // each other retry on their own, so the delays grow per batch (the writer numbers them; two
        // partitions' streams can hand out the same first id), interleaved in the log;
        // a retry that waited out the stall timeout (3 s here) grows more slowly than one refused at once.
        const retries = worker.logs.filter((l) => l["msg"] === "batch failed, will retry" || l["msg"] === "stream read or acknowledgement failed");
        const delays = retries.map((l) => Number(l["retryInMs"]));
        expect(retries.length).toBeGreaterThanOrEqual(3);
        const perBatch = new Map<string, number[]>();
        for (const l of retries.filter((r) => r["msg"] === "batch failed, will retry")) {
          const key = `${String(l["batch"])} (from ${String(l["first"])})`;
          perBatch.set(key, [...(perBatch.get(key) ?? []), Number(l["retryInMs"])]);
        }
        for (const [batch, seq] of perBatch) expect(seq, `retry delays of batch ${batch}`).toEqual([...seq].sort((x, y) => x - y));
        expect(Math.max(...[...perBatch.values()].map((seq) => seq.length)), "retries of the longest-failing batch").toBeGreaterThanOrEqual(4);
        expect(Math.max(...delays)).toBeGreaterThanOrEqual(2000);
        expect(worker.child.exitCode).toBeNull();
        expect(worker.child.signalCode).toBeNull();
        expect(worker.logs.filter((l) => l["level"] === "fatal")).toEqual([]);
        for (const g of gateways) expect(g.child.exitCode).toBeNull();

        const duringOutage = sentAtRestart - sentAtStop;
        console.log(
          `[reliability] postgres outage: ${OUTAGE_MS} ms down, ${duringOutage} messages accepted while down, ` +
            `stream backlog at restart lag=${group.lag} pending=${group.pending}, ${total} messages in all, ` +
            `${total - rows.length} lost, 0 duplicated, ${retries.length} worker retries (max delay ${Math.max(...delays)} ms), ` +
            `pg_ctl start took ${restartedAt - restartAt} ms, recovery (restart -> backlog persisted) ${recoveryMs} ms`,
        );
      } finally {
        sending = false;
        await sender;
      }
    },
    90_000,
  );
});

function conversationsOf(g: Gateway, user: string): Promise<Response> {
  return tokenFor(user).then((token) => fetch(`http://127.0.0.1:${g.port}/api/conversations`, { headers: { authorization: `Bearer ${token}` } }));
}
