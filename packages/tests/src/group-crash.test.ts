import { describe, expect, it } from "vitest";
import { groupConversation, redisNames } from "@chat/bus";
import {
  acceptedIds,
  connectReady,
  freshPrefix,
  sendRound,
  startGateway,
  startWorker,
  testRedis,
  testSql,
  tokenFor,
  uniqueUser,
  unreadOf,
  userWhose,
  waitFor,
  waitForLeaseShares,
  type Flow,
  type Gateway,
  type RunningProcess,
} from "./helpers/index.js";

const httpOf = (wsUrl: string) => wsUrl.replace(/^ws:/, "http:");

/** Messages of the group stored so far. */
async function storedInGroup(conversation: string): Promise<number> {
  const [row] = await testSql()<{ n: number }[]>`SELECT count(*)::int AS n FROM messages WHERE room_id = ${conversation} AND event IS NULL`;
  return row!.n;
}

/** A group of 50 made over the API by its first member; resolves to its id. */
async function groupOf50(gateway: Gateway, members: string[], tokens: string[]): Promise<string> {
  const created = await fetch(`${httpOf(gateway.url)}/api/groups`, {
    method: "POST",
    headers: { authorization: `Bearer ${tokens[0]}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "fifty", members: members.slice(1) }),
  });
  expect(created.status).toBe(201);
  return ((await created.json()) as { id: string }).id;
}

/**
 * Every accepted group message is stored once, nothing is left pending in the group's partition, every
 * member's group count equals a recount, and every member's total equals the sum of their counts.
 */
async function expectGroupExact(prefix: string, id: string, members: string[], flows: Flow[]): Promise<{ groupIds: string[]; accepted: Map<Flow, string[]> }> {
  const conversation = groupConversation(id);
  const accepted = await acceptedIds(flows);
  const groupIds = flows.filter((f) => f.to === id).flatMap((f) => accepted.get(f)!);
  const sql = testSql();
  await waitFor(async () => expect(await storedInGroup(conversation)).toBe(groupIds.length), 20_000, 100);
  const rows = await sql<{ id: string; content: string }[]>`SELECT id::text, content FROM messages WHERE room_id = ${conversation} AND event IS NULL`;
  expect(new Set(rows.map((r) => r.id))).toEqual(new Set(groupIds));
  expect(new Set(rows.map((r) => r.content)).size).toBe(rows.length);
  const names = redisNames(prefix);
  await waitFor(async () => {
    const groupInfo = (await testRedis().xinfo("GROUPS", names.stream(names.partitionOf(conversation)))) as unknown[][];
    const fields = groupInfo.find((g) => g[1] === names.group)!;
    expect(Number(fields[fields.indexOf("pending") + 1])).toBe(0);
    expect(Number(fields[fields.indexOf("lag") + 1])).toBe(0);
  }, 20_000, 100);
  const counts = await sql<{ username: string; unread_count: number; recount: number }[]>`
    SELECT cm.username, cm.unread_count,
           (SELECT count(*)::int FROM messages AS m
            WHERE m.room_id = ${conversation} AND m.event IS NULL AND m.from_user <> cm.username AND m.stream_position > cm.read_position) AS recount
    FROM conversation_members AS cm WHERE cm.other_username = ${conversation} AND cm.role IS NOT NULL`;
  expect(counts).toHaveLength(members.length);
  for (const c of counts) expect(c.unread_count, `unread of ${c.username}`).toBe(c.recount);
  // The totals settle once every other conversation's batches are in too.
  await waitFor(async () => {
    const totals = await sql<{ username: string; total: number; sum: number }[]>`
      SELECT uu.username, uu.total, (SELECT coalesce(sum(unread_count), 0)::int FROM conversation_members WHERE username = uu.username) AS sum
      FROM user_unread AS uu WHERE uu.username = ANY (${members}::text[])`;
    expect(totals.length).toBeGreaterThanOrEqual(members.length - 10);
    for (const t of totals) expect(t.total, `total of ${t.username}`).toBe(t.sum);
  }, 10_000, 100);
  return { groupIds, accepted };
}

/**
 * A 50-member group where five members send (two of them also read as they go) and one of them has a
 * 1:1 conversation going at the same time, while the worker is SIGKILLed again and again: every
 * accepted message is stored once, and every member's counters equal a recount from the messages.
 */
describe("workers and a group conversation", () => {
  it("stores every message of a 50-member group once and keeps every member's unread count equal to a recount, through repeated SIGKILLs", async () => {
    const prefix = freshPrefix("group-crash");
    const env = { CHAT_RATE_MESSAGES_PER_SECOND: "0" };
    const gateways = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    const members = Array.from({ length: 50 }, (_, i) => uniqueUser(`m${i}`));
    const tokens = await Promise.all(members.map((m) => tokenFor(m)));
    const id = await groupOf50(gateways[0]!, members, tokens);
    const conversation = groupConversation(id);

    const flows: Flow[] = await Promise.all(
      [0, 1, 2, 3, 4].map(async (k) => ({ from: members[k]!, to: id, chat: await connectReady(gateways[k % 2]!.url, `/ws/groups/${id}/`, tokens[k]!), sent: 0 })),
    );
    // A 1:1 conversation of a member, at the same time: its batches take some of the same user locks.
    flows.push({ from: members[0]!, to: members[10]!, chat: await connectReady(gateways[1]!.url, `/ws/${members[10]}/`, tokens[0]!), sent: 0 });
    const readers = [flows[1]!, flows[3]!];

    const workerEnv = { CHAT_WORKER_BATCH_SIZE: "4", CHAT_WORKER_LEASE_TTL_MS: "2000" };
    const rounds = 80; // x 6 flows = 480 messages
    let sending = true;
    const sender = (async () => {
      for (let r = 0; r < rounds; r++) {
        sendRound(flows);
        if (r % 7 === 3) for (const f of readers) f.chat.send({ type: "read_messages" });
        // Pacing only: spread the traffic over the kills below.
        await new Promise((resolve) => setTimeout(resolve, 40));
      }
      sending = false;
    })();

    const workers: RunningProcess[] = [];
    let kills = 0;
    try {
      while (kills < 5 && (sending || kills < 3)) {
        const before = await storedInGroup(conversation);
        const worker = await startWorker(prefix, { ...workerEnv, CHAT_WORKER_NAME: `${prefix}w${kills}` });
        workers.push(worker);
        // Killed as soon as it has written something: in the middle of the stream.
        await waitFor(async () => (await storedInGroup(conversation)) > before, 10000, 10);
        expect(await worker.stop("SIGKILL")).toBeNull();
        kills++;
      }
    } finally {
      await sender;
    }
    expect(kills).toBeGreaterThanOrEqual(3);
    workers.push(await startWorker(prefix, workerEnv));

    const { groupIds, accepted } = await expectGroupExact(prefix, id, members, flows);
    const direct = flows.at(-1)!;
    const [directRow] = await testSql()<{ n: number }[]>`SELECT count(*)::int AS n FROM messages WHERE from_user = ${direct.from} AND to_user = ${direct.to}`;
    expect(directRow!.n).toBe(accepted.get(direct)!.length);
    const counts = await testSql()<{ username: string; unread_count: number }[]>`
      SELECT username, unread_count FROM conversation_members WHERE other_username = ${conversation} AND role IS NOT NULL`;
    // The readers read some, the others none: a silent member's count is every message but their own.
    expect(counts.find((c) => c.username === members[20])!.unread_count).toBe(groupIds.length);
    for (const f of readers) expect(counts.find((c) => c.username === f.from)!.unread_count).toBeLessThan(groupIds.length);
    console.log(`[reliability] group crash: ${groupIds.length} group messages to 50 members and ${accepted.get(direct)!.length} direct ones through ${kills} worker kills; every count equals its recount`);
  }, 90_000);

  it("keeps a 50-member group's counts and its members' totals exact while three workers write the group and the members' 1:1 conversations at once", async () => {
    const prefix = freshPrefix("group-workers");
    const env = { CHAT_RATE_MESSAGES_PER_SECOND: "0" };
    const gateways = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    await Promise.all([0, 1, 2].map(() => startWorker(prefix, { CHAT_WORKER_BATCH_SIZE: "3" })));
    const names = redisNames(prefix);
    const owners = await waitForLeaseShares(testRedis(), names, 3);
    const members = Array.from({ length: 50 }, (_, i) => uniqueUser(`w${i}`));
    const tokens = await Promise.all(members.map((m) => tokenFor(m)));
    const id = await groupOf50(gateways[0]!, members, tokens);
    const groupOwner = owners[names.partitionOf(groupConversation(id))];
    const flows: Flow[] = await Promise.all(
      [0, 1, 2, 3].map(async (k) => ({ from: members[k]!, to: id, chat: await connectReady(gateways[k % 2]!.url, `/ws/groups/${id}/`, tokens[k]!), sent: 0 })),
    );
    // Outsiders write to members in conversations another worker writes: those members' totals move
    // in two workers' batches at once.
    for (const k of [10, 11, 12]) {
      const outsider = userWhose(names, "o", members[k]!, (p) => owners[p] !== groupOwner);
      flows.push({ from: outsider, to: members[k]!, chat: await connectReady(gateways[k % 2]!.url, `/ws/${members[k]}/`, await tokenFor(outsider)), sent: 0 });
    }
    for (let r = 0; r < 60; r++) sendRound(flows);
    const { accepted } = await expectGroupExact(prefix, id, members, flows);
    for (const f of flows.slice(4)) expect(await unreadOf(f.to, f.from), `unread of ${f.to} from ${f.from}`).toBe(accepted.get(f)!.length);
    const totals = await testSql()<{ username: string; total: number }[]>`SELECT username, total FROM user_unread WHERE username = ANY (${[10, 11, 12].map((k) => members[k]!)}::text[])`;
    // Each of them: every group message (they sent none) plus the outsider's.
    for (const t of totals) expect(t.total).toBe(4 * 60 + 60);
  }, 90_000);
});
