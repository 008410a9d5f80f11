import WebSocket from "ws";
import { describe, expect, it, onTestFinished } from "vitest";
import { ErrorCode } from "@chat/protocol";
import { openRedis, parseRedisTarget, redisNames } from "@chat/bus";
import {
  REDIS_CLUSTER_URL,
  REDIS_URL,
  allStreams,
  dropPrefixAtEnd,
  connectReady,
  freshPrefix,
  messagesBetween,
  redisEngines,
  redisEnv,
  refusedUpgrade,
  startGateway,
  startWorker,
  testRedis,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type Frame,
  type TestClient,
} from "./helpers/index.js";

testSql();
testRedis();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Outcome of one upgrade attempt: 101 when the socket opened (it is closed again), else the refusal. */
async function attemptUpgrade(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const ws = new WebSocket(url);
  onTestFinished(() => ws.terminate());
  return new Promise((resolve, reject) => {
    ws.once("open", () => resolve({ status: 101, body: {} }));
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => {
        let parsed: Record<string, unknown>;
        try {
          parsed = JSON.parse(body) as Record<string, unknown>;
        } catch {
          parsed = { raw: body };
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    ws.once("error", (err) => {
      if (!("statusCode" in err)) reject(err);
    });
  });
}

const clientIdsOf = (frames: Frame[], type: string) => frames.filter((f) => f.type === type && typeof f["client_id"] === "string").map((f) => f["client_id"] as string);

// On a single Redis the bucket is taken in the accept script; on a cluster by its own script first.
describe.each(redisEngines)("per-user message rate, cluster-wide (%s)", (kind) => {
  it("lets a user with sockets on two gateways send one burst (20) plus refill, refuses the rest with rate_limited, and leaves others alone", async () => {
    const prefix = freshPrefix("rate");
    const env = { CHAT_RATE_MESSAGES_PER_SECOND: "10", CHAT_RATE_MESSAGES_BURST: "20", ...redisEnv(kind) };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env), startWorker(prefix, redisEnv(kind))]);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");
    const dave = uniqueUser("dave");
    const aliceToken = await tokenFor(alice);
    const a1 = await connectReady(g1.url, `/ws/${bob}/`, aliceToken);
    const a2 = await connectReady(g2.url, `/ws/${bob}/`, aliceToken);
    const b = await connectReady(g2.url, `/ws/${alice}/`, await tokenFor(bob));
    const c = await connectReady(g1.url, `/ws/${dave}/`, await tokenFor(carol));

    const ids1 = Array.from({ length: 30 }, (_, i) => `n1-${i}`);
    const ids2 = Array.from({ length: 30 }, (_, i) => `n2-${i}`);
    const idsC = Array.from({ length: 10 }, (_, i) => `c-${i}`);
    const started = performance.now();
    for (let i = 0; i < 30; i++) {
      a1.send({ type: "chat_message", message: `one ${i}`, client_id: ids1[i] });
      a2.send({ type: "chat_message", message: `two ${i}`, client_id: ids2[i] });
      if (i < idsC.length) c.send({ type: "chat_message", message: `carol ${i}`, client_id: idsC[i] });
    }
    // Every send gets exactly one outcome: its echo (on every socket of both users) or rate_limited.
    const settled = (sender: TestClient, ids: string[]) => {
      const refused = new Set(clientIdsOf(sender.frames, "error"));
      const echoed = [a1, a2, b].map((s) => new Set(clientIdsOf(s.frames, "chat_message")));
      return ids.every((id) => refused.has(id) || echoed.every((e) => e.has(id)));
    };
    await waitFor(() => settled(a1, ids1) && settled(a2, ids2) && clientIdsOf(c.frames, "chat_message").length === idsC.length, 15000, 20);
    const elapsedSeconds = (performance.now() - started) / 1000;

    const accepted = new Set(clientIdsOf(a1.frames, "chat_message"));
    expect(new Set(clientIdsOf(a2.frames, "chat_message")), "both of alice's sockets see the same accepted messages").toEqual(accepted);
    const errors = [...a1.ofType("error"), ...a2.ofType("error")];
    for (const e of errors) {
      expect(e).toEqual({ type: "error", code: ErrorCode.rate_limited, message: expect.stringMatching(/retry in \d+ ms/), client_id: expect.any(String) });
      // At 10/s a token comes back within 100 ms.
      const retry = Number(/retry in (\d+) ms/.exec(String(e["message"]))![1]);
      expect(retry).toBeGreaterThan(0);
      expect(retry).toBeLessThanOrEqual(100);
      expect(accepted.has(e["client_id"] as string), `${String(e["client_id"])} was both accepted and refused`).toBe(false);
    }
    // A refusal goes to the sending socket only.
    expect(clientIdsOf(a1.frames, "error").every((id) => id.startsWith("n1-"))).toBe(true);
    expect(clientIdsOf(a2.frames, "error").every((id) => id.startsWith("n2-"))).toBe(true);
    expect(b.ofType("error")).toEqual([]);
    expect(accepted.size + errors.length).toBe(60);
    // One bucket for the user across both nodes: the burst, plus what refilled while the test ran
    // (a bucket per node would have let at least 40 through).
    const refill = Math.ceil(10 * elapsedSeconds);
    console.log(`rate: ${accepted.size} of 60 accepted in ${elapsedSeconds.toFixed(2)} s (allowed 20..${20 + refill + 1})`);
    expect(accepted.size).toBeGreaterThanOrEqual(20);
    expect(accepted.size).toBeLessThanOrEqual(20 + refill + 1);

    // Other users are not affected: carol's 10 went through at the same time.
    expect(c.ofType("error")).toEqual([]);
    expect(clientIdsOf(c.frames, "chat_message").sort()).toEqual([...idsC].sort());

    // Refused sends were not stored; accepted ones were, once each.
    await waitFor(async () => {
      const rows = await messagesBetween(alice, bob);
      expect(rows.map((r) => r.client_id).sort()).toEqual([...accepted].sort());
    }, 15000);

    // After a refill (a deliberate wait: 10 tokens per second), sends work again from either node.
    await sleep(1000);
    const late = ["late-0", "late-1", "late-2", "late-3", "late-4"];
    late.forEach((id, i) => (i % 2 === 0 ? a1 : a2).send({ type: "chat_message", message: id, client_id: id }));
    await waitFor(() => late.every((id) => clientIdsOf(a1.frames, "chat_message").includes(id) || clientIdsOf([...a1.frames, ...a2.frames], "error").includes(id)), 10000, 20);
    expect(clientIdsOf([...a1.frames, ...a2.frames], "error").filter((id) => id.startsWith("late-"))).toEqual([]);
    await waitFor(async () => expect((await messagesBetween(alice, bob)).length).toBe(accepted.size + late.length), 15000);
    for (const s of [a1, a2, b, c]) expect(s.schemaViolations).toEqual([]);
  }, 60_000);
});

