import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { drizzle } from "drizzle-orm/postgres-js";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { listConversations, listMessages, messageById, schema, type Db } from "@chat/db";
import { DATABASE_URL, REPO_ROOT, testSql, uniqueUser } from "./helpers/index.js";

// The HTTP API's history and conversation queries, captured exactly as drizzle sends them (same
// functions the gateway calls), then EXPLAINed on a conversation of 100,000 messages.
// WRITE_HISTORY_EXPLAIN=1 also writes the plans to docs/history-explain.md.

const MESSAGES = 100_000;
const PEERS = 2_000;

interface Captured {
  query: string;
  params: unknown[];
}

const client = postgres(DATABASE_URL, { max: 1, onnotice: () => {}, types: { bigint: postgres.BigInt } });
afterAll(() => client.end({ timeout: 5 }));
let captured: Captured[] = [];
const db = drizzle(client, { schema, logger: { logQuery: (query, params) => void captured.push({ query, params }) } }) as unknown as Db;

/** Runs an API query function and returns the single SQL statement it sent. */
async function capture(run: () => Promise<unknown>): Promise<Captured> {
  captured = [];
  await run();
  expect(captured).toHaveLength(1);
  return captured[0]!;
}

type PlanNode = Record<string, unknown> & { "Node Type": string; Plans?: PlanNode[] };

async function explain(c: Captured, analyze = false): Promise<PlanNode> {
  const rows = await client.unsafe(`EXPLAIN (${analyze ? "ANALYZE, " : ""}FORMAT JSON) ${c.query}`, c.params as postgres.ParameterOrJSON<never>[]);
  const doc = (rows[0] as Record<string, unknown>)["QUERY PLAN"] as [{ Plan: PlanNode; "Execution Time"?: number }];
  return analyze ? Object.assign(doc[0].Plan, { executionMs: doc[0]["Execution Time"] }) : doc[0].Plan;
}

function nodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(nodes)];
}

/** The plan as indented text: node, direction, index, relation and conditions (the essential lines). */
function render(plan: PlanNode, depth = 0): string[] {
  const parts = [plan["Node Type"]];
  if (plan["Scan Direction"] === "Backward") parts.push("Backward");
  if (plan["Index Name"]) parts.push(`using ${String(plan["Index Name"])}`);
  if (plan["Relation Name"]) parts.push(`on ${String(plan["Relation Name"])}`);
  const lines = [`${"  ".repeat(depth)}${depth > 0 ? "-> " : ""}${parts.join(" ")}`];
  for (const key of ["Sort Key", "Presorted Key", "Index Cond", "Join Filter", "Hash Cond", "Filter"]) {
    const v = plan[key];
    if (v !== undefined) lines.push(`${"  ".repeat(depth + 2)}${key}: ${Array.isArray(v) ? v.join(", ") : String(v)}`);
  }
  for (const child of plan.Plans ?? []) lines.push(...render(child, depth + 1));
  return lines;
}

function expectIndexed(plan: PlanNode, index: string): void {
  const all = nodes(plan);
  const text = render(plan).join("\n");
  expect(all.some((n) => (n["Node Type"] === "Index Scan" || n["Node Type"] === "Index Only Scan") && n["Index Name"] === index), `uses ${index}:\n${text}`).toBe(true);
  expect(all.filter((n) => n["Node Type"] === "Seq Scan" && n["Relation Name"] === "messages"), `no Seq Scan on messages:\n${text}`).toEqual([]);
  expect(all.filter((n) => n["Node Type"] === "Bitmap Heap Scan" && n["Relation Name"] === "messages"), `no bitmap scan of the room:\n${text}`).toEqual([]);
}

