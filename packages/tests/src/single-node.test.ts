import { describe, expect, it } from "vitest";
import { REDIS_URL, DATABASE_URL, connectReady, freshPrefix, messagesBetween, runScript, spawnNode, testSql, tokenFor, uniqueUser, waitFor } from "./helpers/index.js";

// Register the pool's teardown at file level (the first query happens inside a test).
testSql();

const SINGLE_NODE = "apps/single-node/dist/main.js";

// The embedded engine is covered by the engine suite (engines/); this is the single node's choice of
// engine: Redis and Postgres when both URLs are set, a clear refusal when only one is.
describe("single node (npm start)", () => {
  it("runs a gateway and a worker in one process on Redis and Postgres when REDIS_URL and DATABASE_URL are both set, and says so", async () => {
    const prefix = freshPrefix("single");
    const node = await spawnNode(SINGLE_NODE, {
      env: { REDIS_URL, DATABASE_URL, CHAT_REDIS_PREFIX: prefix, PORT: "0", HOST: "127.0.0.1", CHAT_WORKER_HTTP_PORT: "0", CHAT_WORKER_HTTP_HOST: "127.0.0.1" },
      readyMessage: "started",
      timeoutMs: 20_000,
    });
    expect(node.ready).toMatchObject({ engine: "redis" });
    expect(String(node.ready["parts"])).toContain("redis:");
    const url = String(node.ready["url"]).replace(/^http/, "ws").replace(/\/$/, "");
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const a = await connectReady(url, `/ws/${bob}/`, await tokenFor(alice));
    a.send({ type: "chat_message", message: "one process, shared Redis" });
    const echo = await a.next("chat_message");
    // Persisted by the in-process worker into the same Postgres the cluster uses.
    await waitFor(async () => expect((await messagesBetween(alice, bob)).map((r) => r.id)).toEqual([echo["id"]]));
  });

  it.each([
    ["REDIS_URL", { REDIS_URL, DATABASE_URL: undefined }],
    ["DATABASE_URL", { REDIS_URL: undefined, DATABASE_URL }],
  ])("refuses to start with only %s set (exit 2), naming both variables", async (_, urls) => {
    const r = await runScript(SINGLE_NODE, [], { ...urls, PORT: "0", HOST: "127.0.0.1", CHAT_JWT_SECRET: "x" }, 10_000);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/REDIS_URL.*DATABASE_URL|DATABASE_URL.*REDIS_URL/);
    expect(r.stderr).toContain("set both");
  });
});
