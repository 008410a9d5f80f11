import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";
import {
  encodeStreamEntry,
  entryPrefixOf,
  receivedEntry,
  type AcceptRequest,
  type AcceptResult,
  type LogPartition,
  type MessageLog,
  type MultiPartitionReader,
  type ReceivedEntry,
  type StreamEntry,
} from "./message-log.js";
import type { RedisNames } from "./names.js";
import { withTokenBucket } from "./rate-limit-redis.js";

/**
 * A single Redis or a Redis Cluster client: every command here touches one slot, but for the two
 * that only a single Redis gets (the token inside accept, RedisMultiPartitionReader).
 */
type Client = Redis | Cluster;

/** The one field of a stream entry: its JSON (see encodeStreamEntry). */
const FIELD = "e";

type XEntries = [id: string, fields: string[]][];

function acceptResult([kind, value]: [string, string]): AcceptResult {
  if (kind === "accepted") return { kind, streamId: value };
  if (kind === "rate_limited") return { kind, retryAfterMs: Number(value) };
  return { kind: "duplicate", frame: value };
}

function toReceived(entries: XEntries): ReceivedEntry[] {
  const out: ReceivedEntry[] = [];
  for (const [streamId, fields] of entries) {
    // XAUTOCLAIM returns deleted entries with null fields; nothing is left to process for those.
    if (!fields) continue;
    const at = fields.indexOf(FIELD);
    out.push(receivedEntry(streamId, at >= 0 ? (fields[at + 1] ?? "") : ""));
  }
  return out;
}

const acceptLua = withTokenBucket(readFileSync(new URL("./lua/accept.lua", import.meta.url), "utf8"));
const findMessageLua = readFileSync(new URL("./lua/find-message.lua", import.meta.url), "utf8");

/** Entries find-message.lua looks at per call: Redis copies at most this many entries into Lua at once. */
const FIND_PAGE = 100;

type Run<T> = (...args: (string | number)[]) => Promise<T>;

function defineScripts(redis: Client): void {
  if (!("chatAccept" in redis)) redis.defineCommand("chatAccept", { lua: acceptLua });
  if (!("chatFindMessage" in redis)) redis.defineCommand("chatFindMessage", { lua: findMessageLua, numberOfKeys: 1 });
}

export interface RedisMessageLogOptions {
  /** How long a client_id is remembered for retries (CHAT_IDEMPOTENCY_TTL_SECONDS). */
  idempotencyTtlSeconds: number;
  /**
   * Opens the connection a partition's consumer blocks on in its reads (a blocked connection serves
   * nothing else). Without it, partitions block on `redis`, which suits a tool that never blocks.
   */
  openPartitionClient?: () => Client;
  /**
   * Takes each send from its sender's token bucket (RedisNames.rateBucket, as RedisRateLimiter does)
   * inside `accept`: one script and one round trip per send instead of two, which on a single Redis
   * is a quarter of its CPU per message. Only on a single Redis: on a cluster the bucket lives in the
   * user's slot, not the partition's, and the gateway takes from it with RedisRateLimiter first.
   */
  rate?: { perSecond: number; burst: number } | undefined;
  /**
   * CHAT_REDIS_MIN_REPLICAS_ACK: `accept` answers "accepted" only once the entry reached `count`
   * replicas (WAIT, at most `timeoutMs`), else "unreplicated". These accepts go on `client`, a
   * connection of their own: WAIT blocks the connection it runs on until the replicas answer.
   */
  replicas?: { count: number; timeoutMs: number; client: Client } | undefined;
}

/** One accept waiting for its partition's next WAIT round. */
interface ReplicatedAccept {
  args: (string | number)[];
  resolve: (result: AcceptResult) => void;
  reject: (err: unknown) => void;
}

/**
 * The message log as one Redis stream per partition with one consumer group. `accept` is one Lua
 * script (one round trip) on the partition's slot: the client_id record, the entry and the live event
 * all carry the partition's hash tag (and, on a single Redis, the sender's rate bucket: see `rate`).
 */
