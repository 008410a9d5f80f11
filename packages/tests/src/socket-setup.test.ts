import { connect as tcpConnect } from "node:net";
import { describe, expect, it, onTestFinished } from "vitest";
import { connect, connectReady, freePort, freshPrefix, redisEngines, redisEnv, startGateway, startPrivateRedis, tokenFor } from "./helpers/index.js";
import { dropPrefixAtEnd } from "./helpers/redis.js";

const SOCKETS = 300;

/**
 * What a raw client gets after sending an upgrade request: "frame" once a WebSocket frame follows
 * the 101, "closed after 101" when the server ends the connection first.
 */
function rawUpgrade(port: number, path: string, connectionHeader: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = tcpConnect(port, "127.0.0.1");
    onTestFinished(() => void socket.destroy());
    let received = Buffer.alloc(0);
    let status: string | null = null;
    const timer = setTimeout(() => resolve(status === null ? "no answer" : `${status}, then nothing for 10 s`), 10_000);
    const done = (outcome: string) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    socket.on("connect", () =>
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: ${connectionHeader}\r\n` +
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
      ),
    );
    socket.on("data", (chunk) => {
      received = Buffer.concat([received, chunk]);
      if (status === null) {
        const end = received.indexOf("\r\n\r\n");
        if (end < 0) return;
        status = received.subarray(0, received.indexOf("\r\n")).toString();
        if (status !== "HTTP/1.1 101 Switching Protocols") return done(status);
        received = received.subarray(end + 4);
      }
      if (received.length > 0) done("frame");
    });
    socket.on("end", () => done(status === null ? "closed before an answer" : "closed after 101"));
    socket.on("error", (err) => done(`error: ${err.message}`));
  });
}

/**
 * Two faults ended a fresh socket without a close frame (1006) right after its 101:
 * - The session used to be set up inside uWebSockets.js' open handler; for some lengths of the
 *   prefix and usernames (a 34-character prefix like the suites' lost about 7 % of sockets) the build
 *   we use ended the socket inside res.upgrade. The set-up runs after the handler returns.
 * - The upgrade used to wait for Redis (the cluster-wide socket count) and then upgrade from
 *   res.cork(), which this build gets wrong when the upgrade keeps the socket's address: now and then
 *   under load, and every time for a request that says `Connection: close` (98 of 100 here). The
 *   upgrade now happens within its handler's call, and the count is taken once the socket is open
 *   (transport/server.ts, at the upgrade).
 * No socket may be dropped.
 */
describe.each(redisEngines)("socket set-up (%s)", (kind) => {
  it(`opens ${SOCKETS} chat and notifications sockets with varied usernames under a suite-length prefix, each getting its first event`, async () => {
    // `test:presence-kill-other:<8 hex>:` is 34 characters: the length that dropped sockets.
    const prefix = freshPrefix("presence-kill-other");
    expect(prefix).toHaveLength(34);
    if (kind === "redis") dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix, { CHAT_RATE_UPGRADES_PER_IP: "0", ...redisEnv(kind) });
    const names = ["alice", "bob", "carol", "u", "zoe"];
    const outcomes = new Map<string, number>();
    const dropped: string[] = [];
    for (let k = 0; k < SOCKETS; k++) {
      const user = (i: number) => `${names[(k + i) % names.length]}_${k.toString(36)}${"x".repeat((k * (i + 3)) % 11)}`;
      const path = k % 3 === 2 ? "/ws/notifications/" : k % 3 === 1 ? `/ws/notifications/${user(1)}/` : `/ws/${user(1)}/`;
      const client = await connect(g.url, path, await tokenFor(user(0)));
      await client.until((f) => f.length > 0 || client.closeCode !== null, 10000, `first event on ${path}`);
      const outcome = client.frames.length > 0 ? "first event" : `closed ${client.closeCode}`;
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      if (client.frames.length === 0) dropped.push(`${path} (token of ${user(0)}): closed ${client.closeCode}`);
      client.ws.terminate();
    }
    console.log(`[reliability] socket set-up (${kind}): ${JSON.stringify(Object.fromEntries(outcomes))} of ${SOCKETS} sockets under prefix ${prefix}`);
    expect(dropped, dropped.join("; ")).toEqual([]);
  }, 90_000);

  it("keeps a socket whose upgrade request says `Connection: close`, on every endpoint, with the per-user socket limit on", async () => {
    const prefix = freshPrefix("setup-conn-close");
    if (kind === "redis") dropPrefixAtEnd(prefix);
    // The default limit (100 sockets per user) is on: its Redis call once came before the upgrade.
    const g = await startGateway(prefix, { CHAT_RATE_UPGRADES_PER_IP: "0", ...redisEnv(kind) });
    const outcomes: string[] = [];
    for (let k = 0; k < 30; k++) {
      const path = [`/ws/peer${k}/`, `/ws/notifications/peer${k}/`, "/ws/notifications/"][k % 3]!;
      outcomes.push(`${path}: ${await rawUpgrade(g.port, `${path}?token=${await tokenFor(`closer${k}`)}`, "close")}`);
    }
    expect(outcomes.filter((o) => !o.endsWith(": frame"))).toEqual([]);
  }, 60_000);
});

describe("socket set-up against a stalled Redis", () => {
  it("closes a fresh socket with 1013 within the set-up bound instead of leaving it open and silent, and sets up sockets again once Redis answers", async () => {
    const port = await freePort();
    const redis = await startPrivateRedis(port);
    const g = await startGateway(freshPrefix("setup-stall"), { REDIS_URL: `redis://127.0.0.1:${port}` });
    const token = await tokenFor("staller");
    await connectReady(g.url, "/ws/notifications/", token);
    // SIGSTOP: connections stay open and commands go unanswered (a Redis stuck in a slow script or a
    // saturated network), so nothing fails fast. The first Redis call of a new socket is its user's
    // cluster-wide socket count.
    process.kill(redis.child.pid!, "SIGSTOP");
    onTestFinished(() => void process.kill(redis.child.pid!, "SIGCONT"));
    const stalled = await connect(g.url, `/ws/stall-peer/`, token);
    await stalled.until(() => stalled.closeCode !== null, 10_000, "close of a socket set up against a stalled Redis");
    expect({ code: stalled.closeCode, frames: stalled.frames }).toEqual({ code: 1013, frames: [] });
    process.kill(redis.child.pid!, "SIGCONT");
    const after = await connectReady(g.url, `/ws/stall-peer/`, token);
    expect(after.frames[0]).toMatchObject({ type: "online_user_list" });
  }, 60_000);
});
