import WebSocket from "ws";
import { Histogram, signToken, type HistogramSummary } from "@chat/loadgen";
import type { Cluster } from "../cluster.js";
import type { BenchContext } from "../context.js";
import { cpuDelta, snapshotCpu } from "../proc.js";
import { serverGroups } from "./load.js";

/** One group load: a group of `members`, `connected` of them with a chat socket open, messages at `rate`. */
export interface GroupShape {
  members: number;
  connected: number;
  /** Members who send, among the connected; together they send `rate` messages per second. */
  senders: number;
  rate: number;
  warmupMs: number;
  durationMs: number;
  drainMs: number;
}

export interface GroupLoadResult {
  shape: GroupShape;
  /** Messages sent in the timed window, and those refused (an error frame). */
  sent: number;
  refused: number;
  /** chat_message frames delivered to the other connected members' sockets, and how many were due. */
  delivered: number;
  expected: number;
  /** Messages (each to every connected member) and frames delivered per second of the window. */
  messagesPerS: number;
  framesPerS: number;
  /** From the send to each other member's receipt, ms. */
  latencyMs: HistogramSummary;
  /** Server CPU (gateways, worker, Redis, Postgres) per frame delivered and per message, µs; by group per frame. */
  cpuPerFrameUs: number;
  cpuPerMessageUs: number;
  cpuPerFrameUsByGroup: Record<string, number>;
  /** Others' CPU over the window, % of the machine (a busy machine makes the figures worse). */
  othersPct: number;
  /** Every accepted message persisted once, and every member's unread count equal to a recount. */
  persisted: number;
  wrongCounts: number;
}

const httpOf = (wsUrl: string) => wsUrl.replace(/^ws:/, "http:");

