import { describe, expect, it } from "vitest";
import { connectReady, freshPrefix, scrape, startGateway, tokenFor, uniqueUser, type Gateway, type TestClient } from "./helpers/index.js";

const WAVE = 1000;

/** Opens WAVE chat sockets, 50 set-ups at a time, each ready (first event received): pairs of users, each on a socket to the other. */
async function burst(gateway: Gateway): Promise<TestClient[]> {
  const clients: TestClient[] = [];
  for (let i = 0; i < WAVE; i += 50) {
    const wave = Array.from({ length: 25 }, async () => {
      const [a, b] = [uniqueUser("heapa"), uniqueUser("heapb")];
      return Promise.all([connectReady(gateway.url, `/ws/${b}/`, await tokenFor(a)), connectReady(gateway.url, `/ws/${a}/`, await tokenFor(b))]);
    });
    for (const pair of await Promise.all(wave)) clients.push(...pair);
  }
  return clients;
}

const collections = (gateway: Gateway) => gateway.logs.filter((l) => l["msg"] === "idle heap collected");

// The garbage of socket set-ups is promoted to the old generation, which V8 leaves alone in an idle
// process: the gateway collects it itself once it goes idle (apps/gateway/src/idle-heap.ts).
describe("idle heap collection", () => {
  it("collects the set-ups' garbage once a burst of connections is over, and the sockets stay up", async () => {
    const gateway = await startGateway(freshPrefix("heap"), { CHAT_IDLE_GC_GROWTH_MB: "1" });
    // How much a burst grows the heap depends on when V8 collects by itself during it (a collection
    // of its own resets the baseline), so bursts continue until one leaves 1 MiB behind: never more
    // than a few.
    const clients: TestClient[] = [];
    let entry: Record<string, unknown> | undefined;
    for (let wave = 1; wave <= 4 && !entry; wave++) {
      clients.push(...(await burst(gateway)));
      const deadline = Date.now() + 4000;
      while (!(entry = collections(gateway)[0]) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    }
    expect(entry, `no idle collection after 4 bursts of ${WAVE} sockets`).toBeDefined();
    const before = Number(entry!["heapBeforeMiB"]);
    const after = Number(entry!["heapAfterMiB"]);
    expect(after, JSON.stringify(entry)).toBeLessThan(before);
    expect((await scrape(gateway.port)).value("chat_gateway_idle_collection_pause_seconds_count")).toBeGreaterThanOrEqual(1);

    // Nothing was torn down by the collection: every socket is open and a pair still talks.
    expect(clients.filter((c) => c.closeCode !== null)).toEqual([]);
    const [sender, recipient] = clients;
    sender!.send({ type: "chat_message", message: "after the collection", client_id: "heap-1" });
    const delivered = await recipient!.next("chat_message");
    expect(delivered["message"]).toBe("after the collection");
  }, 60000);

  it("does not collect when CHAT_IDLE_GC_GROWTH_MB is 0", async () => {
    const gateway = await startGateway(freshPrefix("heap"), { CHAT_IDLE_GC_GROWTH_MB: "0" });
    await burst(gateway);
    // Four check intervals of idle time: a collector that was on would have run by then.
    await new Promise((r) => setTimeout(r, 2500));
    expect(collections(gateway)).toEqual([]);
    expect((await scrape(gateway.port)).value("chat_gateway_idle_collection_pause_seconds_count")).toBe(0);
  });
});