/** How many sockets of `user` the engine's Redis counts. */
async function countedSockets(kind: "redis" | "redis-cluster", prefix: string, user: string): Promise<number> {
  const redis = openRedis(parseRedisTarget(kind === "redis-cluster" ? REDIS_CLUSTER_URL! : REDIS_URL), { connectionName: "limits-test" });
  redis.on("error", () => {});
  try {
    return await redis.zcard(redisNames(prefix).userConnections(user));
  } finally {
    redis.disconnect();
  }
}

/** Opens a socket that the cluster-wide count should close: resolves to its close code and what it got first. */
async function closedAfterOpen(url: string): Promise<{ code: number; reason: string; frames: number }> {
  const ws = new WebSocket(url);
  onTestFinished(() => ws.terminate());
  let frames = 0;
  ws.on("message", () => frames++);
  return new Promise((resolve, reject) => {
    ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused with ${res.statusCode}`)));
    ws.once("close", (code, reason) => resolve({ code, reason: reason.toString(), frames }));
  });
}

describe.each(redisEngines)("sockets per user, cluster-wide (%s)", (kind) => {
  it("refuses a node's 4th socket of a user with 429, closes one over the cluster-wide count with 4029 before any event, and a closed socket frees its slot", async () => {
    const prefix = freshPrefix("conn-limit");
    if (kind === "redis") dropPrefixAtEnd(prefix);
    const env = { CHAT_MAX_CONNECTIONS_PER_USER: "3", ...redisEnv(kind) };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");
    const token = await tokenFor(alice);
    const bobToken = await tokenFor(bob);
    // Bob on a socket to alice: a socket closed for the count must never show up in presence.
    const bobSees = await connectReady(g2.url, `/ws/${alice}/`, bobToken);
    // Every endpoint counts; all three on node 1.
    const open = [
      await connectReady(g1.url, `/ws/${bob}/`, token),
      await connectReady(g1.url, "/ws/notifications/", token),
      await connectReady(g1.url, `/ws/notifications/${bob}/`, token),
    ];
    // Node 1 holds 3 itself: it refuses the upgrade, on every endpoint and with the header too.
    for (const path of [`/ws/${carol}/`, "/ws/notifications/", `/ws/${bob}/`]) {
      const r = await refusedUpgrade(`${g1.url}${path}?token=${token}`);
      expect(r.status, `${g1.url}${path}`).toBe(429);
      expect(r.body).toEqual({ error: "too_many_connections", message: expect.any(String) });
    }
    expect((await refusedUpgrade(`${g1.url}/ws/${carol}/`, { Authorization: `Bearer ${token}` })).status).toBe(429);
    // Node 2 holds none of them: the socket opens, and the cluster-wide count closes it before any event.
    for (const path of [`/ws/${bob}/`, "/ws/notifications/"]) {
      const closed = await closedAfterOpen(`${g2.url}${path}?token=${token}`);
      expect(closed, `${g2.url}${path}`).toEqual({ code: 4029, reason: expect.stringMatching(/^too_many_connections: /), frames: 0 });
    }
    expect(bobSees.frames.filter((f) => (f.type === "user_join" || f.type === "user_leave") && f["user"] === alice)).toEqual([{ type: "user_join", user: alice }]);

    // Other users are unaffected, even in the same conversation.
    for (const g of [g1, g2]) await connectReady(g.url, `/ws/${alice}/`, bobToken);
    expect((await closedAfterOpen(`${g1.url}/ws/${alice}/?token=${bobToken}`)).code).toBe(4029);

    // Closing one lets exactly one more open, on the other node; refusals did not use up slots.
    await open[1]!.close();
    const fourth = await waitFor(() => connectReady(g2.url, `/ws/${carol}/`, token), 10000, 100);
    expect(fourth.frames[0]).toMatchObject({ type: "online_user_list" });
    expect((await closedAfterOpen(`${g2.url}/ws/notifications/?token=${token}`)).code).toBe(4029);

    // A socket dropped without a close handshake frees its slot as well.
    open[0]!.ws.terminate();
    await open[0]!.closed;
    const fifth = await waitFor(() => connectReady(g2.url, `/ws/${bob}/`, token), 10000, 100);
    expect(fifth.frames[0]).toMatchObject({ type: "online_user_list" });
    expect((await closedAfterOpen(`${g1.url}/ws/notifications/?token=${token}`)).code).toBe(4029);
    // Through all of it the user never had more than 3 counted.
    await waitFor(async () => expect(await countedSockets(kind, prefix, alice)).toBe(3), 5000);
  }, 60_000);
});

describe("upgrades per client address", () => {
  it("refuses a burst of upgrades from one address beyond 2 x CHAT_RATE_UPGRADES_PER_IP with 429, on that node only", async () => {
    const prefix = freshPrefix("upgrade-rate");
    const env = { CHAT_RATE_UPGRADES_PER_IP: "5" };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    const users = Array.from({ length: 5 }, () => uniqueUser("u"));
    const tokens = await Promise.all(users.map((u) => tokenFor(u)));
    const peer = uniqueUser("peer");
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: 30 }, (_, i) => attemptUpgrade(`${g1.url}/ws/${peer}/?token=${tokens[i % 5]}`)));
    const elapsedSeconds = (performance.now() - started) / 1000;
    const opened = results.filter((r) => r.status === 101).length;
    const refused = results.filter((r) => r.status === 429);
    for (const r of refused) expect(r.body).toEqual({ error: "too_many_upgrades", message: expect.any(String) });
    expect(opened + refused.length, `statuses ${JSON.stringify(results.map((r) => r.status))}`).toBe(30);
    console.log(`upgrades: ${opened} of 30 opened in ${elapsedSeconds.toFixed(2)} s`);
    expect(opened).toBeGreaterThanOrEqual(10);
    expect(opened).toBeLessThanOrEqual(10 + Math.ceil(5 * elapsedSeconds) + 1);

    // The limit is per node: another node takes upgrades from the same address at once.
    for (let i = 0; i < 3; i++) expect((await attemptUpgrade(`${g2.url}/ws/${peer}/?token=${tokens[i]}`)).status).toBe(101);
    // And the first node takes them again after a refill (a deliberate wait: 5 per second).
    await sleep(1000);
    expect((await attemptUpgrade(`${g1.url}/ws/${peer}/?token=${tokens[0]}`)).status).toBe(101);
  }, 60_000);

  it("never limits upgrades with the default configuration (0)", async () => {
    const g = await startGateway(freshPrefix("upgrade-default"));
    const users = Array.from({ length: 6 }, () => uniqueUser("u"));
    const tokens = await Promise.all(users.map((u) => tokenFor(u)));
    const peer = uniqueUser("peer");
    const results = await Promise.all(Array.from({ length: 60 }, (_, i) => attemptUpgrade(`${g.url}/ws/${peer}/?token=${tokens[i % 6]}`)));
    expect(results.map((r) => r.status)).toEqual(Array(60).fill(101));
    // Refused upgrades (a bad token) from the same address do not trip anything either.
    for (let i = 0; i < 20; i++) expect((await attemptUpgrade(`${g.url}/ws/${peer}/?token=bad`)).status).toBe(401);
    expect((await attemptUpgrade(`${g.url}/ws/${peer}/?token=${tokens[0]}`)).status).toBe(101);
  }, 60_000);
});

describe("default limits fit the benchmarks", () => {
  it("never limits 200 users sending 5 messages per second each, nor a burst of 150 from one user", async () => {
    const prefix = freshPrefix("rate-defaults");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    onTestFinished(async () => void (await testRedis().del(...allStreams(redisNames(prefix)))));
    const users = Array.from({ length: 200 }, (_, i) => uniqueUser(`bench${i}`));
    const tokens = await Promise.all(users.map((u) => tokenFor(u)));
    // 100 conversations, each between a user on node 1 and a user on node 2.
    const sockets: TestClient[] = [];
    for (let start = 0; start < 200; start += 40) {
      sockets.push(
        ...(await Promise.all(
          users.slice(start, start + 40).map((u, j) => {
            const i = start + j;
            const partner = users[(i + 100) % 200]!;
            return connectReady((i < 100 ? g1 : g2).url, `/ws/${partner}/`, tokens[i]!);
          }),
        )),
      );
    }
    expect(sockets).toHaveLength(200);
    const perUser = 10;
    // 5 messages per second per user for 2 seconds, users spread over each 200 ms tick.
    for (let k = 0; k < perUser; k++) {
      const tickStart = performance.now();
      sockets.forEach((s, i) => s.send({ type: "chat_message", message: `m${k}`, client_id: `u${i}-${k}` }));
      await sleep(Math.max(0, 200 - (performance.now() - tickStart)));
    }
    await waitFor(() => sockets.every((s) => s.ofType("error").length > 0 || clientIdsOf(s.frames, "chat_message").length >= 2 * perUser), 30000, 100);
    const errors = sockets.flatMap((s) => s.ofType("error"));
    expect(errors.slice(0, 5), `${errors.length} errors`).toEqual([]);
    sockets.forEach((s, i) => {
      const own = clientIdsOf(s.frames, "chat_message").filter((id) => id.startsWith(`u${i}-`));
      expect(own).toHaveLength(perUser);
    });

    // One user bursting 150 at once (defaults: 100/s, bursts of 200) is not limited either.
    const burster = sockets[0]!;
    for (let k = 0; k < 150; k++) burster.send({ type: "chat_message", message: `b${k}`, client_id: `burst-${k}` });
    await waitFor(() => burster.ofType("error").length > 0 || clientIdsOf(burster.frames, "chat_message").filter((id) => id.startsWith("burst-")).length === 150, 20000, 50);
    expect(burster.ofType("error")).toEqual([]);
  }, 90_000);
});
