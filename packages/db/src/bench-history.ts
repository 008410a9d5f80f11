import { randomBytes } from "node:crypto";
import { createDb } from "./client.js";
import { runMigrations } from "./migrate.js";
import { listConversations, listMessages } from "./queries/history.js";

// `npm run bench:history`: latency of the HTTP API's history and conversation queries on a
// conversation of 100,000 messages (and a user with 2,000 conversations), through the same
// functions the gateway calls. Figures, not assertions: see docs/benchmarks.md.
const url = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/chat_bench";
const rows = Number(process.env["BENCH_MESSAGES"] ?? 100_000);
const iterations = Number(process.env["BENCH_ITERATIONS"] ?? 1000);
await runMigrations(url);
const { db, sql, close } = createDb(url, { max: 1 });
const tag = randomBytes(4).toString("hex");
const [a, b] = [`bench_a_${tag}`, `bench_b_${tag}`];
const room = `${a}:${b}`;
const base = BigInt(Date.now()) * 1_000_000n;

await sql`
  INSERT INTO messages (id, stream_position, room_id, from_user, to_user, content, date_added)
  SELECT gen_random_uuid(), ${base.toString()}::bigint + g, ${room},
         CASE WHEN g % 2 = 0 THEN ${a} ELSE ${b} END, CASE WHEN g % 2 = 0 THEN ${b} ELSE ${a} END,
         'message ' || g, now() - (${rows} - g) * interval '1 second'
  FROM generate_series(1, ${rows}) AS g`;
await sql`
  INSERT INTO conversation_members (username, other_username, unread_count, last_activity_at)
  SELECT ${a}, 'peer_' || ${tag} || '_' || g, g % 7, now() - g * interval '1 minute' FROM generate_series(1, 2000) AS g`;
await sql`ANALYZE messages`;
await sql`ANALYZE conversation_members`;

const mid = await sql<{ stream_position: bigint }[]>`
  SELECT stream_position FROM messages WHERE room_id = ${room} ORDER BY stream_position LIMIT 1 OFFSET ${Math.floor(rows / 2)}`;
const pivot = BigInt(mid[0]!.stream_position);

async function measure(name: string, run: () => Promise<unknown>) {
  for (let i = 0; i < 50; i++) await run();
  const times: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t = process.hrtime.bigint();
    await run();
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  times.sort((x, y) => x - y);
  const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(3);
  return { query: name, iterations, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: times.at(-1)!.toFixed(3) };
}

const results = [
  await measure("newest page of 50", () => listMessages(db, room, { limit: 51 })),
  await measure("page of 50 before the middle", () => listMessages(db, room, { limit: 51, before: pivot })),
  await measure("page of 50 after the middle", () => listMessages(db, room, { limit: 51, after: pivot })),
  await measure("conversation list, first 20 of 2000", () => listConversations(db, a, { limit: 21 })),
];
await sql`DELETE FROM messages WHERE room_id = ${room}`;
await sql`DELETE FROM conversation_members WHERE username = ${a}`;
await close();
console.table(results);
process.stdout.write(JSON.stringify({ messages: rows, results }) + "\n");