describe("history and conversation queries on 100,000 messages", () => {
  it("use messages_room_position_idx and conversation_members_activity_idx (index scans, no Seq Scan on messages)", async () => {
    const sql = testSql();
    const a = uniqueUser("hist_a");
    const b = uniqueUser("hist_b");
    const room = a < b ? `${a}:${b}` : `${b}:${a}`;
    const base = BigInt(Date.now()) * 1_000_000n;
    try {
      await sql`
        INSERT INTO messages (id, stream_position, room_id, from_user, to_user, content, date_added)
        SELECT gen_random_uuid(), ${base.toString()}::bigint + g, ${room},
               CASE WHEN g % 2 = 0 THEN ${a} ELSE ${b} END, CASE WHEN g % 2 = 0 THEN ${b} ELSE ${a} END,
               'message ' || g, now() - (${MESSAGES} - g) * interval '1 second'
        FROM generate_series(1, ${MESSAGES}) AS g`;
      // The user's conversation list: this conversation (last message = the newest) and 2,000 others.
      await sql`
        INSERT INTO conversation_members (username, other_username, unread_count, last_message_id, last_activity_at)
        SELECT ${a}, ${b}, 0, id, date_added FROM messages WHERE room_id = ${room} ORDER BY stream_position DESC LIMIT 1`;
      await sql`
        INSERT INTO conversation_members (username, other_username, unread_count, last_activity_at)
        SELECT ${a}, ${a} || '_peer_' || g, g % 7, now() - g * interval '1 minute' FROM generate_series(1, ${PEERS}) AS g`;
      await sql`ANALYZE messages`;
      await sql`ANALYZE conversation_members`;
      const [count] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM messages WHERE room_id = ${room}`;
      expect(count!.n).toBe(MESSAGES);

      const [mid] = await sql<{ id: string }[]>`
        SELECT id FROM messages WHERE room_id = ${room} ORDER BY stream_position OFFSET ${MESSAGES / 2} LIMIT 1`;
      const pivotRow = await messageById(db, mid!.id);
      expect(pivotRow?.roomId).toBe(room);
      const pivot = pivotRow!.streamPosition;

      // The statements the API sends for a page of 50 (it asks for limit + 1 to know about a next page).
      const queries: [title: string, index: string, c: Captured][] = [
        ["Newest page: GET /api/rooms/{u}/messages?limit=50", "messages_room_position_idx", await capture(() => listMessages(db, room, { limit: 51 }))],
        ["Older page: GET /api/rooms/{u}/messages?limit=50&before=<id>", "messages_room_position_idx", await capture(() => listMessages(db, room, { limit: 51, before: pivot }))],
        ["Newer page: GET /api/rooms/{u}/messages?limit=50&after=<id>", "messages_room_position_idx", await capture(() => listMessages(db, room, { limit: 51, after: pivot }))],
        ["The cursor's message (before/after, check-url, refresh-url)", "messages_pkey", await capture(() => messageById(db, mid!.id))],
        ["Conversation list: GET /api/conversations?limit=20", "conversation_members_activity_idx", await capture(() => listConversations(db, a, { limit: 21 }))],
      ];
      const firstPage = await listConversations(db, a, { limit: 21 });
      expect(firstPage[0]?.otherUsername).toBe(b);
      const cursor = firstPage[19]!;
      queries.push([
        "Conversation list, next page: GET /api/conversations?limit=20&cursor=<c>",
        "conversation_members_activity_idx",
        await capture(() => listConversations(db, a, { limit: 21, after: { at: cursor.lastActivityAt, other: cursor.otherUsername } })),
      ]);
      // The captured statements really are the API's: they return the pages it serves.
      const newest = await listMessages(db, room, { limit: 51 });
      expect(newest).toHaveLength(51);
      expect(newest[0]!.streamPosition).toBe(base + BigInt(MESSAGES));

      const doc: string[] = [];
      for (const [title, index, c] of queries) {
        const plan = await explain(c);
        expectIndexed(plan, index);
        if (index === "conversation_members_activity_idx") {
          // The list joins each row's last message by primary key, never by scanning messages.
          expect(nodes(plan).filter((x) => x["Relation Name"] === "conversation_members" && x["Node Type"] === "Seq Scan")).toEqual([]);
        }
        const analyzed = await explain(c, true);
        doc.push(
          `## ${title}`,
          "",
          "```sql",
          c.query,
          "```",
          "",
          `Parameters: \`${JSON.stringify(c.params, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v))}\``,
          "",
          "```",
          ...render(plan),
          "```",
          "",
          `EXPLAIN ANALYZE execution time on the test machine: ${Number(analyzed["executionMs"]).toFixed(3)} ms.`,
          "",
        );
      }
      if (process.env["WRITE_HISTORY_EXPLAIN"] === "1") {
        writeFileSync(
          join(REPO_ROOT, "docs/history-explain.md"),
          [
            "# Query plans of the history and conversation endpoints",
            "",
            `Generated by \`WRITE_HISTORY_EXPLAIN=1 npx vitest run packages/tests/src/history-index.test.ts\`: one conversation of`,
            `${MESSAGES.toLocaleString("en-US")} messages (inserted with one \`INSERT ... SELECT generate_series\`), its user with ${PEERS.toLocaleString("en-US")} more`,
            "conversations, `ANALYZE`d, then `EXPLAIN (FORMAT JSON)` of the exact statements drizzle sends for the API",
            "(captured through its query logger from the functions the gateway calls). The test asserts an Index Scan",
            "(or Index Only Scan) on the named index and no Seq Scan on `messages`. Latency figures at p99 come from",
            "`npm run bench:history`, not from this test.",
            "",
            ...doc,
          ]
            .join("\n")
            .replaceAll(a, "<user a>")
            .replaceAll(b, "<user b>"),
        );
      }
    } finally {
      await sql`DELETE FROM messages WHERE room_id = ${room}`;
      await sql`DELETE FROM conversation_members WHERE username = ${a} OR other_username = ${a}`;
    }
    const [left] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM messages WHERE room_id = ${room}`;
    expect(left!.n).toBe(0);
  });
});
