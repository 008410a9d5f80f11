import { describe, expect, it } from "vitest";
import { connectReady, freshPrefix, startGateway, tokenFor, uniqueUser, waitFor, type Gateway, type TestClient } from "./helpers/index.js";

const SOCKETS = 1500;

/** Opens SOCKETS chat sockets, 50 set-ups at a time, each ready (first event received): pairs of users, each on a socket to the other. */
async function burst(gateway: Gateway): Promise<TestClient[]> {
  const clients: TestClient[] = [];
  for (let i = 0; i < SOCKETS; i += 50) {
    const wave = Array.from({ length: 25 }, async () => {
      const [a, b] = [uniqueUser("heapa"), uniqueUser("heapb")];
      return Promise.all([connectReady(gateway.url, `/ws/${b}/`, await tokenFor(a)), connectReady(gateway.url, `/ws/${a}/`, await tokenFor(b))]);
    });
    for (const pair of await Promise.all(wave)) clients.push(...pair);
  }
  return clients;
}

const collections = (gateway: Gateway) => gateway.logs.filter((l) => l["msg"] === "idle heap collected");

async function scrapeCount(gateway: Gateway): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${gateway.port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("chat_gateway_idle_collection_pause_seconds_count"));
  return Number(line?.split(" ")[1]);
}

// The garbage of socket set-ups is promoted to the old generation, which V8 leaves alone in an idle
// process: the gateway collects it itself once it goes idle (apps/gateway/src/idle-heap.ts).
describe("idle heap collection", () => {
  it("collects the set-ups' garbage once a burst of connections is over, and the sockets stay up", async () => {
    const gateway = await startGateway(freshPrefix("heap"), { CHAT_IDLE_GC_GROWTH_MB: "1" });
    const clients = await burst(gateway);
    const [entry] = await waitFor(() => {
      const found = collections(gateway);
      if (found.length === 0) throw new Error(`no idle collection; heap logs: ${JSON.stringify(gateway.logs.filter((l) => l["component"] === "gateway:heap"))}`);
      return found;
    }, 10000);
    const before = Number(entry!["heapBeforeMiB"]);
    const after = Number(entry!["heapAfterMiB"]);
    expect(before - after, JSON.stringify(entry)).toBeGreaterThan(0.5);
    expect(await scrapeCount(gateway)).toBeGreaterThanOrEqual(1);

    // Nothing was torn down by the collection: every socket is open and a pair still talks.
    expect(clients.filter((c) => c.closeCode !== null)).toEqual([]);
    const [sender, recipient] = clients;
    sender!.send({ type: "chat_message", message: "after the collection", client_id: "heap-1" });
    const delivered = await recipient!.next("chat_message");
    expect(delivered["message"]).toBe("after the collection");
  });

  it("does not collect when CHAT_IDLE_GC_GROWTH_MB is 0", async () => {
    const gateway = await startGateway(freshPrefix("heap"), { CHAT_IDLE_GC_GROWTH_MB: "0" });
    await burst(gateway);
    // Four check intervals of idle time: a collector that was on would have run by then.
    await new Promise((r) => setTimeout(r, 2500));
    expect(collections(gateway)).toEqual([]);
    expect(await scrapeCount(gateway)).toBe(0);
  });
});
