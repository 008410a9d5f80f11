// The report: the JSON's shape, the markdown of docs/benchmarks.md (a section per scenario, kept in
// one file so the page's layout reads top to bottom in one place) and the files written per run.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { SystemName } from "./cluster.js";
import type { Environment } from "./environment.js";
import type { Plan } from "./plan.js";
import type { PerfSummary } from "./perf.js";
import type { ProfileSummary } from "./profile.js";
import type { ConnectionRateResult, IdleMemoryResult } from "./scenarios/connections.js";
import type { DrainResult } from "./scenarios/drain.js";
import type { GroupLoadResult } from "./scenarios/groups.js";
import { othersPct, type MeasuredLoad } from "./scenarios/load.js";
import { LIMITS, type FindMaxResult } from "./scenarios/throughput.js";
import { p99Chart } from "./svg.js";

/** The loads of one cluster: the fixed rate and find-max. */
export interface LoadResults {
  fixed?: MeasuredLoad;
  findMax?: FindMaxResult;
  errors: { scenario: string; message: string }[];
}

export interface SystemResults extends LoadResults {
  idleMemory?: IdleMemoryResult;
  connectionRate?: ConnectionRateResult;
}

/**
 * Our cluster's loads on a local Redis Cluster the bench started (masters only, no replicas). The
 * CPU figures have one group per master (`redis-1`...) where the single-Redis runs have `redis`.
 */
export interface RedisClusterResults extends LoadResults {
  /** The masters, in the order of their groups; ports change from run to run. */
  masters: { name: string; port: number }[];
}

/** Everything one invocation measured: the JSON report. */
export interface BenchResults {
  version: 1;
  mode: Plan["mode"];
  command: string;
  startedAt: string;
  finishedAt: string;
  durationS: number;
  environment: Environment;
  plan: Plan;
  systems: Record<SystemName, SystemResults>;
  /** Ours again, on a local Redis Cluster (the redis-cluster scenario). */
  redisCluster?: RedisClusterResults;
  /** Ours only: the baseline has no worker. */
  drain?: DrainResult;
  profile?: ProfileSummary[];
  /** On-CPU profiles (Linux perf) of the same load, when perf is installed. */
  perf?: PerfSummary[];
  /** The load the profile was taken under (profiling slows the processes: not a figure to compare). */
  profileLoad?: MeasuredLoad;
  /** Ours only: group conversations, and a 1:1 load delivering as many frames on the same cluster. */
  groups?: { direct?: MeasuredLoad; loads: GroupLoadResult[] };
  errors: { scenario: string; message: string }[];
}

const NAMES: Record<SystemName, string> = { chat: "chat-cluster", "socket.io": "Socket.IO 4 + redis-adapter" };
const ON_REDIS_CLUSTER = "chat-cluster on a Redis Cluster";
const DASH = "–";

const num = (v: number | undefined | null, digits = 0): string =>
  v === undefined || v === null || !Number.isFinite(v) ? DASH : v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
const ms = (v: number | undefined) => (v === undefined ? DASH : v < 10 ? num(v, 2) : v < 100 ? num(v, 1) : num(v, 0));
const ratio = (ours: number | undefined | null, base: number | undefined | null): string =>
  ours === undefined || ours === null || base === undefined || base === null || !(base > 0) || !(ours >= 0) ? DASH : `${num(ours / base, 2)}×`;
