import { describe, expect, it } from "vitest";
import { redisNames } from "@chat/bus";
import {
  connectReady,
  conversationStream,
  freshPrefix,
  groupOf,
  refusedUpgrade,
  startGateway,
  startWorker,
  testRedis,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type TestClient,
} from "./helpers/index.js";
import { holdMemberRow } from "./helpers/db.js";

async function httpStatus(port: number, path: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  await res.arrayBuffer();
  return res.status;
}

/** Which of these message ids are in Postgres. */
async function persistedIds(ids: readonly string[]): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const sql = testSql();
  const rows = await sql<{ id: string }[]>`SELECT id::text AS id FROM messages WHERE id = ANY(${sql.array([...ids])}::uuid[])`;
  return new Set(rows.map((r) => r.id));
}

/** The consumer group's counters on the partition of the conversation of `a` and `b`, as XINFO GROUPS reports them. */
async function groupInfo(prefix: string, a: string, b: string): Promise<{ pending: number; lag: number; entriesRead: number }> {
  const names = redisNames(prefix);
  const o = await groupOf(testRedis(), conversationStream(names, a, b), names.group);
  if (!o) throw new Error("no consumer group");
  return { pending: Number(o["pending"]), lag: Number(o["lag"]), entriesRead: Number(o["entries-read"]) };
}

async function inChunks<T>(items: readonly (() => Promise<T>)[], size: number): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < items.length; i += size) out.push(...(await Promise.all(items.slice(i, i + size).map((f) => f()))));
  return out;
}

const WINDOW_MS = 3000;

