import { Cluster } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { redisNames, slotOf, type RedisNames } from "@chat/bus";
import {
  connectReady,
  freshPrefix,
  startGateway,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type Gateway,
  type RunningProcess,
  type TestClient,
} from "./helpers/index.js";
import { missingClusterBinaries, startRedisCluster, type LocalRedisCluster } from "@chat/redis-cluster-harness";

// A master of a Redis Cluster SIGKILLed (its replica promoted) while messages with client_ids flow
// through two gateways in conversations on every master. Its own cluster: the run's shared one is
// not to lose a master.

// Register the pool's teardown at file level (the first query happens inside the test).
testSql();

const MISSING = missingClusterBinaries();
const NO_RATE_LIMIT = { CHAT_RATE_MESSAGES_PER_SECOND: "0" };
/** Conversations per master (both directions of each, the two senders on different gateways). */
const CONVERSATIONS_PER_MASTER = 2;
/** Each direction sends one message this often (12 directions: ~120 messages/s). */
const SEND_INTERVAL_MS = 100;
/** Flow before the kill. */
const WARMUP_MS = 2000;
/** Flow after the harness sees the promotion (the cluster healthy again). */
const AFTER_PROMOTION_MS = 9000;
/** Every send gets exactly one answer (its echo, or `error` unavailable) within this. */
const ANSWER_BOUND_MS = 10_000;
/** A send to a conversation on a master that stays up is echoed within this, during the failover too. */
const HEALTHY_SIDE_BOUND_MS = 3000;
/**
 * Sends made this long after the promotion (as the harness sees it) are all echoed and reach the
 * recipient's socket: the gateways' cluster clients refresh their slot map every 5 s at the latest
 * (slotsRefreshInterval), and move their sharded subscribers to the promoted master then.
 */
const RESUME_BOUND_MS = 6000;
/** The last round, sent after the flow: echoed and delivered within this. */
const FINAL_BOUND_MS = 5000;

interface Conversation {
  index: number;
  a: string;
  b: string;
  partition: number;
  slot: number;
  /** Port of the master holding the partition at the start. */
  masterPort: number;
  onVictim: boolean;
}

interface Send {
  flow: Flow;
  clientId: string;
  text: string;
  phase: "flow" | "final";
  sentAt: number;
  /** The first answer: the sender's echo, or an error with the client_id. */
  answer: { kind: "echo"; at: number; id: string } | { kind: "error"; at: number; code: string; message: string } | null;
  /**
   * Echoes (distinct message ids) and errors with this client_id the sender got, in all. A replay
   * after a 4002 may repeat an echo the socket already had (docs/protocol.md: with
   * CHAT_REDIS_MIN_REPLICAS_ACK the echo can come before an earlier message of the partner, so the
   * `since` a client sends can precede it); clients drop a message id they already show.
   */
  answers: number;
  echoIds: Set<string>;
  /** When the recipient's socket got it. */
  deliveredAt: number | null;
}

interface Flow {
  conversation: Conversation;
  from: string;
  to: string;
  gateway: number;
  chat: TestClient;
  sends: Send[];
  byClientId: Map<string, Send>;
  /** Frames this socket got that are none of the expected ones (errors without a client_id, unknown client_ids). */
  strays: unknown[];
  /** Id of the newest chat_message this direction's sockets got: the ?since= of a reconnect. */
  lastId: string | null;
  /** Closes with 4002 (catch up) this direction's sockets got, and when. */
  resyncs: number[];
}

const side = (c: Conversation) => (c.onVictim ? "killed" : "other");

/** One user's all-conversations notifications socket, reconnected as the browser client does after a 4002. */
interface Notifications {
  user: string;
  /** Whether the user's channel lives on the master that is killed. */
  onVictim: boolean;
  gateway: number;
  socket: TestClient;
  /** Closes with 4002 its sockets got. */
  resyncs: number;
  /** The newest total (unread_count, new_message_notification) any of its sockets got. */
  last: number | null;
}