const table = (head: string[], rows: string[][]): string =>
  [`| ${head.join(" | ")} |`, `|${head.map((_, i) => (i === 0 ? "---" : "---:")).join("|")}|`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");

interface Target {
  name: string;
  goal: string;
  ours: string;
  baseline: string;
  ratio: string;
  met: boolean | null;
}

function targets(r: BenchResults): Target[] {
  const us = r.systems.chat;
  const base = r.systems["socket.io"];
  const out: Target[] = [];
  const maxOurs = us.findMax?.maxRate;
  const maxBase = base.findMax?.maxRate;
  out.push({
    name: "Max sustained rate (p99 ≤ 50 ms, loss ≤ 0.1 %, persisted and counted)",
    goal: "≥ 20,000 msg/s and ≥ 4× baseline",
    ours: maxOurs === undefined ? DASH : `${num(maxOurs)} msg/s`,
    baseline: maxBase === undefined ? DASH : `${num(maxBase)} msg/s`,
    ratio: ratio(maxOurs, maxBase),
    met: maxOurs === undefined ? null : maxOurs >= 20000 && (maxBase === undefined || maxOurs >= 4 * maxBase),
  });
  const f = us.fixed?.load;
  const fb = base.fixed?.load;
  out.push({
    name: `Delivery p99 at ${num(r.plan.fixed.rate)} msg/s cross-node`,
    goal: "≤ 5 ms",
    ours: f ? `${ms(f.latencyMs.p99)} ms` : DASH,
    baseline: fb ? `${ms(fb.latencyMs.p99)} ms` : DASH,
    ratio: ratio(f?.latencyMs.p99, fb?.latencyMs.p99),
    met: f ? f.latencyMs.p99 <= 5 : null,
  });
  out.push({
    name: `Notification p99 at ${num(r.plan.fixed.rate)} msg/s`,
    goal: "≤ 50 ms",
    ours: f?.notifications ? `${ms(f.notifications.latencyMs.p99)} ms` : DASH,
    baseline: "n/a (no notifications)",
    ratio: DASH,
    met: f?.notifications ? f.notifications.latencyMs.p99 <= 50 : null,
  });
  const cpu = us.fixed?.cpu;
  const cpuBase = base.fixed?.cpu;
  out.push({
    name: `CPU per delivered message at ${num(r.plan.fixed.rate)} msg/s, all server processes`,
    goal: "≤ 150 µs",
    ours: cpu ? `${num(cpu.perDeliveredUs)} µs` : DASH,
    baseline: cpuBase ? `${num(cpuBase.perDeliveredUs)} µs` : DASH,
    ratio: ratio(cpu?.perDeliveredUs, cpuBase?.perDeliveredUs),
    met: cpu ? cpu.perDeliveredUs <= 150 : null,
  });
  const mem = us.idleMemory;
  const memBase = base.idleMemory;
  out.push({
    name: "Server memory per idle connection (gateway RSS)",
    goal: "≤ 4 KiB and ≤ 1/5 of baseline",
    ours: mem ? `${num(mem.perConnectionKiB, 1)} KiB` : DASH,
    baseline: memBase ? `${num(memBase.perConnectionKiB, 1)} KiB` : DASH,
    ratio: ratio(mem?.perConnectionKiB, memBase?.perConnectionKiB),
    met: mem ? mem.perConnectionKiB <= 4 && (!memBase || mem.perConnectionKiB <= memBase.perConnectionKiB / 5) : null,
  });
  const d = r.drain;
  out.push({
    name: "Worker drain with exact counts",
    goal: "≥ 30,000 entries/s",
    ours: d ? `${num(d.entriesPerSecond)} entries/s${d.countsExact ? "" : " (counts WRONG)"}` : DASH,
    baseline: "n/a (no persistence)",
    ratio: DASH,
    met: d ? d.entriesPerSecond >= 30000 && d.countsExact : null,
  });
  return out;
}

function metCell(met: boolean | null): string {
  return met === null ? "not run" : met ? "**met**" : "**missed**";
}

const otherPct = othersPct;

/** A load's Redis CPU: per redis-server group (`redis`, or a cluster's `redis-1`...) and summed. */
export interface RedisCpu {
  servers: {
    name: string;
    /** CPU per delivered message, µs. */
    us: number;
    /** CPU seconds over wall seconds: 1 is one core busy all the time (Redis runs commands on one thread). */
    coreShare: number;
  }[];
  sumUs: number;
  busiestCoreShare: number;
}

const REDIS_GROUP = /^redis(?:-(\d+))?$/;

/** The Redis part of a load's CPU figures, undefined when the load has none. */
export function redisCpuUs(m: MeasuredLoad | undefined): RedisCpu | undefined {
  const cpu = m?.cpu;
  if (!cpu) return undefined;
  const order = (g: string) => Number(REDIS_GROUP.exec(g)?.[1] ?? 0);
  const servers = Object.keys(cpu.groups)
    .filter((g) => REDIS_GROUP.test(g))
    .sort((a, b) => order(a) - order(b))
    .map((name) => ({ name, us: cpu.perDeliveredUsByGroup[name] ?? 0, coreShare: cpu.wallS > 0 ? (cpu.groups[name] ?? 0) / cpu.wallS : 0 }));
  if (!servers.length) return undefined;
  return { servers, sumUs: servers.reduce((a, s) => a + s.us, 0), busiestCoreShare: Math.max(...servers.map((s) => s.coreShare)) };
}

/** The find-max step at the highest rate that held. */
const maxStep = (f: FindMaxResult | undefined) => f?.steps.find((s) => s.held && s.rate === f.maxRate);

/**
 * One Redis against the Redis Cluster, side by side: the fixed load's figures and the highest rate
 * that held. Null when the redis-cluster scenario did not run or measured nothing.
 */
function redisComparison(r: BenchResults): { head: string[]; rows: string[][] } | null {
  const rc = r.redisCluster;
  // Nothing measured (the cluster could not start): the errors section says why.
  if (!rc || !(rc.fixed || rc.findMax)) return null;
  const one = r.systems.chat;
  const n = rc.masters.length;
  const a = redisCpuUs(one.fixed);
  const b = redisCpuUs(rc.fixed);
  const pct = (v: number | undefined) => num(v === undefined ? undefined : v * 100);
  const both = (label: string, x: number | undefined, y: number | undefined, fmt: (v: number | undefined) => string) => [label, fmt(x), fmt(y), ratio(y, x)];
  const rows = [
    both(`Redis CPU per delivered message at ${num(r.plan.fixed.rate)} msg/s, µs (cluster: sum of the masters)`, a?.sumUs, b?.sumUs, (v) => num(v, 1)),
    ...rc.masters.map((m, i) => [`… of which ${m.name} (master ${i + 1}, :${m.port}), µs`, DASH, num(b?.servers.find((s) => s.name === m.name)?.us, 1), DASH]),
    both("Busiest redis-server, % of one core", a?.busiestCoreShare, b?.busiestCoreShare, pct),
    both("Server CPU per delivered message, all processes, µs", one.fixed?.cpu?.perDeliveredUs, rc.fixed?.cpu?.perDeliveredUs, (v) => num(v)),
    both("Delivery p99 ms", one.fixed?.load.latencyMs.p99, rc.fixed?.load.latencyMs.p99, ms),
    both("Notification p99 ms", one.fixed?.load.notifications?.latencyMs.p99, rc.fixed?.load.notifications?.latencyMs.p99, ms),
    ["Others' CPU during the fixed load, % of machine", ...[one.fixed, rc.fixed].map((m) => (m ? num(otherPct(m, r.environment.cores)) + (m.noisyAttempts ? ` (repeated; was ${m.noisyAttempts.map((x) => num(x)).join(", ")})` : "") : DASH)), DASH],
    both("**Highest rate that held (find-max), msg/s**", one.findMax?.maxRate, rc.findMax?.maxRate, (v) => num(v)),
    both("Redis CPU per delivered message at that rate, µs (sum)", redisCpuUs(maxStep(one.findMax)?.measured)?.sumUs, redisCpuUs(maxStep(rc.findMax)?.measured)?.sumUs, (v) => num(v, 1)),
    both("Busiest redis-server at that rate, % of one core", redisCpuUs(maxStep(one.findMax)?.measured)?.busiestCoreShare, redisCpuUs(maxStep(rc.findMax)?.measured)?.busiestCoreShare, pct),
  ];
  return { head: ["Figure", "One Redis", `Redis Cluster, ${n} masters`, "Cluster / one"], rows };
}

function loadRows(label: string, pick: (m: MeasuredLoad) => number | undefined, fmt: (v: number | undefined) => string, us?: MeasuredLoad, base?: MeasuredLoad) {
  const a = us ? pick(us) : undefined;
  const b = base ? pick(base) : undefined;
  return [label, fmt(a), fmt(b), ratio(a, b)];
}

/** The generated part of docs/benchmarks.md (and the whole of bench-results/<time>.md). */
export function renderMarkdown(r: BenchResults, chartPath: string): string {
  const us = r.systems.chat;
  const base = r.systems["socket.io"];
  const e = r.environment;
  const parts: string[] = [];
  parts.push(
    `Run of ${r.startedAt.slice(0, 16).replace("T", " ")} UTC, \`${r.command}\` (${r.mode} plan), ${num(r.durationS)} s, commit \`${e.commit}\`.`,
    "",
    "### Targets",
    "",
    table(
      ["Figure", "Target", NAMES.chat, NAMES["socket.io"], "Ours / baseline", "Verdict"],
      targets(r).map((t) => [t.name, t.goal, t.ours, t.baseline, t.ratio, metCell(t.met)]),
    ),
    "",
    "### Environment",
    "",
    table(
      ["", ""],
      [
        ["Machine", `${e.cpu}, ${e.cores} cores, ${num(e.memoryGiB, 1)} GiB (generator, servers, Redis and Postgres share it)`],
        ["Machine before the run", `${num(e.backgroundBusyPct)} % busy with other work, load average ${num(e.loadAverage, 2)} (the machine is shared: see "Others' CPU" in the tables)`],
        ["Software", `Linux ${e.kernel}, Node.js ${e.node}, Redis ${e.redis}, PostgreSQL ${e.postgres}`],
        [
          "Clusters",
          "ours: 2 gateways + 1 worker, NODE_ENV=production, default settings; baseline: 2 Socket.IO nodes (websocket transport only), @socket.io/redis-adapter" +
            (r.redisCluster?.masters.length ? `; ours again on a local ${r.redisCluster.masters.length}-master Redis Cluster without replicas (section 7)` : ""),
        ],
        ["Load", `${r.plan.fixed.pairs} pairs (find-max: ${r.plan.findMax.pairs}), partners on different nodes, ${64}-character messages, open-loop schedule; latency from the scheduled send time`],
      ],
    ),
  );

  // 1. find-max
  parts.push("", "### 1. Find-max: highest rate with p99 ≤ 50 ms and loss ≤ 0.1 %", "");
  parts.push(
    `Rates double from ${num(r.plan.findMax.startRate)} msg/s until a step fails, then ${r.plan.findMax.refineSteps} bisection step(s). ` +
      `Each step: ${r.plan.findMax.pairs} fresh pairs (more above ${num(r.plan.findMax.pairs * 2 * r.plan.findMax.maxUserRate)} msg/s, so no user sends more than ${r.plan.findMax.maxUserRate} msg/s and the per-user rate limit never applies), ${num(r.plan.findMax.warmupMs / 1000, 1)} s untimed then ${num(r.plan.findMax.durationMs / 1000, 1)} s timed. ` +
      `For us a step also fails when persistence falls behind (a notification missing after the drain, or notification p99 > ${LIMITS.notificationP99Ms} ms).`,
    "",
  );
  const stepRows: string[][] = [];
  for (const system of ["chat", "socket.io"] as const) {
    for (const s of [...(r.systems[system].findMax?.steps ?? [])].sort((a, b) => a.rate - b.rate)) {
      const l = s.measured.load;
      stepRows.push([
        NAMES[system],
        num(s.rate),
        num(l.pairs),
        num(l.achievedRate),
        ms(l.latencyMs.p50),
        ms(l.latencyMs.p99),
        ms(l.latencyMs.max),
        num(l.delivery.lossPct, 3),
        l.notifications ? ms(l.notifications.latencyMs.p99) : DASH,
        num(s.measured.cpu?.perDeliveredUs),
        num(s.measured.cpu ? s.measured.cpu.boxUtilization * 100 : undefined),
        num(otherPct(s.measured, r.environment.cores)) + (s.measured.noisyAttempts ? ` (repeated; was ${s.measured.noisyAttempts.map((n) => num(n)).join(", ")})` : ""),
        `${num(l.generator.maxEventLoopUtilization * 100)}${l.generator.saturated ? " (saturated)" : ""}`,
        s.held ? "held" : `failed: ${s.failures.join("; ")}`,
      ]);
    }
  }
  if (stepRows.length) {
    parts.push(
      table(["System", "Offered msg/s", "Pairs", "Sent msg/s", "p50 ms", "p99 ms", "max ms", "Loss %", "Notify p99 ms", "Server CPU µs/msg", "Machine busy %", "Others' CPU %", "Generator busy %", "Result"], stepRows),
      "",
      table(
        ["", NAMES.chat, NAMES["socket.io"], "Ours / baseline"],
        [["Highest rate that held", num(us.findMax?.maxRate), num(base.findMax?.maxRate), ratio(us.findMax?.maxRate, base.findMax?.maxRate)]],
      ),
      "",
      `![p99 delivery latency against offered rate](${chartPath})`,
    );
  } else parts.push("Not run.");

  // 2. fixed
  const f = r.plan.fixed;
  parts.push("", `### 2. Fixed load: ${num(f.rate)} msg/s, ${f.pairs} pairs, ${num(f.durationMs / 1000)} s`, "");
  if (us.fixed || base.fixed) {
    const a = us.fixed;
    const b = base.fixed;
    const rows = [
      loadRows("Sent msg/s (timed window)", (m) => m.load.achievedRate, (v) => num(v), a, b),
      loadRows("Delivery p50 ms", (m) => m.load.latencyMs.p50, ms, a, b),
      loadRows("Delivery p95 ms", (m) => m.load.latencyMs.p95, ms, a, b),
      loadRows("Delivery p99 ms", (m) => m.load.latencyMs.p99, ms, a, b),
      loadRows("Delivery max ms", (m) => m.load.latencyMs.max, ms, a, b),
      loadRows("Delivery p99 from the actual send, ms", (m) => m.load.latencyFromSendMs.p99, ms, a, b),
      loadRows("Sender's echo p99 ms", (m) => m.load.ackLatencyMs.p99, ms, a, b),
      ["Sent / received", ...[a, b].map((m) => (m ? `${num(m.load.delivery.sent)} / ${num(m.load.delivery.received)}` : DASH)), DASH],
      ["Lost / duplicates / out of order", ...[a, b].map((m) => (m ? `${m.load.delivery.lost} / ${m.load.delivery.duplicates} / ${m.load.delivery.outOfOrder}` : DASH)), DASH],
      loadRows("Notification p50 ms", (m) => m.load.notifications?.latencyMs.p50, ms, a, b),
      loadRows("Notification p99 ms", (m) => m.load.notifications?.latencyMs.p99, ms, a, b),
      loadRows("Server CPU per delivered message, µs", (m) => m.cpu?.perDeliveredUs, (v) => num(v), a, b),
      loadRows("Machine busy %", (m) => (m.cpu ? m.cpu.boxUtilization * 100 : undefined), (v) => num(v), a, b),
      ["Others' CPU (not servers, not generator), % of machine", ...[a, b].map((m) => (m ? num(otherPct(m, r.environment.cores)) + (m.noisyAttempts ? ` (repeated; was ${m.noisyAttempts.map((n) => num(n)).join(", ")})` : "") : DASH)), DASH],
      loadRows("Kernel interrupts (loopback networking), % of machine", (m) => (m.cpu ? (m.cpu.interruptsS / (m.cpu.wallS * r.environment.cores)) * 100 : undefined), (v) => num(v), a, b),
      ["Busiest other processes (CPU s)", ...[a, b].map((m) => (m?.cpu?.topOthers.length ? m.cpu.topOthers.map((o) => `${o.name} ${num(o.cpuS, 1)}`).join(", ") : DASH)), DASH],
      loadRows("Generator: share of one core %", (m) => m.load.generator.coreShare * 100, (v) => num(v), a, b),
      loadRows("Generator: send lag p99 ms", (m) => m.load.sendLagMs.p99, ms, a, b),
    ];
    parts.push(table(["Figure", NAMES.chat, NAMES["socket.io"], "Ours / baseline"], rows));
    const groups = [a, b].filter((m): m is MeasuredLoad => m?.cpu !== undefined);
    if (groups.length) {
      parts.push("", "Server CPU per delivered message by process group (µs):", "");
      const names = [...new Set(groups.flatMap((m) => Object.keys(m.cpu!.perDeliveredUsByGroup)))];
      parts.push(
        table(
          ["Process group", NAMES.chat, NAMES["socket.io"]],
          names.map((n) => [n, num(a?.cpu?.perDeliveredUsByGroup[n]), num(b?.cpu?.perDeliveredUsByGroup[n])]),
        ),
      );
    }
  } else parts.push("Not run.");

  // 3. idle memory
  parts.push("", `### 3. Idle memory: ${num(r.plan.idleMemory.connections)} open connections`, "");
  if (us.idleMemory || base.idleMemory) {
    const a = us.idleMemory;
    const b = base.idleMemory;
    const row = (label: string, pick: (m: IdleMemoryResult) => number | null, fmt: (v: number | undefined) => string) => {
      const x = a ? (pick(a) ?? undefined) : undefined;
      const y = b ? (pick(b) ?? undefined) : undefined;
      return [label, fmt(x), fmt(y), ratio(x, y)];
    };
    parts.push(
      "Chat sockets (ours: `/ws/{partner}/`; baseline: a Socket.IO connection joined to its user's room), partners on different nodes, nothing sent. " +
        "Resident memory (VmRSS) of the two node processes before opening (right after each ran two full garbage collections, through its " +
        `inspector) and after they settled (${num(r.plan.idleMemory.settleMs / 1000, 1)} s); then once more after two more full collections. V8 does not collect an idle process' old ` +
        "generation, so where nothing else collects, the first figure carries the garbage of the connection set-ups and the second is about " +
        "what the open sockets hold. Our gateways collect it themselves once idle after their heap grew (`CHAT_IDLE_GC_GROWTH_MB`); the " +
        "Socket.IO nodes do not. The target is read on the first.",
      "",
      table(
        ["Figure", NAMES.chat, NAMES["socket.io"], "Ours / baseline"],
        [
          row("Connections open", (m) => m.opened, (v) => num(v)),
          row("Failed", (m) => m.failed, (v) => num(v)),
          row("Node RSS before, MiB", (m) => m.rssBeforeKiB / 1024, (v) => num(v, 1)),
          row("Node RSS after, MiB", (m) => m.rssAfterKiB / 1024, (v) => num(v, 1)),
          row("**Node RSS per connection, KiB**", (m) => m.perConnectionKiB, (v) => num(v, 2)),
          row("Node RSS per connection after a full GC, KiB", (m) => m.perConnectionAfterGcKiB ?? null, (v) => num(v, 2)),
          row("redis-server RSS per connection, KiB", (m) => m.redisPerConnectionKiB, (v) => num(v, 2)),
        ],
      ),
    );
  } else parts.push("Not run.");

  // 4. connection rate
  parts.push("", `### 4. Connection rate: ${num(r.plan.connectionRate.connections)} sockets, ${r.plan.connectionRate.concurrency} upgrades in flight`, "");
  if (us.connectionRate || base.connectionRate) {
    const a = us.connectionRate;
    const b = base.connectionRate;
    const row = (label: string, pick: (m: ConnectionRateResult) => number, fmt: (v: number | undefined) => string) => {
      const x = a ? pick(a) : undefined;
      const y = b ? pick(b) : undefined;
      return [label, fmt(x), fmt(y), ratio(x, y)];
    };
    parts.push(
      "From the upgrade request to a ready socket (ours: its first event, `online_user_list`, after the token check, presence and subscription; baseline: the namespace CONNECT acknowledgement after the token check).",
      "",
      table(
        ["Figure", NAMES.chat, NAMES["socket.io"], "Ours / baseline"],
        [
          row("**Ready sockets per second**", (m) => m.perSecond, (v) => num(v)),
          row("Upgrade → ready p50 ms", (m) => m.latencyMs.p50, ms),
          row("Upgrade → ready p99 ms", (m) => m.latencyMs.p99, ms),
          row("Failed", (m) => m.failed, (v) => num(v)),
          row("Generator: share of one core %", (m) => m.generatorCoreShare * 100, (v) => num(v)),
        ],
      ),
    );
  } else parts.push("Not run.");

  // 5. drain
  parts.push("", `### 5. Worker drain: ${num(r.plan.workerDrain.entries)} stream entries`, "");
  if (r.drain) {
    const d = r.drain;
    parts.push(
      `${num(d.entries)} messages between ${num(d.pairs)} pairs appended to a fresh stream with no worker running (with the gateway's own MessageStream, so in the product's format), ` +
        "then one worker started and timed from its `consuming` line until the last entry was acknowledged (acknowledgement follows the commit).",
      "",
      table(
        ["Figure", NAMES.chat],
        [
          ["**Entries per second**", num(d.entriesPerSecond)],
          ["Drain time, s", num(d.drainMs / 1000, 2)],
          ...(d.cpu ? [["CPU during the drain, % of one core", Object.entries(d.cpu.groups).map(([g, v]) => `${g} ${num((v / d.cpu!.wallS) * 100)}`).join(", ")]] : []),
          ["Rows persisted", `${num(d.persisted)} of ${num(d.entries)}`],
          ["Unread counters wrong", `${num(d.wrongCounts)} of ${num(d.memberRows)}`],
        ],
      ),
    );
  } else parts.push("Not run.");

  // 6. persistence lag
  parts.push("", `### 6. Persistence lag at ${num(r.plan.fixed.rate)} msg/s (accepted → committed)`, "");
  const n = us.fixed?.load.notifications;
  const p = us.fixed?.persistence;
  if (n) {
    parts.push(
      "Observed at the recipient: its `new_message_notification` (published by the worker right after the commit) minus the message's `date_added` (set when the gateway accepted it). " +
        "An upper bound on the commit lag by the publish-and-deliver time (about the delivery latency above); milliseconds, the resolution of `date_added`.",
      "",
      table(
        ["Figure", NAMES.chat],
        [
          ["Accepted → committed p50 ms", ms(n.persistLagMs.p50)],
          ["Accepted → committed p95 ms", ms(n.persistLagMs.p95)],
          ["Accepted → committed p99 ms", ms(n.persistLagMs.p99)],
          ["Accepted → committed max ms", ms(n.persistLagMs.max)],
          ["Notifications received", `${num(n.received)} of ${num(n.expected)}`],
          ...(p
            ? [
                ["Rows persisted after the run", `${num(p.persisted)} of ${num(p.accepted)} accepted`],
                ["Unread counters wrong", `${num(p.wrongCounts)} of ${num(p.memberRows)} (sum ${num(p.unreadTotal)})`],
              ]
            : []),
        ],
      ),
    );
  } else parts.push("Not run.");

  // 7. Redis Cluster
  const comparison = redisComparison(r);
  if (comparison && r.redisCluster) {
    const rc = r.redisCluster;
    parts.push(
      "",
      `### 7. Redis CPU per message: one Redis and a local ${rc.masters.length}-master Redis Cluster`,
      "",
      `Our cluster (2 gateways + 1 worker, the same settings) on the shared Redis (\`REDIS_URL\`), and on a Redis Cluster of ${rc.masters.length} masters that the bench starts on loopback ` +
        "(`redis+cluster://`, redis-server processes it stops by pid), under the same fixed load and find-max. No replicas: they serve no load; " +
        "a replica would add its own process' CPU and, on its master, the replication stream. Redis CPU is each redis-server's user + system time " +
        "(`/proc/<pid>/stat`) over the load, divided by the messages delivered; \"% of one core\" is that time over the wall time, and as Redis runs " +
        "commands on one thread, a server near 100 % is the ceiling. The sum is what a deployment pays per message; the masters' shares show how " +
        "evenly the slots spread the load.",
      "",
      table(comparison.head, comparison.rows),
    );
    const stepRows: string[][] = [];
    for (const [label, f] of [["one Redis", r.systems.chat.findMax], [`cluster, ${rc.masters.length} masters`, rc.findMax]] as const) {
      for (const st of [...(f?.steps ?? [])].sort((x, y) => x.rate - y.rate)) {
        const l = st.measured.load;
        const redis = redisCpuUs(st.measured);
        stepRows.push([
          label,
          num(st.rate),
          ms(l.latencyMs.p99),
          num(l.delivery.lossPct, 3),
          l.notifications ? ms(l.notifications.latencyMs.p99) : DASH,
          num(st.measured.cpu?.perDeliveredUs),
          num(redis?.sumUs, 1),
          redis && redis.servers.length > 1 ? redis.servers.map((x) => num(x.us, 1)).join(" / ") : DASH,
          num(redis ? redis.busiestCoreShare * 100 : undefined),
          num(otherPct(st.measured, r.environment.cores)),
          st.held ? "held" : `failed: ${st.failures.join("; ")}`,
        ]);
      }
    }
    if (stepRows.length) {
      parts.push(
        "",
        "Find-max steps of both (the one-Redis steps are those of section 1):",
        "",
        table(
          ["Redis", "Offered msg/s", "p99 ms", "Loss %", "Notify p99 ms", "Server CPU µs/msg", "Redis CPU µs/msg", "Per master µs/msg", "Busiest redis-server % of one core", "Others' CPU %", "Result"],
          stepRows,
        ),
      );
    }
  }

  // profile
  if (r.profile?.length) {
    const pl = r.profileLoad?.load;
    parts.push(
      "",
      `### CPU profile of our processes at ${num(r.plan.profile.rate)} msg/s (V8 sampling profiler, 1 ms)`,
      "",
      `A separate run (${r.plan.profile.pairs} pairs, ${num(r.plan.profile.durationMs / 1000)} s timed; the profiler runs through the inspector over the timed load only), then a worker draining ${num(r.plan.profileDrainEntries)} entries under \`--cpu-prof\`` +
        (pl ? `: p99 ${ms(pl.latencyMs.p99)} ms, notification p99 ${pl.notifications ? ms(pl.notifications.latencyMs.p99) : DASH} ms under the profiler.` : ".") +
        " Times are samples × the 1 ms interval (about CPU time: a thread preempted inside a syscall is not charged for the time it waited)." +
        " \"Charged\" time is self time with native and node:internal frames (socket writes, uWebSockets.js calls, JSON) charged to the nearest caller in a package or in our code." +
        ` Raw profiles (Chrome DevTools, speedscope): \`bench-results/${resultStamp(r.startedAt)}-*.cpuprofile\`.`,
      "",
    );
    for (const prof of r.profile) {
      parts.push(
        `**${prof.process}**: ${num(prof.busyMs)} ms busy in ${num(prof.totalMs)} ms (${num(prof.totalMs > 0 ? (prof.busyMs / prof.totalMs) * 100 : 0)} % of one core, main thread). Charged by area: ` +
          prof.areas
            .slice(0, 8)
            .map((a) => `${a.area} ${num(a.selfPct, 1)} %`)
            .join(", ") +
          ".",
        "",
        table(
          ["Charged time (top functions)", "Area", "ms", "% of busy"],
          prof.topAttributed.slice(0, 10).map((t) => [`\`${t.frame.replace(/\|/g, "\\|")}\``, t.area, num(t.selfMs), num(t.selfPct, 1)]),
        ),
        "",
        table(
          ["Self time (top frames)", "Area", "ms", "% of busy"],
          prof.topFunctions.slice(0, 6).map((t) => [`\`${t.frame.replace(/\|/g, "\\|")}\``, t.area, num(t.selfMs), num(t.selfPct, 1)]),
        ),
        "",
      );
    }
  }

  if (r.perf?.length) {
    parts.push(
      "",
      `### On-CPU profile (Linux \`perf\`, same run)`,
      "",
      "perf samples a thread only while it runs, and sees the kernel, GC and JIT threads too: read this for CPU cost, and the V8 profile above for which JavaScript is on the path.",
      "",
      table(
        ["Process", "Kernel %", "JavaScript %", "V8 runtime %", "GC %", "JIT compiler %", "Native %"],
        r.perf.map((p) => [
          p.process,
          ...["kernel", "JavaScript", "V8 runtime", "GC", "JIT compiler", "native (libc, libuv, uWS, node)"].map((c) => num(p.categories[c] ?? 0, 1)),
        ]),
      ),
      "",
    );
    for (const p of r.perf) {
      parts.push(
        `**${p.process}** (perf): ` + p.topSymbols.slice(0, 8).map((t) => `\`${t.symbol.replace(/\|/g, "\\|").slice(0, 90)}\` ${num(t.pct, 1)} %`).join(", ") + ".",
        "",
      );
    }
  }

  const errors = [
    ...r.errors,
    ...Object.entries(r.systems).flatMap(([s, v]) => v.errors.map((e) => ({ ...e, scenario: `${s}: ${e.scenario}` }))),
    ...(r.redisCluster?.errors ?? []).map((e) => ({ ...e, scenario: `redis-cluster: ${e.scenario}` })),
  ];
  if (errors.length) parts.push("", "### Errors", "", ...errors.map((e) => `- ${e.scenario}: ${e.message.split("\n")[0]}`));
  return parts.join("\n") + "\n";
}

const BEGIN = "<!-- bench:begin (generated by `npm run bench -- --docs`; edit outside these markers) -->";
const END = "<!-- bench:end -->";
/** The group section has markers of its own: `--only groups --docs` rewrites it alone. */
const GROUPS_BEGIN = "<!-- bench-groups:begin (generated by `npm run bench -- --docs` with the groups scenario; edit outside these markers) -->";
const GROUPS_END = "<!-- bench-groups:end -->";

/**
 * The group conversations' figures beside the 1:1 load's, measured on one cluster in one run: each
 * load delivers about the same frames per second, so the CPU per delivered frame compares.
 */
export function renderGroups(r: BenchResults): string {
  const g = r.groups;
  const parts: string[] = [`Run of ${r.startedAt.slice(0, 16).replace("T", " ")} UTC, \`${r.command}\` (${r.mode} plan), commit \`${r.environment.commit}\`.`, ""];
  if (!g || (g.loads.length === 0 && !g.direct)) return [...parts, "Not run."].join("\n") + "\n";
  parts.push(
    "One cluster (two gateways, one worker, Redis, Postgres) with `CHAT_GROUP_MAX_MEMBERS=1000` and the per-user rate limit off (the senders send faster than one person would). " +
      "Each group is created over the API; 90 % of its members hold a chat socket, spread over both gateways, and ten of them send. " +
      "Every message is one publish on the group's channel and reaches every other connected member: a *frame* is one such delivery. " +
      "The rates are chosen so that every load delivers about the same frames per second; the 1:1 row is the fixed load's kind (pairs, each message to one recipient) at that many messages per second. " +
      "CPU is that of the gateways, the worker, Redis and Postgres over the timed window (the generator's own excluded). " +
      "Persistence: every accepted message stored once, and every member's unread count equal to a recount of the messages.",
    "",
  );
  const rows: string[][] = [];
  const d = g.direct;
  if (d) {
    const c = d.cpu;
    const perS = d.load.delivery.received / (d.windowUs.toUs > d.windowUs.fromUs ? (d.windowUs.toUs - d.windowUs.fromUs) / 1e6 : 1);
    rows.push([
      "1:1 (pairs)",
      "2 per pair",
      num(r.plan.groups.direct.rate),
      num(perS),
      num(perS),
      ms(d.load.latencyMs.p50),
      ms(d.load.latencyMs.p99),
      c ? num(c.perDeliveredUs, 1) : DASH,
      c ? num(c.perDeliveredUs) : DASH,
      c ? Object.entries(c.perDeliveredUsByGroup).map(([k, v]) => `${k} ${num(v, 1)}`).join(", ") : DASH,
      d.persistence ? `${num(d.persistence.persisted)} of ${num(d.persistence.accepted)}, ${num(d.persistence.wrongCounts)} wrong` : DASH,
    ]);
  }
  for (const l of g.loads) {
    rows.push([
      `group of ${num(l.shape.members)}`,
      num(l.shape.connected),
      num(l.shape.rate, l.shape.rate < 100 ? 1 : 0),
      num(l.messagesPerS, l.messagesPerS < 100 ? 1 : 0),
      num(l.framesPerS),
      ms(l.latencyMs.p50),
      ms(l.latencyMs.p99),
      num(l.cpuPerFrameUs, 1),
      num(l.cpuPerMessageUs),
      Object.entries(l.cpuPerFrameUsByGroup).map(([k, v]) => `${k} ${num(v, 1)}`).join(", "),
      `${num(l.persisted)} of ${num(l.sent - l.refused)}, ${num(l.wrongCounts)} wrong`,
    ]);
  }
  parts.push(
    table(
      ["Conversation", "Connected", "Rate, msg/s", "Messages/s delivered", "**Frames/s delivered**", "p50, ms", "**p99, ms**", "**CPU per frame, µs**", "CPU per message, µs", "CPU per frame by process, µs", "Persisted, counts"],
      rows,
    ),
  );
  const missing = g.loads.filter((l) => l.delivered < l.expected);
  if (missing.length) parts.push("", ...missing.map((l) => `- group of ${l.shape.members}: ${num(l.expected - l.delivered)} of ${num(l.expected)} frames not delivered within the drain`));
  const busy = g.loads.filter((l) => l.othersPct > 15);
  if (busy.length) parts.push("", ...busy.map((l) => `- group of ${l.shape.members}: other work used ${num(l.othersPct)} % of the machine during the load`));
  return parts.join("\n") + "\n";
}

/** Replaces the text between two markers of a document; null when they are not there. */
function replaceBetween(current: string, begin: string, end: string, body: string): string | null {
  const from = current.indexOf(begin);
  const to = current.indexOf(end);
  return from >= 0 && to > from ? current.slice(0, from) + `${begin}\n\n${body}\n${end}` + current.slice(to + end.length) : null;
}

/** Writes the JSON, the markdown and the chart; with `docs`, also docs/benchmarks.md's generated part and docs/benchmarks-p99.svg. */
/** The file-name stamp of a run's results: its start time. */
export const resultStamp = (startedAt: string): string => startedAt.replace(/[:.]/g, "-").replace(/Z$/, "");

export function writeReports(r: BenchResults, outDir: string, o: { docs: boolean; repoRoot: string }): { files: string[]; summary: string } {
  const stamp = resultStamp(r.startedAt);
  const files: string[] = [];
  const write = (path: string, text: string) => {
    writeFileSync(path, text);
    files.push(path);
  };
  const points = (f: FindMaxResult | undefined) => (f?.steps ?? []).map((st) => ({ rate: st.rate, p99: st.measured.load.latencyMs.p99, held: st.held }));
  const svg = p99Chart(
    [
      ...(["chat", "socket.io"] as const).map((s) => ({ name: NAMES[s], points: points(r.systems[s].findMax) })),
      ...(r.redisCluster?.findMax ? [{ name: ON_REDIS_CLUSTER, points: points(r.redisCluster.findMax) }] : []),
    ],
    LIMITS.p99Ms,
  );
  write(join(outDir, `${stamp}.json`), JSON.stringify(r, null, 1) + "\n");
  write(join(outDir, `${stamp}-p99.svg`), svg);
  const md = renderMarkdown(r, `${stamp}-p99.svg`);
  write(join(outDir, `${stamp}.md`), md);
  if (r.groups) write(join(outDir, `${stamp}-groups.md`), renderGroups(r));
  if (o.docs) {
    const docPath = join(o.repoRoot, "docs", "benchmarks.md");
    let doc = existsSync(docPath) ? readFileSync(docPath, "utf8") : "";
    // A run of the groups scenario alone leaves the rest of the page as it was.
    const onlyGroups =
      r.groups !== undefined && !Object.values(r.systems).some((x) => x.fixed || x.findMax || x.idleMemory || x.connectionRate) && !r.drain && !r.profile && !r.redisCluster;
    if (!onlyGroups) {
      const body = renderMarkdown(r, "benchmarks-p99.svg");
      doc = replaceBetween(doc, BEGIN, END, body) ?? `# Benchmarks\n\n${doc ? doc + "\n\n" : ""}## Latest full run\n\n${BEGIN}\n\n${body}\n${END}\n`;
      write(join(o.repoRoot, "docs", "benchmarks-p99.svg"), svg);
    }
    if (r.groups) {
      const body = renderGroups(r);
      doc = replaceBetween(doc, GROUPS_BEGIN, GROUPS_END, body) ?? `${doc}\n## Group conversations\n\n${GROUPS_BEGIN}\n\n${body}\n${GROUPS_END}\n`;
    }
    write(docPath, doc);
  }
  const comparison = redisComparison(r);
  const summary = [
    "",
    table(
      ["Figure", "Target", NAMES.chat, NAMES["socket.io"], "Ours / baseline", "Verdict"],
      targets(r).map((t) => [t.name, t.goal, t.ours, t.baseline, t.ratio, metCell(t.met).replace(/\*/g, "")]),
    ),
    "",
    ...(comparison ? [table(comparison.head, comparison.rows.map((row) => row.map((c) => c.replace(/\*/g, "")))), ""] : []),
  ].join("\n");
  return { files, summary };
}