export class RedisMessageLog implements MessageLog {
  readonly partitions: number;

  constructor(
    private readonly redis: Client,
    private readonly names: RedisNames,
    private readonly options: RedisMessageLogOptions,
  ) {
    this.partitions = names.partitions;
    if (options.rate && isCluster(redis)) {
      throw new TypeError("RedisMessageLog: the rate option needs a single Redis; on a cluster, use RedisRateLimiter");
    }
    defineScripts(redis);
    if (options.replicas) defineScripts(options.replicas.client);
  }

  partitionOf(conversation: string): number {
    return this.names.partitionOf(conversation);
  }

  private streamOf(conversation: string): string {
    return this.names.stream(this.names.partitionOf(conversation));
  }

  async accept(request: AcceptRequest): Promise<AcceptResult> {
    const { entry, clientId, live } = request;
    const keys = [this.streamOf(request.conversation)];
    if (clientId !== undefined) {
      if (entry.kind !== "message") throw new TypeError("only a chat message carries a client_id");
      keys.push(this.names.clientMessage(entry.from, entry.to, clientId));
    }
    const rate = this.options.rate;
    const rateArgs: number[] = [];
    if (rate) {
      keys.push(this.names.rateBucket(entry.kind === "message" ? entry.from : entry.reader));
      rateArgs.push(rate.perSecond, rate.burst);
    }
    const args = [
      keys.length,
      ...keys,
      encodeStreamEntry(entry),
      live ? this.names.roomChannel(request.conversation) : "",
      live?.envelope ?? "",
      live?.frame ?? "",
      this.options.idempotencyTtlSeconds,
      ...rateArgs,
    ];
    if (this.options.replicas) return this.acceptReplicated(this.partitionOf(request.conversation), args);
    const run = (this.redis as unknown as { chatAccept: Run<[string, string]> }).chatAccept;
    return acceptResult(await run.call(this.redis, ...args));
  }

  /** Per partition: accepts queued while that partition's WAIT round is in flight. */
  private readonly replicatedQueues = new Map<number, ReplicatedAccept[]>();
  private readonly replicatedInFlight = new Set<number>();

  /**
   * Accepts that must reach replicas before they count: each partition's accepts go out in rounds,
   * a pipeline of every accept queued since the last round followed by one WAIT, which covers them
   * all (WAIT counts the replicas that have every write of this connection so far). A partition is
   * one slot, hence one master: on a cluster, each round goes to one node. One round in flight per
   * partition: what comes meanwhile waits for the next, so a slow replica costs latency, not a WAIT
   * per message.
   */
  private acceptReplicated(partition: number, args: (string | number)[]): Promise<AcceptResult> {
    return new Promise((resolve, reject) => {
      const queue = this.replicatedQueues.get(partition);
      if (queue) queue.push({ args, resolve, reject });
      else this.replicatedQueues.set(partition, [{ args, resolve, reject }]);
      if (!this.replicatedInFlight.has(partition)) void this.replicatedRound(partition);
    });
  }

  private async replicatedRound(partition: number): Promise<void> {
    const { count, timeoutMs, client } = this.options.replicas!;
    this.replicatedInFlight.add(partition);
    try {
      for (let round = this.replicatedQueues.get(partition); round && round.length > 0; round = this.replicatedQueues.get(partition)) {
        this.replicatedQueues.delete(partition);
        const pipeline = client.pipeline() as unknown as { chatAccept(...a: (string | number)[]): unknown; wait(n: number, ms: number): unknown; exec(): Promise<[Error | null, unknown][] | null> };
        for (const a of round) pipeline.chatAccept(...a.args);
        pipeline.wait(count, timeoutMs);
        let replies: [Error | null, unknown][];
        try {
          replies = (await pipeline.exec()) ?? [];
        } catch (err) {
          for (const a of round) a.reject(err);
          continue;
        }
        const [waitErr, reached] = replies[round.length] ?? [new Error("no reply to WAIT"), 0];
        round.forEach((a, i) => {
          const [err, reply] = replies[i] ?? [new Error("no reply to the accept script"), null];
          if (err) return a.reject(err);
          const result = acceptResult(reply as [string, string]);
          if (result.kind !== "accepted") return a.resolve(result);
          if (waitErr) return a.reject(waitErr);
          const replicas = Number(reached);
          a.resolve(replicas >= count ? result : { kind: "unreplicated", streamId: result.streamId, replicas, wanted: count });
        });
      }
    } finally {
      this.replicatedInFlight.delete(partition);
    }
  }