/** The group backlog of one partition's stream: entries delivered but not acknowledged, or not delivered yet. */
async function partitionBacklog(redis: Cluster, names: RedisNames, partition: number): Promise<string | null> {
  const stream = names.stream(partition);
  if ((await redis.exists(stream)) === 0) return null;
  const info = (await redis.xinfo("STREAM", stream)) as unknown[];
  const lastGenerated = String(info[info.indexOf("last-generated-id") + 1]);
  const groups = (await redis.xinfo("GROUPS", stream)) as unknown[][];
  const group = groups.map((g) => Object.fromEntries(Array.from({ length: g.length / 2 }, (_, i) => [String(g[2 * i]), g[2 * i + 1]]))).find((g) => g["name"] === names.group);
  if (!group) return `partition ${partition}: no group`;
  if (Number(group["pending"]) !== 0) return `partition ${partition}: ${group["pending"]} pending`;
  if (String(group["last-delivered-id"]) !== lastGenerated) return `partition ${partition}: delivered up to ${group["last-delivered-id"]}, last entry ${lastGenerated}`;
  return null;
}

/** Warnings and errors of a process's log and the bus events worth seeing, grouped, times from `t0`. */
function logSummary(name: string, p: RunningProcess, t0: number): string {
  const interesting = (l: Record<string, unknown>) =>
    l["level"] === "warn" || l["level"] === "error" || l["level"] === "fatal" || /redis|resubscri|echo|lease|partition|refused/i.test(String(l["msg"]));
  const groups = new Map<string, { n: number; first: number; last: number; sample: Record<string, unknown> }>();
  for (const l of p.logs.filter(interesting)) {
    const err = l["err"];
    const errText = typeof err === "string" ? err : err && typeof err === "object" ? String((err as Record<string, unknown>)["message"]) : "";
    const key = `${l["level"]} ${l["msg"]}${errText ? ` (${errText.slice(0, 120)})` : ""}${l["client"] ? ` [${l["client"]}]` : ""}`;
    const at = Date.parse(String(l["time"])) - t0;
    const g = groups.get(key);
    if (g) {
      g.n++;
      g.last = at;
    } else groups.set(key, { n: 1, first: at, last: at, sample: l });
  }
  const lines = [...groups].map(([key, g]) => `  ${g.n} x ${key}, at ${g.first}..${g.last} ms`);
  return `--- ${name} (${p.logs.length} log lines; times from the kill) ---\n${lines.join("\n") || "  (nothing)"}`;
}

