import { describe, expect, it } from "vitest";
import {
  connectReady,
  freshPrefix,
  refusedUpgrade,
  scrape,
  startGateway,
  startWorker,
  tokenFor,
  uniqueUser,
  waitFor,
  type Frame,
  type RunningProcess,
  type Scrape,
  type TestClient,
} from "./helpers/index.js";

/** Buckets cumulative, +Inf bucket equal to _count. */
function checkHistogram(s: Scrape, name: string): void {
  expect(s.types.get(name)).toBe("histogram");
  const buckets = s.samples.filter((x) => x.name === `${name}_bucket`);
  expect(buckets.length).toBeGreaterThan(1);
  for (let i = 1; i < buckets.length; i++) expect(buckets[i]!.value).toBeGreaterThanOrEqual(buckets[i - 1]!.value);
  expect(s.value(`${name}_bucket`, { le: "+Inf" })).toBe(s.value(`${name}_count`));
}

async function httpStatus(port: number, path: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  await res.arrayBuffer();
  return res.status;
}

function workerHttpPort(worker: RunningProcess): number {
  const line = worker.logs.find((l) => l["msg"] === "consuming");
  const port = Number(line?.["httpPort"]);
  expect(port).toBeGreaterThan(0);
  return port;
}

/** Frames a socket received from Redis channels: all but its first (direct) event and error frames. */
function fannedOut(c: TestClient): Frame[] {
  return c.frames.slice(1).filter((f) => f.type !== "error");
}

const count = (c: TestClient, type: string, pred: (f: Frame) => boolean = () => true) => c.frames.filter((f) => f.type === type && pred(f)).length;

