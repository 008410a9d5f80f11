import { describe, expect, it } from "vitest";
import { connect, freshPrefix, startGateway, tokenFor } from "./helpers/index.js";
import { dropPrefixAtEnd } from "./helpers/redis.js";

const SOCKETS = 300;

/**
 * A fresh socket was, now and then, ended without a close frame (1006) right after its 101: the
 * session was set up inside uWebSockets.js' open handler, and for some lengths of the prefix and
 * usernames (a 34-character prefix like the suites' lost about 7 % of sockets, others none) the build
 * we use ended the socket inside res.upgrade. The set-up now runs after the handler returns.
 *
 * A rarer drop is left, a fault of the same build's HttpResponse.cork() after an asynchronous upgrade
 * (transport/server.ts, at the upgrade; fixed upstream in uWebSockets fe7c01a, in no build for this
 * machine's glibc): about one socket in a few hundred on a loaded machine, none on an idle one. So
 * this test allows 1 % (3 of 300); the fault it guards against dropped 26 of 300.
 */
describe("socket set-up", () => {
  it(`opens ${SOCKETS} chat and notifications sockets with varied usernames under a suite-length prefix, each getting its first event, at most 1 % dropped`, async () => {
    // `test:presence-kill-other:<8 hex>:` is 34 characters: the length that dropped sockets.
    const prefix = freshPrefix("presence-kill-other");
    expect(prefix).toHaveLength(34);
    dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix, { CHAT_RATE_UPGRADES_PER_IP: "0" });
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
    console.log(`[reliability] socket set-up: ${JSON.stringify(Object.fromEntries(outcomes))} of ${SOCKETS} sockets under prefix ${prefix}`);
    expect(dropped.length, dropped.join("; ")).toBeLessThanOrEqual(SOCKETS / 100);
  }, 90_000);
});