  async append(conversation: string, entry: StreamEntry): Promise<string> {
    return (await this.redis.xadd(this.streamOf(conversation), "*", FIELD, encodeStreamEntry(entry))) as string;
  }

  async rangeBetween(conversation: string, afterId: string, beforeId: string | null, count: number): Promise<ReceivedEntry[]> {
    const start = afterId === "-" ? "-" : `(${afterId}`;
    const end = beforeId === null ? "+" : `(${beforeId}`;
    return toReceived((await this.redis.xrevrange(this.streamOf(conversation), end, start, "COUNT", count)) as XEntries);
  }

  async findMessage(conversation: string, id: string, window: { fromMs: number; toMs: number; maxEntries: number }): Promise<ReceivedEntry | null> {
    const run = (this.redis as unknown as { chatFindMessage: Run<string[]> }).chatFindMessage;
    const stream = this.streamOf(conversation);
    let start = String(Math.max(0, Math.floor(window.fromMs)));
    const end = String(Math.max(0, Math.floor(window.toMs)));
    for (let looked = 0; looked < window.maxEntries; looked += FIND_PAGE) {
      const [kind, a, b] = await run.call(this.redis, stream, start, end, Math.min(FIND_PAGE, window.maxEntries - looked), entryPrefixOf(id));
      if (kind === "found") return receivedEntry(a!, b!);
      if (kind !== "more") return null;
      start = `(${a!}`;
    }
    return null;
  }

  partition(partition: number): RedisLogPartition {
    return new RedisLogPartition(this.redis, this.options.openPartitionClient ?? null, this.names, partition);
  }

  /**
   * On a single Redis given a way to open a blocking connection: one XREADGROUP over every stream
   * asked for. Not on a cluster (streams of different slots), nor for a tool that never blocks.
   */
  openMultiReader(): MultiPartitionReader | undefined {
    const open = this.options.openPartitionClient;
    if (!open || isCluster(this.redis)) return undefined;
    return new RedisMultiPartitionReader(this.redis as Redis, open() as Redis, this.names);
  }
}

const isCluster = (redis: Client): boolean => "isCluster" in redis && redis.isCluster;

/** QUIT, then drop the connection: QUIT waits for a Redis that may never come back. */
async function closeClient(client: Client): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([client.quit().catch(() => {}), new Promise((resolve) => (timer = setTimeout(resolve, 1000)))]);
  clearTimeout(timer);
  client.disconnect();
}

/**
 * Many partitions' streams read with one XREADGROUP on a connection of its own (it blocks), and
 * acknowledged with one pipeline on the shared one. Two or more slots in one command: a single
 * Redis only, like the token taken inside accept.
 */
class RedisMultiPartitionReader implements MultiPartitionReader {
  private readonly partitionOfStream = new Map<string, number>();
  /** The blocking connection's CLIENT ID, for CLIENT UNBLOCK; a new one after each reconnection. */
  private blockingId: number | null = null;

  constructor(
    private readonly redis: Redis,
    private readonly blocking: Redis,
    private readonly names: RedisNames,
  ) {
    for (let p = 0; p < names.partitions; p++) this.partitionOfStream.set(names.stream(p), p);
    blocking.on("close", () => (this.blockingId = null));
  }