/** Opens a group chat socket and resolves once its first event (online_user_list) arrived. */
function openGroupSocket(url: string, groupId: string, token: string, onFrame: (text: string) => void): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}/ws/groups/${groupId}/`, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
    let greeted = false;
    const timer = setTimeout(() => reject(new Error("group socket: no first event within 15 s")), 15_000);
    ws.on("message", (data: Buffer) => {
      if (!greeted) {
        greeted = true;
        clearTimeout(timer);
        resolve(ws);
      }
      onFrame(data.toString());
    });
    ws.on("close", (code) => {
      clearTimeout(timer);
      if (!greeted) reject(new Error(`group socket closed (${code}) before its first event`));
    });
    ws.on("error", (err) => {
      clearTimeout(timer);
      if (!greeted) reject(err);
    });
  });
}

/**
 * A group of `members` (created over the API), `connected` of them on chat sockets spread over the
 * nodes; `senders` of them send `rate` messages per second in all. Each message is one publish on the
 * group's channel, delivered to every other connected member: what is measured is those deliveries
 * (frames per second, send-to-receipt latency) and the servers' CPU per delivered frame. Afterwards
 * every accepted message must be persisted and every member's unread count equal a recount.
 */
export async function groupLoad(ctx: BenchContext, cluster: Cluster, shape: GroupShape, label: string): Promise<GroupLoadResult> {
  const prefix = ctx.userPrefix(label);
  const users = Array.from({ length: shape.members }, (_, i) => `${prefix}${i}`);
  const token = (u: string) => signToken(u, ctx.env.secret);
  const created = await fetch(`${httpOf(cluster.urls[0]!)}/api/groups`, {
    method: "POST",
    headers: { authorization: `Bearer ${token(users[0]!)}`, "content-type": "application/json" },
    body: JSON.stringify({ name: `bench ${shape.members}`, members: users.slice(1) }),
  });
  if (created.status !== 201) throw new Error(`group of ${shape.members} not created: ${created.status} ${await created.text()}`);
  const groupId = ((await created.json()) as { id: string }).id;

  const latency = new Histogram();
  let timing = false;
  let delivered = 0;
  let refused = 0;
  const sockets: WebSocket[] = [];
  try {
    for (let i = 0; i < shape.connected; i += 50) {
      const batch = users.slice(i, Math.min(i + 50, shape.connected));
      sockets.push(
        ...(await Promise.all(
          batch.map((u, k) =>
            openGroupSocket(cluster.urls[(i + k) % cluster.urls.length]!, groupId, token(u), (text) => {
              if (!timing) return;
              // The send time rides in the client_id: `<sender index>.<send time µs>`; a sender's own echo is not a delivery.
              if (text.startsWith('{"type":"error"')) return void refused++;
              const at = text.indexOf('"client_id":"');
              if (at < 0 || !text.startsWith('{"type":"chat_message"')) return;
              const [from, sentUs] = text.slice(at + 13, text.indexOf('"', at + 13)).split(".");
              if (Number(from) === i + k) return;
              delivered++;
              latency.record(Math.max(1, Number(process.hrtime.bigint() / 1000n) - Number(sentUs)));
            }),
          ),
        )),
      );
    }
    const body = "x".repeat(Math.max(1, ctx.messageBytes));
    const send = (seconds: number, counted: boolean) =>
      new Promise<number>((resolve) => {
        const total = Math.round(shape.rate * seconds);
        const started = performance.now();
        let next = 0;
        const tick = () => {
          const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * shape.rate) + 1);
          for (; next < due; next++) {
            const sender = next % shape.senders;
            const clientId = `${sender}.${Number(process.hrtime.bigint() / 1000n)}`;
            sockets[sender]!.send(JSON.stringify({ type: "chat_message", message: body, client_id: counted ? clientId : `w${clientId}` }));
          }
          if (next < total) setTimeout(tick, 1);
          else resolve(total);
        };
        tick();
      });
    await send(shape.warmupMs / 1000, false);
    await new Promise((r) => setTimeout(r, Math.min(2000, shape.drainMs)));
    const groups = await serverGroups(ctx, cluster);
    const start = snapshotCpu(groups);
    const fromMs = performance.now();
    timing = true;
    const sent = await send(shape.durationMs / 1000, true);
    const sendEndMs = performance.now();
    const expected = sent * (shape.connected - 1);
    const deadline = sendEndMs + shape.drainMs;
    while (delivered + refused * (shape.connected - 1) < expected && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const windowS = (performance.now() - fromMs) / 1000;
    timing = false;
    const later = await serverGroups(ctx, cluster);
    for (const [name, pids] of Object.entries(later)) groups[name] = [...new Set([...(groups[name] ?? []), ...pids])];
    const cpu = cpuDelta(start, snapshotCpu(groups, true), groups);
    const per = (s: number, n: number) => (n > 0 ? (s / n) * 1e6 : 0);
    const accepted = sent - refused;

    // Persistence: the warm-up's and the window's messages, once the worker caught up.
    const conversation = `#${groupId}`;
    const all = Math.round((shape.rate * shape.warmupMs) / 1000) + accepted;
    let persisted = 0;
    for (const until = performance.now() + 20_000; ; ) {
      const [row] = await ctx.sql<{ n: string }[]>`SELECT count(*) AS n FROM messages WHERE room_id = ${conversation} AND event IS NULL`;
      persisted = Number(row?.n ?? 0);
      if (persisted >= all || performance.now() > until) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const [counts] = await ctx.sql<{ wrong: string }[]>`
      SELECT count(*) FILTER (WHERE cm.unread_count <> (
        SELECT count(*) FROM messages AS m
        WHERE m.room_id = ${conversation} AND m.event IS NULL AND m.from_user <> cm.username AND m.stream_position > cm.read_position)) AS wrong
      FROM conversation_members AS cm WHERE cm.other_username = ${conversation} AND cm.role IS NOT NULL`;
    return {
      shape,
      sent,
      refused,
      delivered,
      expected,
      messagesPerS: accepted / windowS,
      framesPerS: delivered / windowS,
      latencyMs: latency.summary(1000),
      cpuPerFrameUs: per(cpu.totalS, delivered),
      cpuPerMessageUs: per(cpu.totalS, accepted),
      cpuPerFrameUsByGroup: Object.fromEntries(Object.entries(cpu.groups).map(([k, v]) => [k, per(v, delivered)])),
      othersPct: (cpu.othersS / (cpu.wallS * ctx.env.cores)) * 100,
      persisted: persisted - (all - accepted),
      wrongCounts: Number(counts?.wrong ?? 0),
    };
  } finally {
    for (const ws of sockets) ws.terminate();
  }
}