describe("metrics", () => {
  it("reports exact gateway and worker series after a known workload, and both answer /healthz and /readyz", async () => {
    const prefix = freshPrefix("metrics");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    // One entry per batch: a batch sends one envelope per channel and target, so the envelope counts
    // below are those of one message (or read) at a time.
    const worker = await startWorker(prefix, { CHAT_WORKER_BATCH_SIZE: "1" });
    const wPort = workerHttpPort(worker);

    for (const port of [g1.port, g2.port, wPort]) {
      expect(await httpStatus(port, "/healthz")).toBe(200);
      // The worker logs "consuming" before its Redis connection is up: ready shortly after.
      await waitFor(async () => expect(await httpStatus(port, "/readyz")).toBe(200), 5000, 20);
    }

    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");
    const dave = uniqueUser("dave");
    const erin = uniqueUser("erin");
    const [ta, tb, tc, td] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol), tokenFor(dave)]);

    // Node 1 (measured): 3 chat, 2 notifications, 1 conversation-notifications socket, 4 channels.
    // Connected one at a time, each waiting for its own user_join, so the frames each gets are known.
    const aNotif = await connectReady(g1.url, "/ws/notifications/", ta);
    const bNotif = await connectReady(g1.url, "/ws/notifications/", tb);
    const bConv = await connectReady(g1.url, `/ws/notifications/${alice}/`, tb);
    const aBob = await connectReady(g1.url, `/ws/${bob}/`, ta);
    await aBob.next("user_join");
    const aBob2 = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const aDave = await connectReady(g1.url, `/ws/${dave}/`, ta);
    await aDave.next("user_join");
    expect(aNotif.frames[0]?.type).toBe("unread_count");
    expect(bNotif.frames[0]?.type).toBe("unread_count");
    expect(bConv.frames[0]?.type).toBe("single_conversation_unread_count");
    for (const c of [aBob, aBob2, aDave]) expect(c.frames[0]?.type).toBe("online_user_list");

    // Node 2: bob and dave join; node 1's sockets of those conversations get their user_join.
    const bChat = await connectReady(g2.url, `/ws/${alice}/`, tb);
    await Promise.all([aBob.until((f) => f.some((x) => x.type === "user_join" && x["user"] === bob)), aBob2.next("user_join")]);
    const dChat = await connectReady(g2.url, `/ws/${alice}/`, td);
    await aDave.until((f) => f.some((x) => x.type === "user_join" && x["user"] === dave));

    // A socket that comes and goes on node 1: its channel must be released afterwards.
    const cTmp = await connectReady(g1.url, `/ws/${erin}/`, tc);
    await cTmp.next("user_join");

    // Messages: 7 through node 1, 4 through node 2.
    for (let i = 0; i < 5; i++) aBob.send({ type: "chat_message", message: `a->b ${i}` });
    for (let i = 0; i < 3; i++) bChat.send({ type: "chat_message", message: `b->a ${i}` });
    for (let i = 0; i < 2; i++) aDave.send({ type: "chat_message", message: `a->d ${i}` });
    dChat.send({ type: "chat_message", message: "d->a" });
    await aBob2.until((f) => f.filter((x) => x.type === "chat_message").length === 8, 5000, "8 messages in alice/bob");
    await aDave.until((f) => f.filter((x) => x.type === "chat_message").length === 3, 5000, "3 messages in alice/dave");
    await aBob.until((f) => f.filter((x) => x.type === "chat_message").length === 8, 5000, "8 messages at aBob");
    await bChat.until((f) => f.filter((x) => x.type === "chat_message").length === 8, 5000, "8 messages at bChat");
    await dChat.until((f) => f.filter((x) => x.type === "chat_message").length === 3, 5000, "3 messages at dChat");

    // Reads: one through each node.
    bChat.send({ type: "read_messages" });
    aDave.send({ type: "read_messages" });

    // Bad frames: 3 invalid JSON on node 1, 1 on node 2; a frame on a notification socket is unknown_type.
    for (const bad of ["{", "not json", '{"type":"chat_message",']) aBob.send(bad);
    bChat.send("}{");
    bNotif.send({ type: "chat_message", message: "notification sockets take no frames" });
    await aBob.until((f) => f.filter((x) => x.type === "error").length === 3, 5000, "3 errors");
    expect(aBob.ofType("error").map((f) => f["code"])).toEqual(["invalid_json", "invalid_json", "invalid_json"]);
    await bChat.until((f) => f.some((x) => x.type === "error" && x["code"] === "invalid_json"), 5000, "error at bChat");
    await bNotif.until((f) => f.some((x) => x.type === "error" && x["code"] === "unknown_type"), 5000, "error at bNotif");

    // Refused upgrades on node 1: two 401s, one 400.
    expect((await refusedUpgrade(`${g1.url}/ws/notifications/?token=not-a-jwt`)).status).toBe(401);
    expect((await refusedUpgrade(`${g1.url}/ws/${bob}/?token=${await tokenFor(alice, { secret: "some-other-secret" })}`)).status).toBe(401);
    expect((await refusedUpgrade(`${g1.url}/ws/a/b/c/?token=${ta}`)).status).toBe(400);

    // Leaves: dave (node 2) leaves alice/dave, seen on node 1; carol's socket on node 1 closes.
    await dChat.close();
    await aDave.until((f) => f.some((x) => x.type === "user_leave" && x["user"] === dave), 5000, "user_leave dave");
    await cTmp.close();

    // Worker notifications reach node 1's notification sockets.
    await bNotif.until((f) => f.filter((x) => x.type === "new_message_notification").length === 5 && f.filter((x) => x.type === "unread_count").length === 2, 10000, "bob's notifications");
    await bConv.until(
      (f) =>
        f.filter((x) => x.type === "single_conversation_new_message_notification").length === 5 &&
        f.filter((x) => x.type === "single_conversation_last_message").length === 5 &&
        f.filter((x) => x.type === "single_conversation_unread_count").length === 1 + 5 + 1,
      10000,
      "bob's conversation notifications",
    );
    await aNotif.until((f) => f.filter((x) => x.type === "new_message_notification").length === 4 && f.filter((x) => x.type === "unread_count").length === 2, 10000, "alice's notifications");
    // Bob's read receipt reaches alice's two chat sockets with him on node 1.
    for (const s of [aBob, aBob2]) await s.until((f) => f.some((x) => x.type === "read_receipt" && x["user"] === bob), 10000, "bob's read receipt");

    // --- Worker: drained, then exact counts --------------------------------------------------------
    const w = await waitFor(async () => {
      const s = await scrape(wPort);
      expect(s.value("chat_worker_pending_entries")).toBe(0);
      expect(s.value("chat_worker_stream_lag")).toBe(0);
      expect(s.value("chat_worker_reads_applied_total")).toBe(2);
      return s;
    }, 10000);
    expect(w.types.get("chat_worker_pending_entries")).toBe("gauge");
    expect(w.types.get("chat_worker_stream_lag")).toBe("gauge");
    expect(w.types.get("chat_worker_messages_persisted_total")).toBe("counter");
    expect(w.value("chat_worker_messages_persisted_total")).toBe(11);
    // 2 envelopes per new message (all-conversations + one-conversation target), 3 per read (its
    // user's two, and the read receipt on the conversation's channel).
    expect(w.value("chat_worker_notifications_published_total")).toBe(2 * 11 + 3 * 2);
    expect(w.value("chat_worker_write_errors_total")).toBe(0);
    expect(w.value("chat_worker_dead_lettered_total")).toBe(0);
    checkHistogram(w, "chat_worker_batch_entries");
    expect(w.value("chat_worker_batch_entries_count")).toBeGreaterThanOrEqual(1);
    // Every entry (11 messages + 2 reads) was in exactly one batch.
    expect(w.value("chat_worker_batch_entries_sum")).toBe(13);
    checkHistogram(w, "chat_worker_batch_duration_seconds");
    expect(w.value("chat_worker_batch_duration_seconds_count")).toBe(w.value("chat_worker_batch_entries_count"));

    // --- Gateway 1: wait for carol's channel to be released (2 s grace), then compare with the clients
    const g = await waitFor(async () => {
      const s = await scrape(g1.port);
      // The 4 channels of the sockets (no probe channels on a single Redis).
      expect(s.value("chat_gateway_redis_subscriptions")).toBe(4);
      expect(s.value("chat_gateway_open_sockets", { endpoint: "chat" })).toBe(3);
      return s;
    }, 8000);
    const nodeOne = [aNotif, bNotif, bConv, aBob, aBob2, aDave, cTmp];
    const fanned = nodeOne.reduce((n, c) => n + fannedOut(c).length, 0);
    // The workload as computed by hand: user_join 6, chat_message 19, user_leave 1, notifications 6 + 16 + 5,
    // bob's read receipt to alice's 2 sockets.
    expect(fanned).toBe(6 + 19 + 1 + 6 + 16 + 5 + 2);
    expect(count(aBob, "user_join") + count(aBob2, "user_join") + count(aDave, "user_join") + count(cTmp, "user_join")).toBe(6);

    expect(g.types.get("chat_gateway_open_sockets")).toBe("gauge");
    expect(g.value("chat_gateway_open_sockets", { endpoint: "chat" })).toBe(3);
    expect(g.value("chat_gateway_open_sockets", { endpoint: "notifications" })).toBe(2);
    expect(g.value("chat_gateway_open_sockets", { endpoint: "conversation-notifications" })).toBe(1);
    expect(g.value("chat_gateway_messages_received_total")).toBe(7);
    expect(g.value("chat_gateway_reads_received_total")).toBe(1);
    expect(g.value("chat_gateway_frames_fanned_out_total")).toBe(fanned);
    expect(g.value("chat_gateway_redis_subscriptions")).toBe(4);
    expect(g.value("chat_gateway_partitions_unavailable")).toBe(0);
    expect(g.value("chat_gateway_resyncs_total")).toBe(0);
    expect(g.value("chat_gateway_frames_rejected_total", { reason: "invalid_json" })).toBe(3);
    expect(g.value("chat_gateway_frames_rejected_total", { reason: "unknown_type" })).toBe(1);
    expect(g.value("chat_gateway_upgrades_refused_total", { status: "401" })).toBe(2);
    expect(g.value("chat_gateway_upgrades_refused_total", { status: "400" })).toBe(1);
    expect(g.value("chat_gateway_upgrades_refused_total", { status: "503" }) ?? 0).toBe(0);
    expect(g.value("chat_gateway_drains_total")).toBe(0);
    checkHistogram(g, "chat_gateway_publish_to_deliver_seconds");
    const observed = g.value("chat_gateway_publish_to_deliver_seconds_count")!;
    expect(observed).toBeGreaterThan(0);
    // One observation per envelope dispatched to node 1: at least the 35 that reached one of its
    // sockets, at most the 41 published on channels it held (6 had a target no socket there wanted,
    // one of them alice's read receipt for dave, whose socket is on node 2).
    expect(observed).toBeGreaterThanOrEqual(35);
    expect(observed).toBeLessThanOrEqual(41);
    expect(g.value("chat_gateway_publish_to_deliver_seconds_sum")).toBeGreaterThanOrEqual(0);
    expect(g.value("chat_gateway_publish_to_deliver_seconds_sum")!).toBeLessThan(observed * 1);

    // --- Gateway 2: its own counts, not node 1's ---------------------------------------------------
    const h = await waitFor(async () => {
      const s = await scrape(g2.port);
      expect(s.value("chat_gateway_open_sockets", { endpoint: "chat" })).toBe(1);
      return s;
    }, 5000);
    expect(h.value("chat_gateway_messages_received_total")).toBe(4);
    expect(h.value("chat_gateway_reads_received_total")).toBe(1);
    expect(h.value("chat_gateway_frames_rejected_total", { reason: "invalid_json" })).toBe(1);
    expect(h.value("chat_gateway_upgrades_refused_total", { status: "401" }) ?? 0).toBe(0);

    // Nothing arrived on node 1's clients after the scrape was compared.
    expect(nodeOne.reduce((n, c) => n + fannedOut(c).length, 0)).toBe(fanned);
    for (const c of [...nodeOne, bChat, dChat]) expect(c.schemaViolations).toEqual([]);
    for (const port of [g1.port, g2.port, wPort]) {
      expect(await httpStatus(port, "/healthz")).toBe(200);
      expect(await httpStatus(port, "/readyz")).toBe(200);
    }
  });
});