  async read(partitions: readonly number[], consumer: string, count: number, blockMs: number | null): Promise<Map<number, ReceivedEntry[]>> {
    const out = new Map<number, ReceivedEntry[]>();
    if (partitions.length === 0) return out;
    const streams = partitions.map((p) => this.names.stream(p));
    const wait = blockMs === null ? [] : ["BLOCK", blockMs];
    const args = ["GROUP", this.names.group, consumer, "COUNT", count, ...wait, "STREAMS", ...streams, ...streams.map(() => ">")];
    const client = blockMs === null ? this.redis : this.blocking;
    if (client === this.blocking) this.blockingId ??= Number(await this.blocking.client("ID"));
    const reply = (await (client.xreadgroup as (...a: (string | number)[]) => Promise<unknown>).apply(client, args)) as [string, XEntries][] | null;
    for (const [stream, entries] of reply ?? []) {
      const p = this.partitionOfStream.get(stream);
      const received = toReceived(entries);
      if (p !== undefined && received.length > 0) out.set(p, received);
    }
    return out;
  }

  async ack(acks: ReadonlyMap<number, readonly string[]>): Promise<void> {
    const pipeline = this.redis.pipeline();
    let commands = 0;
    for (const [p, ids] of acks) {
      if (ids.length === 0) continue;
      pipeline.xack(this.names.stream(p), this.names.group, ...ids);
      commands++;
    }
    if (commands === 0) return;
    for (const [err] of (await pipeline.exec()) ?? []) if (err) throw err;
  }

  async interrupt(): Promise<void> {
    if (this.blockingId !== null) await this.redis.client("UNBLOCK", this.blockingId);
  }

  close(): Promise<void> {
    return closeClient(this.blocking);
  }
}

/**
 * One partition's stream and consumer group. Its blocking reads go on a connection of its own when
 * the log was given a way to open one (a blocked connection serves nothing else); every other
 * command goes on the shared one, so a metrics scrape or an acknowledgement never waits out a read.
 */
export class RedisLogPartition implements LogPartition {
  readonly stream: string;
  readonly group: string;
  private readonly deadLetterStream: string;
  /** This partition's own connection for blocking reads, opened at the first (closed with it). */
  private reader: Client | null = null;

  constructor(
    private readonly redis: Client,
    /** Opens that connection; null: blocking reads go on the shared one. */
    private readonly openReader: (() => Client) | null,
    names: RedisNames,
    readonly index: number,
  ) {
    this.stream = names.stream(index);
    this.group = names.group;
    this.deadLetterStream = names.deadLetterStream(index);
  }

  /** Creates the consumer group at the start of the stream, so no entry accepted earlier is skipped. */
  async ensureGroup(): Promise<void> {
    try {
      await this.redis.xgroup("CREATE", this.stream, this.group, "0", "MKSTREAM");
    } catch (err) {
      if (!(err instanceof Error && err.message.includes("BUSYGROUP"))) throw err;
    }
  }

  async read(consumer: string, count: number, blockMs: number | null): Promise<ReceivedEntry[]> {
    const reply = (
      blockMs === null
        ? await this.redis.xreadgroup("GROUP", this.group, consumer, "COUNT", count, "STREAMS", this.stream, ">")
        : await this.blockingClient().xreadgroup("GROUP", this.group, consumer, "COUNT", count, "BLOCK", blockMs, "STREAMS", this.stream, ">")
    ) as [string, XEntries][] | null;
    return reply?.[0] ? toReceived(reply[0][1]) : [];
  }

  private blockingClient(): Client {
    if (!this.openReader) return this.redis;
    this.reader ??= this.openReader();
    return this.reader;
  }

  async claim(consumer: string, minIdleMs: number, count: number): Promise<ReceivedEntry[]> {
    const reply = (await this.redis.xautoclaim(this.stream, this.group, consumer, minIdleMs, "0-0", "COUNT", count)) as [
      string,
      XEntries,
      string[]?,
    ];
    return toReceived(reply[1] ?? []);
  }