describe("graceful shutdown", () => {
  it("drains a gateway with 200 sockets: not ready at once, 503 upgrades, 1001 spread over the window, user_leave elsewhere, exit 0, nothing accepted lost", async () => {
    const prefix = freshPrefix("drain");
    const [gd, go] = await Promise.all([startGateway(prefix, { CHAT_DRAIN_WINDOW_MS: String(WINDOW_MS) }), startGateway(prefix)]);
    await startWorker(prefix);

    const pairs = 50;
    const users = Array.from({ length: pairs }, (_, i) => uniqueUser(`drained${i}`));
    const partners = Array.from({ length: pairs }, (_, i) => uniqueUser(`partner${i}`));
    const userTokens = await Promise.all(users.map((u) => tokenFor(u)));
    const partnerTokens = await Promise.all(partners.map((u) => tokenFor(u)));

    // 200 sockets on the draining node: per user two chat sockets, one notifications, one conversation-notifications.
    const opens: (() => Promise<TestClient>)[] = [];
    for (let i = 0; i < pairs; i++) {
      opens.push(() => connectReady(gd.url, `/ws/${partners[i]}/`, userTokens[i]!));
      opens.push(() => connectReady(gd.url, `/ws/${partners[i]}/`, userTokens[i]!));
      opens.push(() => connectReady(gd.url, "/ws/notifications/", userTokens[i]!));
      opens.push(() => connectReady(gd.url, `/ws/notifications/${partners[i]}/`, userTokens[i]!));
    }
    const drained = await inChunks(opens, 40);
    expect(drained).toHaveLength(200);
    const closedAt = new Map<TestClient, number>();
    for (const c of drained) c.ws.on("close", () => closedAt.set(c, Date.now()));
    // The partners, on the other node, see their drained user online.
    const others = await inChunks(
      partners.map((_, i) => () => connectReady(go.url, `/ws/${users[i]}/`, partnerTokens[i]!)),
      25,
    );
    for (let i = 0; i < pairs; i++) expect(others[i]!.frames[0]).toMatchObject({ type: "online_user_list", users: expect.arrayContaining([users[i]]) });
    expect(await httpStatus(gd.port, "/readyz")).toBe(200);

    // 100 messages through the draining node, then at once the signal.
    for (let i = 0; i < pairs; i++) {
      drained[4 * i]!.send({ type: "chat_message", message: `before drain ${i}.0`, client_id: `${i}.0` });
      drained[4 * i]!.send({ type: "chat_message", message: `before drain ${i}.1`, client_id: `${i}.1` });
    }
    const signalledAt = Date.now();
    expect(gd.child.kill("SIGTERM")).toBe(true);

    // Not ready at once: the first poll that answers 503 was sent within ~200 ms of the signal (300 ms
    // allowed for a loaded machine; a node that forgot to turn not-ready stays 200 for the whole window),
    // and once the node logged that it drains, it never answers 200 again.
    let readyStatus = 0;
    let polledAt = signalledAt;
    for (;;) {
      polledAt = Date.now();
      const sawDraining = gd.logs.some((l) => l["msg"] === "draining");
      readyStatus = await httpStatus(gd.port, "/readyz");
      if (sawDraining) expect(readyStatus, "/readyz after the draining log line").toBe(503);
      if (readyStatus !== 200 || Date.now() - signalledAt > 2000) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(readyStatus).toBe(503);
    expect(polledAt - signalledAt, "ms from SIGTERM to the poll that got 503").toBeLessThan(300);
    // New upgrades are refused while the node drains.
    const refused = await refusedUpgrade(`${gd.url}/ws/notifications/?token=${userTokens[0]}`);
    expect(refused.status).toBe(503);
    expect(Date.now() - signalledAt).toBeLessThan(WINDOW_MS);
    // The drain shows in its metrics while it lasts.
    const metrics = await (await fetch(`http://127.0.0.1:${gd.port}/metrics`)).text();
    expect(metrics).toMatch(/^chat_gateway_drains_total 1$/m);
    expect(metrics).toMatch(/^chat_gateway_upgrades_refused_total\{status="503"\} 1$/m);

    // Every socket closes with 1001 within the window, spread over it.
    const codes = await Promise.race([
      Promise.all(drained.map((c) => c.closed)),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`sockets still open ${WINDOW_MS + 2000} ms after SIGTERM: ${drained.filter((c) => c.closeCode === null).length}`)), WINDOW_MS + 2000)),
    ]);
    expect(new Set(codes)).toEqual(new Set([1001]));
    const offsets = drained.map((c) => closedAt.get(c)! - signalledAt).sort((a, b) => a - b);
    expect(offsets.at(-1)!).toBeLessThanOrEqual(WINDOW_MS + 500);
    const inFirstTenth = offsets.filter((t) => t < WINDOW_MS / 10).length;
    expect(inFirstTenth, `closes in the first ${WINDOW_MS / 10} ms`).toBeLessThanOrEqual(drained.length / 4);
    expect(offsets.at(-1)!, "last close").toBeGreaterThanOrEqual(WINDOW_MS / 2);
    // Spread: every third of the window (with the last third ending at the window + margin) sees closes.
    for (let k = 0; k < 3; k++) {
      const from = (k * WINDOW_MS) / 3;
      const to = ((k + 1) * WINDOW_MS) / 3;
      expect(offsets.filter((t) => t >= from && t < (k === 2 ? WINDOW_MS + 500 : to)).length, `closes in [${from}, ${to})`).toBeGreaterThan(0);
    }
    for (const c of drained) expect(c.ofType("error")).toEqual([]);

    // The process exits 0 well before a grace period of window + a few seconds.
    const code = await Promise.race([gd.exited, new Promise<string>((r) => setTimeout(() => r("still running"), WINDOW_MS + 3000 - (Date.now() - signalledAt)))]);
    expect(code).toBe(0);
    expect(Date.now() - signalledAt).toBeLessThan(WINDOW_MS + 3000);
    expect(gd.logs.some((l) => l["msg"] === "stopped")).toBe(true);

    // The other node's sockets see every drained user leave.
    await Promise.all(
      others.map((o, i) => o.until((f) => f.some((x) => x.type === "user_leave" && x["user"] === users[i]), 5000, `user_leave of ${users[i]}`)),
    );
    for (const o of others) expect(o.closeCode).toBeNull();

    // No accepted message is lost: what was echoed on the draining node or delivered on the other
    // node was accepted into the stream, and must reach Postgres.
    const accepted = new Set<string>();
    for (const c of [...drained, ...others]) for (const f of c.ofType("chat_message")) accepted.add(String(f["id"]));
    expect(accepted.size).toBeGreaterThan(0);
    expect(accepted.size).toBeLessThanOrEqual(2 * pairs);
    await waitFor(async () => {
      const stored = await persistedIds([...accepted]);
      expect([...accepted].filter((id) => !stored.has(id))).toEqual([]);
    }, 10000);
    for (const c of [...drained, ...others]) expect(c.schemaViolations).toEqual([]);
  });

  it("stops a worker on SIGTERM only after its in-flight batch is written and acknowledged; a second worker takes the rest, nothing lost", async () => {
    const prefix = freshPrefix("wdrain");
    const names = redisNames(prefix);
    const g = await startGateway(prefix);
    const w1 = await startWorker(prefix, { CHAT_WORKER_BATCH_SIZE: "20" });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const a = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    // The one conversation of this test lives in one partition of the log.
    const stream = conversationStream(names, alice, bob);

    // A first message creates the conversation's member rows.
    a.send({ type: "chat_message", message: "first" });
    const first = await a.next("chat_message");
    await waitFor(async () => expect((await persistedIds([String(first["id"])])).size).toBe(1));
    await waitFor(async () => expect((await groupInfo(prefix, alice, bob)).pending).toBe(0));

    // Hold bob's member row so that the worker's next batch is in flight (blocked in its transaction).
    const lock = await holdMemberRow(bob, alice);
    try {

      // Messages flow from here to the end of the worker's shutdown.
      let sent = 1;
      const flow = setInterval(() => {
        a.send({ type: "chat_message", message: `m${sent}`, client_id: String(sent) });
        sent++;
      }, 5);
      try {
        // The worker has read a batch it cannot commit yet.
        const inFlight = await waitFor(async () => {
          const pending = (await testRedis().xpending(stream, names.group, "-", "+", 1000)) as [string, string, number, number][];
          expect(pending.length).toBeGreaterThan(0);
          return pending.map(([id]) => id);
        }, 5000, 20);
        const inFlightIds = (await Promise.all(inFlight.map((id) => testRedis().xrange(stream, id, id)))).map((entries) => {
          const fields = entries[0]![1];
          return (JSON.parse(fields[fields.indexOf("e") + 1]!) as { id: string }).id;
        });

        expect(w1.child.kill("SIGTERM")).toBe(true);
        await waitFor(() => w1.logs.some((l) => l["msg"] === "stopping after the batch in hand"), 3000, 10);
        // It does not leave while its batch is unfinished.
        expect(w1.child.exitCode).toBeNull();
        expect(await persistedIds(inFlightIds)).toEqual(new Set());

        await lock.release();
        const code = await Promise.race([w1.exited, new Promise<string>((r) => setTimeout(() => r("still running"), 5000))]);
        expect(code).toBe(0);
        expect(w1.logs.some((l) => l["msg"] === "stopped")).toBe(true);

        // Its batch was written and acknowledged before it left: nothing pending, nothing read but unwritten.
        const info = await groupInfo(prefix, alice, bob);
        expect(info.pending).toBe(0);
        expect((await persistedIds(inFlightIds)).size).toBe(inFlightIds.length);
        const rows = await testSql()<{ n: string }[]>`SELECT count(*)::text AS n FROM messages WHERE from_user = ${alice} AND to_user = ${bob}`;
        expect(Number(rows[0]!.n)).toBe(info.entriesRead);
      } finally {
        clearInterval(flow);
        await lock.release();
      }

      // Every message sent was accepted (echoed); a second worker persists all of them.
      await a.until((f) => f.filter((x) => x.type === "chat_message").length === sent, 5000, `${sent} echoes`);
      expect(a.ofType("error")).toEqual([]);
      const accepted = a.ofType("chat_message").map((f) => String(f["id"]));
      expect(new Set(accepted).size).toBe(sent);
      await startWorker(prefix);
      await waitFor(async () => {
        const stored = await persistedIds(accepted);
        expect(accepted.filter((id) => !stored.has(id))).toEqual([]);
      }, 15000);
      await waitFor(async () => expect(await groupInfo(prefix, alice, bob)).toMatchObject({ pending: 0, lag: 0 }), 5000);
    } finally {
      await lock.release().catch(() => undefined);
    }
  });
});
