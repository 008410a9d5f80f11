import { describe, expect, it } from "vitest";
import {
  connectReady,
  freshPrefix,
  startGateway,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  unreadOf,
  waitFor,
} from "./helpers/index.js";
import { countFrom, holdMemberRow } from "./helpers/db.js";

// Register the pool's teardown at file level (first used inside a test).
testSql();

describe("worker stall", () => {
  it("abandons a batch that gets no answer past CHAT_WORKER_STALL_TIMEOUT_MS, replaces its pool, and later persists it exactly once", async () => {
    const prefix = freshPrefix("stall");
    const g = await startGateway(prefix, { CHAT_RATE_MESSAGES_PER_SECOND: "0" });
    // No claims: the stalled batch stays with its worker, which must get out of the stall itself.
    const w = await startWorker(prefix, { CHAT_WORKER_STALL_TIMEOUT_MS: "1500", CHAT_WORKER_CLAIM_IDLE_MS: "60000" });
    const [a, b] = [uniqueUser("a"), uniqueUser("b")];
    const chat = await connectReady(g.url, `/ws/${b}/`, await tokenFor(a));
    chat.send({ type: "chat_message", message: "first" });
    await chat.next("chat_message");
    await waitFor(async () => expect(await countFrom(a, b)).toBe(1));

    // A row lock the worker's batch waits on without end: its statements get no answer.
    const lock = await holdMemberRow(b, a);
    try {
      for (let i = 0; i < 20; i++) chat.send({ type: "chat_message", message: `m${i}` });
      for (let i = 0; i < 20; i++) await chat.next("chat_message");
      const stalls = () => w.logs.filter((l) => l["msg"] === "replacing the Postgres pool" && (l["err"] as { type?: string } | undefined)?.type === "BatchStalledError");
      await waitFor(() => expect(stalls().length).toBeGreaterThanOrEqual(2), 15000);
      expect(await countFrom(a, b)).toBe(1);
    } finally {
      await lock.release();
    }

    // Released: the retried batch commits once; no abandoned attempt committed anything.
    await waitFor(async () => expect(await countFrom(a, b)).toBe(21), 15000);
    expect(await unreadOf(b, a)).toBe(21);
    expect(w.child.exitCode).toBeNull();
    const res = await fetch(`http://127.0.0.1:${String(w.logs.find((l) => l["msg"] === "consuming")!["httpPort"])}/metrics`);
    expect(await res.text()).toMatch(/chat_worker_pool_replacements_total [1-9]/);
  }, 45_000);
});