  async ack(streamIds: readonly string[]): Promise<void> {
    if (streamIds.length > 0) await this.redis.xack(this.stream, this.group, ...streamIds);
  }

  async backlog(): Promise<{ lag: number; pending: number }> {
    for (const g of await this.groups()) {
      if (g["name"] === this.group) return { lag: Number(g["lag"] ?? 0), pending: Number(g["pending"] ?? 0) };
    }
    return { lag: 0, pending: 0 };
  }

  async deadLetter(fields: Readonly<Record<string, string>>): Promise<void> {
    await this.redis.xadd(this.deadLetterStream, "*", ...Object.entries(fields).flat());
  }

  /** Closes the partition's own connection, if it has one. */
  async close(): Promise<void> {
    if (this.reader) await closeClient(this.reader);
  }

  private async groups(): Promise<Record<string, unknown>[]> {
    let groups: unknown[][];
    try {
      groups = (await this.redis.xinfo("GROUPS", this.stream)) as unknown[][];
    } catch (err) {
      // A partition nothing was ever accepted into has no stream yet.
      if (err instanceof Error && err.message.includes("no such key")) return [];
      throw err;
    }
    return groups.map((g) => {
      const o: Record<string, unknown> = {};
      for (let i = 0; i + 1 < g.length; i += 2) o[String(g[i])] = g[i + 1];
      return o;
    });
  }

  /**
   * Deletes entries every consumer is done with: everything before the oldest pending entry, or
   * before the group's last delivered id when nothing is pending. Never drops an unacknowledged entry.
   */
  async trimAcknowledged(): Promise<number> {
    const info = await this.groups();
    let minId: string | undefined;
    for (const g of info) {
      const pending = (await this.redis.xpending(this.stream, String(g["name"]))) as [number, string | null, ...unknown[]];
      // Entries before the oldest pending one are acknowledged; with nothing pending, everything up to
      // and including last-delivered-id is, and MINID keeps the id given, so step past it.
      const bound = pending[0] > 0 && pending[1] ? pending[1] : nextId(String(g["last-delivered-id"]));
      if (minId === undefined || compareIds(bound, minId) < 0) minId = bound;
    }
    if (minId === undefined) return 0;
    return (await this.redis.xtrim(this.stream, "MINID", minId)) as number;
  }
}

function nextId(id: string): string {
  const [ms, seq] = id.split("-");
  return `${ms}-${BigInt(seq ?? "0") + 1n}`;
}

function compareIds(a: string, b: string): number {
  const pa = a.split("-").map(BigInt);
  const pb = b.split("-").map(BigInt);
  const d = (pa[0] ?? 0n) - (pb[0] ?? 0n) || (pa[1] ?? 0n) - (pb[1] ?? 0n);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

/** A gateway or worker started with another partition count than the deployment's. */
export class PartitionCountMismatchError extends Error {
  override readonly name = "PartitionCountMismatchError";
  readonly code = "partitions_mismatch";
}

/**
 * Records the deployment's partition count on first start, and refuses another one afterwards:
 * with another count, a conversation would map to another stream than its earlier messages, and
 * gateways and workers would disagree on where it lives.
 */
export async function checkPartitionCount(redis: Redis | Cluster, names: RedisNames): Promise<void> {
  await redis.set(names.partitionsKey, String(names.partitions), "NX");
  const recorded = await redis.get(names.partitionsKey);
  if (recorded !== null && Number(recorded) !== names.partitions) {
    throw new PartitionCountMismatchError(
      `CHAT_PARTITIONS is ${names.partitions}, but this deployment (CHAT_REDIS_PREFIX ${JSON.stringify(names.prefix)}) was started with ${recorded}: ` +
        `set CHAT_PARTITIONS=${recorded} (it cannot change once messages flowed; see docs/scaling.md)`,
    );
  }
}