describe.skipIf(MISSING.length > 0)(`Redis Cluster master failover${MISSING.length ? ` (skipped: no ${MISSING.join(" or ")} on PATH)` : ""}`, () => {
  let cluster: LocalRedisCluster | undefined;

  beforeAll(async () => {
    cluster = await startRedisCluster();
  }, 60_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  it(
    "answers every send (echo or error unavailable), keeps the other masters' conversations flowing, persists every echoed message once with exact unread counts, and resumes delivery after the promotion",
    { timeout: 80_000 },
    async () => {
      const c = cluster!;
      const prefix = freshPrefix("cfailover");
      const names = redisNames(prefix);

      // Which master holds each partition; the victim is one of them.
      const masters = await c.masters();
      expect(masters).toHaveLength(3);
      const victim = masters[0]!;
      const partitionMaster = await Promise.all(Array.from({ length: names.partitions }, async (_, p) => (await c.masterOfSlot(slotOf(names.stream(p)))).port));

      // Pairs of users picked so that each master holds CONVERSATIONS_PER_MASTER conversations.
      const conversations: Conversation[] = [];
      const perMaster = new Map(masters.map((m) => [m.port, 0]));
      for (let tries = 0; [...perMaster.values()].some((n) => n < CONVERSATIONS_PER_MASTER); tries++) {
        expect(tries).toBeLessThan(10_000);
        const a = uniqueUser("fa");
        const b = uniqueUser("fb");
        const room = names.roomId(a, b);
        const partition = names.partitionOf(room);
        const masterPort = partitionMaster[partition]!;
        if (perMaster.get(masterPort)! >= CONVERSATIONS_PER_MASTER) continue;
        // The first conversation of each master has a user whose channel is on the victim: some
        // notification sockets are surely there (their resync is checked below).
        if (perMaster.get(masterPort) === 0 && (await c.masterOfSlot(slotOf(names.userChannel(a)))).port !== victim.port) continue;
        perMaster.set(masterPort, perMaster.get(masterPort)! + 1);
        const slot = slotOf(names.stream(partition));
        // The stream and the shard channel of a conversation lie in one slot.
        expect(slotOf(names.roomChannel(room))).toBe(slot);
        conversations.push({ index: conversations.length, a, b, partition, slot, masterPort, onVictim: masterPort === victim.port });
      }

      const env = { REDIS_URL: c.url, ...NO_RATE_LIMIT };
      const [gateways, workers] = await Promise.all([
        Promise.all([startGateway(prefix, env), startGateway(prefix, env)]),
        Promise.all([startWorker(prefix, { REDIS_URL: c.url }), startWorker(prefix, { REDIS_URL: c.url })]),
      ]);

      // Both directions of every conversation; the two senders of one conversation on different gateways.
      const flows: Flow[] = await Promise.all(
        conversations.flatMap((conv) =>
          [
            [conv.a, conv.b, conv.index % 2],
            [conv.b, conv.a, (conv.index + 1) % 2],
          ].map(async ([from, to, g]) => {
            const gateway: Gateway = gateways[g as number]!;
            const chat = await connectReady(gateway.url, `/ws/${to}/`, await tokenFor(from as string));
            return { conversation: conv, from: from as string, to: to as string, gateway: g as number, chat, sends: [], byClientId: new Map(), strays: [], lastId: null, resyncs: [] } as Flow;
          }),
        ),
      );
      const flowOf = new Map(flows.map((f) => [`${f.from}>${f.to}`, f]));
      // What a client does (apps/gateway/public/app.js): a socket closed with 4002 (its partition's
      // subscriptions were lost for a while) reconnects with ?since= the newest message it saw, takes
      // the replay, and then sends again, with the same client_id, what was never answered.
      const watch = (f: Flow, chat: TestClient) => {
        const reverse = flowOf.get(`${f.to}>${f.from}`)!;
        chat.ws.on("message", (data: Buffer, isBinary: boolean) => {
          if (isBinary) return;
          const at = Date.now();
          const frame = JSON.parse(data.toString()) as Record<string, unknown>;
          const clientId = typeof frame["client_id"] === "string" ? frame["client_id"] : undefined;
          if (frame["type"] === "chat_message") {
            f.lastId = String(frame["id"]);
            const sender = (frame["from_user"] as { username?: string } | undefined)?.username;
            if (sender === f.from) {
              const s = clientId === undefined ? undefined : f.byClientId.get(clientId);
              if (!s) return void f.strays.push(frame);
              if (s.echoIds.has(String(frame["id"]))) return;
              s.echoIds.add(String(frame["id"]));
              s.answers++;
              s.answer ??= { kind: "echo", at, id: String(frame["id"]) };
            } else if (sender === f.to) {
              const s = clientId === undefined ? undefined : reverse.byClientId.get(clientId);
              if (!s) return void f.strays.push(frame);
              s.deliveredAt ??= at;
            } else f.strays.push(frame);
          } else if (frame["type"] === "error") {
            const s = clientId === undefined ? undefined : f.byClientId.get(clientId);
            if (!s) return void f.strays.push(frame);
            s.answers++;
            s.answer ??= { kind: "error", at, code: String(frame["code"]), message: String(frame["message"]) };
          }
        });
        chat.ws.on("close", (code: number) => {
          if (code !== 4002 || f.chat !== chat) return;
          f.resyncs.push(Date.now());
          void (async () => {
            const token = await tokenFor(f.from);
            const next = await connectReady(gateways[f.gateway]!.url, `/ws/${f.to}/${f.lastId ? `?since=${f.lastId}` : ""}`, token);
            watch(f, next);
            if (f.lastId) await next.until((frames) => frames.some((x) => x.type === "catch_up_end"), 10_000, "catch_up_end");
            // Sends made until now went to the closed socket: unanswered, so sent again here, once.
            for (const s of f.sends) if (s.answer === null) next.send({ type: "chat_message", message: s.text, client_id: s.clientId });
            f.chat = next;
          })().catch((err: unknown) => f.strays.push({ reconnect: String(err) }));
        });
      };
      for (const f of flows) watch(f, f.chat);

      // Every user's all-conversations notifications socket. Those whose channel is on the killed
      // master miss the counts published during the failover: the gateway closes them with 4002
      // after the promotion, and the reconnect reads the counts as they are.
      const notifications: Notifications[] = await Promise.all(
        conversations
          .flatMap((conv) => [conv.a, conv.b])
          .map(async (user, i) => {
            const onVictim = (await c.masterOfSlot(slotOf(names.userChannel(user)))).port === victim.port;
            const n: Notifications = { user, onVictim, gateway: i % 2, socket: null as unknown as TestClient, resyncs: 0, last: null };
            const open = async () => {
              const socket = await connectReady(gateways[n.gateway]!.url, "/ws/notifications/", await tokenFor(user));
              const seen = (data: Buffer, isBinary: boolean) => {
                const frame = isBinary ? null : (JSON.parse(data.toString()) as Record<string, unknown>);
                if (frame?.["type"] === "unread_count" || frame?.["type"] === "new_message_notification") n.last = Number(frame["unread_count"]);
              };
              for (const f of socket.frames) if (f.type === "unread_count" || f.type === "new_message_notification") n.last = Number(f["unread_count"]);
              socket.ws.on("message", seen);
              socket.ws.on("close", (code: number) => {
                if (code !== 4002 || n.socket !== socket) return;
                n.resyncs++;
                open().catch((err: unknown) => {
                  n.last = Number.NaN;
                  console.log(`notifications reconnect of ${user} failed: ${String(err)}`);
                });
              });
              n.socket = socket;
            };
            await open();
            return n;
          }),
      );
      const send = (f: Flow, phase: Send["phase"]) => {
        const clientId = `${phase}-${f.from}>${f.to}#${f.sends.length}`;
        const s: Send = { flow: f, clientId, text: clientId, phase, sentAt: Date.now(), answer: null, answers: 0, echoIds: new Set(), deliveredAt: null };
        f.sends.push(s);
        f.byClientId.set(clientId, s);
        f.chat.send({ type: "chat_message", message: s.text, client_id: clientId });
        return s;
      };

      // The flow: one message per direction every SEND_INTERVAL_MS, from before the kill until
      // AFTER_PROMOTION_MS after the promotion.
      let stopAt = Number.POSITIVE_INFINITY;
      const sender = (async () => {
        while (Date.now() < stopAt) {
          for (const f of flows) send(f, "flow");
          await new Promise((r) => setTimeout(r, SEND_INTERVAL_MS));
        }
      })();
      await new Promise((r) => setTimeout(r, WARMUP_MS));
      // What the gateways' and workers' /readyz say meanwhile (they stay up, and name what fails).
      const workerPorts = workers.map((w) => Number(w.logs.find((l) => l["msg"] === "consuming")?.["httpPort"]));
      // The manifests' readiness probes wait 2 s (timeoutSeconds); a loaded test machine (three files
      // at a time on two cores, during a failover) once took longer than 1 s to answer.
      const readyz = async (port: number) => {
        try {
          const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(2000) });
          return `${res.status} ${await res.text()}`;
        } catch (err) {
          return `no answer: ${String(err)}`;
        }
      };
      const seen = { gateways: new Set<string>(), workers: new Set<string>() };
      let watching = true;
      const watcher = (async () => {
        while (watching) {
          for (const g of gateways) seen.gateways.add(await readyz(g.port));
          for (const port of workerPorts) seen.workers.add(await readyz(port));
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      const killAt = Date.now();
      let failover: { promotedPort: number; tookMs: number };
      try {
        failover = await c.failover(victim.port, 20_000);
      } finally {
        stopAt = Math.min(stopAt, Date.now() + AFTER_PROMOTION_MS);
      }
      const promotedAt = Date.now();
      await sender;
      watching = false;
      await watcher;
      const flowSends = flows.flatMap((f) => f.sends);
      const lastFlowSend = Math.max(...flowSends.map((s) => s.sentAt));

      // Every send's answer, for as long as the bound allows.
      await waitFor(() => flowSends.every((s) => s.answer !== null) || Date.now() > lastFlowSend + ANSWER_BOUND_MS, ANSWER_BOUND_MS + 2000, 50);

      // After the failover: a last round on every direction, to be echoed and delivered.
      const finalSends = flows.map((f) => send(f, "final"));
      const finalAt = Date.now();
      await waitFor(() => finalSends.every((s) => s.answer !== null && s.deliveredAt !== null) || Date.now() > finalAt + FINAL_BOUND_MS, FINAL_BOUND_MS + 2000, 50);
      const allSends = [...flowSends, ...finalSends];

      // Persistence: every echoed message, then nothing left in the log of our partitions.
      const users = conversations.flatMap((conv) => [conv.a, conv.b]);
      const echoed = allSends.filter((s) => s.answer?.kind === "echo");
      const echoedIds = new Set(echoed.map((s) => (s.answer as { id: string }).id));
      const sql = testSql();
      const storedRows = async () =>
        sql<{ id: string; from_user: string; to_user: string; content: string; client_id: string | null }[]>`
          SELECT id::text AS id, from_user, to_user, content, client_id FROM messages WHERE from_user IN ${sql(users)} AND to_user IN ${sql(users)}`;
      const persistStart = Date.now();
      let persistedAllMs: number | null = null;
      try {
        await waitFor(async () => {
          const ids = new Set((await storedRows()).map((r) => r.id));
          return [...echoedIds].every((id) => ids.has(id));
        }, 20_000, 200);
        persistedAllMs = Date.now() - persistStart;
      } catch {
        // Reported by the assertions below.
      }
      const inspector = new Cluster((await c.masters()).map((m) => ({ host: "127.0.0.1", port: m.port })), { maxRedirections: 16, retryDelayOnFailover: 200 });
      inspector.on("error", () => {});
      let backlog: string[] = [];
      try {
        const partitions = [...new Set(conversations.map((conv) => conv.partition))];
        await waitFor(async () => {
          backlog = (await Promise.all(partitions.map((p) => partitionBacklog(inspector, names, p)))).filter((x): x is string => x !== null);
          return backlog.length === 0;
        }, 10_000, 200).catch(() => undefined);
      } finally {
        inspector.disconnect();
      }
      const rows = await storedRows();
      const unread = await sql<{ username: string; other_username: string; unread_count: number; recount: number }[]>`
        SELECT cm.username, cm.other_username, cm.unread_count,
          (SELECT count(*)::int FROM messages m WHERE m.to_user = cm.username AND m.from_user = cm.other_username AND m.stream_position > cm.read_position) AS recount
        FROM conversation_members cm WHERE cm.username IN ${sql(users)}`;

      // What happened, per send.
      const latency = (s: Send) => (s.answer ? s.answer.at - s.sentAt : Number.POSITIVE_INFINITY);
      const rel = (t: number) => t - killAt;
      const show = (s: Send) =>
        `${s.clientId} [${side(s.flow.conversation)} master, gateway ${s.flow.gateway + 1}, sent at ${rel(s.sentAt)} ms]: ${
          s.answer ? `${s.answer.kind}${s.answer.kind === "error" ? ` ${s.answer.code}` : ""} after ${latency(s)} ms` : "no answer"
        }${s.answers > 1 ? `, ${s.answers} answers` : ""}${s.deliveredAt !== null ? `, delivered after ${s.deliveredAt - s.sentAt} ms` : ", not delivered"}`;
      const silent = allSends.filter((s) => s.answer === null);
      const late = allSends.filter((s) => s.answer !== null && latency(s) > ANSWER_BOUND_MS);
      const doubled = allSends.filter((s) => s.answers > 1);
      const wrongError = allSends.filter((s) => s.answer?.kind === "error" && s.answer.code !== "unavailable");
      const otherSide = flowSends.filter((s) => !s.flow.conversation.onVictim);
      const otherTrouble = otherSide.filter((s) => s.answer?.kind !== "echo" || latency(s) > HEALTHY_SIDE_BOUND_MS);

      // Delivery back: per conversation, the first send time from which every flow send was echoed and delivered.
      const resume = conversations.map((conv) => {
        const sends = flowSends.filter((s) => s.flow.conversation === conv).sort((x, y) => x.sentAt - y.sentAt);
        const ok = (s: Send) => s.answer?.kind === "echo" && s.deliveredAt !== null;
        let from = sends.length;
        while (from > 0 && ok(sends[from - 1]!)) from--;
        const firstOkAfter = from < sends.length ? sends[from]!.sentAt : null;
        const broken = sends.filter((s) => s.sentAt >= promotedAt + RESUME_BOUND_MS && !ok(s));
        const final = finalSends.filter((s) => s.flow.conversation === conv);
        return { conv, resumedAt: firstOkAfter, broken, final, finalOk: final.every(ok) };
      });

      const stats = (sends: Send[]) => {
        const echoes = sends.filter((s) => s.answer?.kind === "echo");
        const lat = echoes.map(latency).sort((x, y) => x - y);
        return `${sends.length} sent, ${echoes.length} accepted, ${sends.filter((s) => s.answer?.kind === "error").length} unavailable, ${sends.filter((s) => s.answer === null).length} unanswered, echo p50 ${lat[Math.floor(lat.length / 2)] ?? "-"} / max ${lat.at(-1) ?? "-"} ms, ${echoes.filter((s) => s.deliveredAt !== null).length} delivered`;
      };
      const victimSide = flowSends.filter((s) => s.flow.conversation.onVictim);
      console.log(
        `[reliability] redis cluster failover: master ${victim.port} SIGKILLed ${WARMUP_MS} ms into the flow, replica ${failover!.promotedPort} promoted and cluster healthy after ${failover!.tookMs} ms; ` +
          `killed master's conversations (${conversations.filter((x) => x.onVictim).length}): ${stats(victimSide)}; ` +
          `of these, senders on gateway 1: ${stats(victimSide.filter((s) => s.flow.gateway === 0))}, on gateway 2: ${stats(victimSide.filter((s) => s.flow.gateway === 1))}; ` +
          `other masters' (${conversations.filter((x) => !x.onVictim).length}): ${stats(otherSide)}; ` +
          `final round: ${stats(finalSends)}; ` +
          `delivery resumed (every later send echoed and delivered) per conversation, from the promotion: ${resume.map((r) => `${side(r.conv)}#${r.conv.index} ${r.resumedAt === null ? "never" : `${r.resumedAt - promotedAt} ms`}`).join(", ")}; ` +
          `chat sockets told to catch up (4002): ${flows.filter((f) => f.conversation.onVictim).reduce((n, f) => n + f.resyncs.length, 0)} on the killed master's conversations, ${flows.filter((f) => !f.conversation.onVictim).reduce((n, f) => n + f.resyncs.length, 0)} on the others'; ` +
          `every echoed message persisted ${persistedAllMs === null ? "NOT within 20 s" : `${persistedAllMs} ms after the final round`}; ${rows.length} stored, ${rows.filter((r) => !echoedIds.has(r.id)).length} of them without an echo`,
      );
      const anomalies = [
        ...silent.map(show).map((d) => `silent: ${d}`),
        ...late.map(show).map((d) => `late: ${d}`),
        ...doubled.map(show).map((d) => `answered twice: ${d}`),
        ...wrongError.map((s) => `wrong error: ${show(s)} ${JSON.stringify(s.answer)}`),
        ...otherTrouble.map(show).map((d) => `other master: ${d}`),
        ...resume.flatMap((r) => [...r.broken, ...(r.finalOk ? [] : r.final)]).map(show).map((d) => `not resumed: ${d}`),
        ...flows.flatMap((f) => f.strays.map((x) => `stray frame on ${f.from}>${f.to}: ${JSON.stringify(x).slice(0, 300)}`)),
        ...backlog.map((b) => `log backlog: ${b}`),
      ];
      if (anomalies.length > 0) {
        const shown = anomalies.length > 60 ? [...anomalies.slice(0, 60), `... and ${anomalies.length - 60} more`] : anomalies;
        console.log(
          `[reliability] redis cluster failover, anomalies (times from the kill; promotion seen at ${rel(promotedAt)} ms):\n${shown.join("\n")}\n` +
            [...gateways.map((g, i) => logSummary(`gateway ${i + 1}`, g, killAt)), ...workers.map((w, i) => logSummary(`worker ${i + 1}`, w, killAt))].join("\n"),
        );
      }

      // 1. Every echoed message is in Postgres, exactly once; nothing stored twice in any form.
      const storedIds = new Set(rows.map((r) => r.id));
      expect.soft([...echoedIds].filter((id) => !storedIds.has(id)), "echoed messages missing from Postgres").toEqual([]);
      expect.soft(rows.length, "rows stored twice (by content)").toBe(new Set(rows.map((r) => r.content)).size);
      const sentTexts = new Set(allSends.map((s) => s.text));
      expect.soft(rows.filter((r) => !sentTexts.has(r.content)).map((r) => r.content), "stored messages nobody sent").toEqual([]);
      expect.soft(echoed.length, "ids echoed twice").toBe(echoedIds.size);
      expect.soft(backlog, "log entries of our partitions still not persisted").toEqual([]);

      // 2. Unread counters equal a recount, for every direction that received something.
      expect.soft(unread.filter((u) => u.unread_count !== u.recount), "unread counters that differ from a recount").toEqual([]);
      expect.soft(unread.length, "conversation_members rows").toBeGreaterThanOrEqual(new Set(rows.map((r) => `${r.to_user}>${r.from_user}`)).size);

      // 2b. Notification sockets: those of users whose channel was on the killed master were told to
      // reconnect (4002), no other; and every user's newest count is the one in Postgres.
      const totals = new Map<string, number>();
      for (const u of unread) totals.set(u.username, (totals.get(u.username) ?? 0) + u.unread_count);
      const countsRight = () => notifications.every((n) => n.last === (totals.get(n.user) ?? 0));
      await waitFor(countsRight, 10_000, 100).catch(() => undefined);
      console.log(
        `[reliability] redis cluster failover, notification sockets: ${notifications.filter((n) => n.onVictim).length} users' channels on the killed master, ` +
          `${notifications.filter((n) => n.onVictim && n.resyncs > 0).length} of them told to reconnect (4002), ${notifications.filter((n) => !n.onVictim && n.resyncs > 0).length} of the others'`,
      );
      expect.soft(notifications.filter((n) => n.onVictim).length, "users whose channel is on the killed master").toBeGreaterThan(0);
      expect.soft(notifications.filter((n) => n.onVictim && n.resyncs === 0).map((n) => n.user), "notification sockets on the killed master not told to reconnect").toEqual([]);
      expect.soft(notifications.filter((n) => !n.onVictim && n.resyncs > 0).map((n) => n.user), "other masters' notification sockets closed with 4002").toEqual([]);
      expect
        .soft(notifications.filter((n) => n.last !== (totals.get(n.user) ?? 0)).map((n) => `${n.user}: socket says ${n.last}, Postgres ${totals.get(n.user) ?? 0}`), "unread totals on the notification sockets")
        .toEqual([]);

      // 3. Every send has exactly one answer within ANSWER_BOUND_MS: its echo, or error unavailable.
      expect.soft(silent.map(show), "sends without any answer").toEqual([]);
      expect.soft(late.map(show), `sends answered after ${ANSWER_BOUND_MS} ms`).toEqual([]);
      expect.soft(doubled.map(show), "sends answered more than once").toEqual([]);
      expect.soft(wrongError.map(show), "errors other than unavailable").toEqual([]);
      expect.soft(flows.flatMap((f) => f.strays), "frames that answer no send").toEqual([]);
      for (const f of flows) expect.soft(f.chat.schemaViolations, `schema violations on ${f.from}>${f.to}`).toEqual([]);

      // 4. The other masters' conversations kept flowing: every send echoed within HEALTHY_SIDE_BOUND_MS.
      expect.soft(otherSide.filter((s) => s.sentAt >= killAt && s.sentAt <= promotedAt).length, "sends to the other masters during the failover").toBeGreaterThan(0);
      expect.soft(otherTrouble.map(show), `other masters' sends not echoed within ${HEALTHY_SIDE_BOUND_MS} ms`).toEqual([]);

      // 5. Only the failed master's partitions were lost: no other conversation's socket had to catch up.
      expect.soft(flows.filter((f) => !f.conversation.onVictim && f.resyncs.length > 0).map((f) => `${f.from}>${f.to}`), "other masters' sockets closed with 4002").toEqual([]);

      // 6. Gateways and workers stayed up and ready, and said which partitions were affected.
      const saidAny = (set: Set<string>, words: string) => [...set].some((s) => s.startsWith("200 ready; ") && s.includes(words));
      expect.soft([...seen.gateways, ...seen.workers].filter((s) => !s.startsWith("200 ready")), "/readyz answers other than 200 during the failover").toEqual([]);
      expect.soft(saidAny(seen.gateways, "partitions unavailable"), `a gateway's /readyz named unavailable partitions: ${[...seen.gateways].join(" | ")}`).toBe(true);
      // A worker names a partition it cannot read only until its lease there lapses (the lease lives
      // on the same master), which may come first: not asserted; its /readyz stays 200 all along.
      // Once over, plain "ready" again: a worker's consumer of an idle partition says so after its
      // next successful read (its retry backs off up to 5 s, then a read blocks up to 2 s).
      for (const port of [...gateways.map((g) => g.port), ...workerPorts]) {
        await waitFor(async () => (await readyz(port)) === "200 ready", 15_000, 200).catch(() => undefined);
        expect.soft(await readyz(port), "/readyz once it is over").toBe("200 ready");
      }

      // 7. Delivery resumes on every conversation after the promotion (live, or in the catch-up of a 4002 reconnect).
      expect.soft(victimSide.filter((s) => s.sentAt >= promotedAt + RESUME_BOUND_MS).length, "sends on the killed master's conversations late enough to check the resumption").toBeGreaterThan(0);
      expect
        .soft(resume.flatMap((r) => r.broken.map(show)), `sends made ${RESUME_BOUND_MS} ms or more after the promotion that were not echoed and delivered`)
        .toEqual([]);
      expect.soft(resume.filter((r) => !r.finalOk).flatMap((r) => r.final.map(show)), `final round not echoed and delivered within ${FINAL_BOUND_MS} ms`).toEqual([]);
      // The failed-over side did see the failover: some of its sends were refused meanwhile (else the kill missed the flow).
      expect.soft(victimSide.filter((s) => s.sentAt >= killAt && s.sentAt <= promotedAt).length, "sends to the killed master's conversations during the failover").toBeGreaterThan(0);
    },
  );
});
