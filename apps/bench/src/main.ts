// `npm run bench`: prepares the database, then per system (ours, the Socket.IO baseline) a cluster for
// the loads (warm-up, fixed, find-max), for ours the same loads again on a local Redis Cluster the
// bench starts, and a fresh cluster for the connection scenarios, then the worker drain and the
// profile run, and writes the reports. Every cluster (and redis-server the bench started) is stopped
// by pid in a finally, and on SIGINT/SIGTERM; a scenario that throws is recorded and the next one runs.
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import postgres from "postgres";
import { runLoad } from "@chat/loadgen";
import { missingClusterBinaries } from "@chat/redis-cluster-harness";
import { ServicePids, startBaselineCluster, startChatCluster, startChatOnRedisCluster, type BenchEnv, type Cluster, type SystemName } from "./cluster.js";
import type { BenchContext } from "./context.js";
import { describeEnvironment } from "./environment.js";
import { FULL, QUICK, REDIS_CLUSTER_MASTERS, SCENARIOS, type Plan, type ScenarioName } from "./plan.js";
import { killAll, REPO_ROOT, runNode } from "./processes.js";
import { Inspector } from "./inspector.js";
import { perfAvailable, perfRecord, removePerfMaps, summarizePerf, type PerfRecording } from "./perf.js";
import { summarizeProfile, summarizeProfiles, type CpuProfile } from "./profile.js";
import { redisCpuUs, resultStamp, writeReports, type BenchResults, type LoadResults } from "./report.js";
import { connectionRate, idleMemory } from "./scenarios/connections.js";
import { workerDrain } from "./scenarios/drain.js";
import { groupLoad } from "./scenarios/groups.js";
import { measuredLoad, measuredLoadWithNoise, waitForQuiet } from "./scenarios/load.js";
import { findMax } from "./scenarios/throughput.js";
import { threadsFor } from "./plan.js";

const USAGE = `Usage: npm run bench -- [--quick] [--only LIST] [--no-baseline] [--docs] [--out DIR]

Starts a local cluster (two gateways, one worker; Redis and Postgres at REDIS_URL / BENCH_DATABASE_URL)
and a Socket.IO 4 + Redis adapter baseline, runs the scenarios against both, prints the tables and
writes bench-results/<time>.{json,md,svg}.

redis-cluster runs our cluster's fixed and find-max loads again on a local Redis Cluster of
${REDIS_CLUSTER_MASTERS} masters (no replicas: they serve no load) that the bench starts on free loopback ports
(redis-server and redis-cli on PATH) and stops by pid, and reports Redis CPU per message per master and
summed, beside the single Redis's, and both maximum rates.

  --quick          small and short (under two minutes): the CI smoke run; leaves out profile and
                   redis-cluster unless --only names them
  --only LIST      comma-separated subset of: ${SCENARIOS.join(", ")};
                   redis-cluster runs the loads named with it (fixed, find-max), both when neither is
  --no-baseline    skip the Socket.IO baseline
  --docs           also rewrite docs/benchmarks.md (between its bench markers) and docs/benchmarks-p99.svg
  --out DIR        results directory (default bench-results/)
  --render-only F  only re-render the reports (and with --docs the docs) from an earlier run's JSON F

Environment: REDIS_URL (redis://127.0.0.1:6379), BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/chat_bench;
a database whose name starts with chat_bench is dropped and re-created on every run).
`;

const { values } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string" },
    "no-baseline": { type: "boolean", default: false },
    docs: { type: "boolean", default: false },
    out: { type: "string" },
    "render-only": { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
if (values["render-only"]) {
  // Re-renders the reports of an earlier run from its JSON, running nothing.
  const earlier = JSON.parse(readFileSync(values["render-only"], "utf8")) as BenchResults;
  const dir = values.out ?? join(REPO_ROOT, "bench-results");
  const written = writeReports(earlier, dir, { docs: values.docs, repoRoot: REPO_ROOT });
  process.stdout.write(`${written.summary}\nwrote ${written.files.join(", ")}\n`);
  process.exit(0);
}
const plan: Plan = values.quick ? QUICK : FULL;
const only = values.only ? (values.only.split(",").map((s) => s.trim()) as ScenarioName[]) : [...SCENARIOS];
for (const s of only) {
  if (!SCENARIOS.includes(s)) {
    process.stderr.write(`--only: unknown scenario ${s}; one of ${SCENARIOS.join(", ")}\n`);
    process.exit(2);
  }
}
/** Left out of --quick (unless --only names them), to keep it under two minutes. */
const NOT_QUICK: ScenarioName[] = ["profile", "redis-cluster"];
const wants = (s: ScenarioName) => only.includes(s) && !(NOT_QUICK.includes(s) && plan.mode === "quick" && !values.only);
const systems: SystemName[] = values["no-baseline"] ? ["chat"] : ["chat", "socket.io"];

const startedAt = new Date();
const runTag = randomBytes(3).toString("hex");
const log = (message: string) => process.stderr.write(`[bench ${((Date.now() - startedAt.getTime()) / 1000).toFixed(0).padStart(3)} s] ${message}\n`);

const redisUrl = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";
const databaseUrl = process.env["BENCH_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/chat_bench";
const mediaDir = mkdtempSync(join(tmpdir(), "chat-bench-media-"));
const env: BenchEnv = { redisUrl, databaseUrl, secret: randomBytes(32).toString("hex"), mediaDir, cores: availableParallelism() };
const redisPrefix = `bench:${runTag}:`;
const outDir = values.out ?? join(REPO_ROOT, "bench-results");
mkdirSync(outDir, { recursive: true });
/** Raw profiles go next to the report, for Chrome DevTools or speedscope. */
const profilePath = (name: string) => join(outDir, `${resultStamp(startedAt.toISOString())}-${name.replace(/[^a-z0-9]+/gi, "-")}.cpuprofile`);

const active = new Set<Cluster>();
let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (interrupted) {
      killAll();
      process.exit(130);
    }
    interrupted = true;
    log(`${signal}: stopping every process the bench started`);
    void Promise.allSettled([...active].map((c) => c.stop())).then(() => process.exit(130));
  });
}

/** Starts a cluster for `fn` and stops it afterwards, whatever happens. */
async function withCluster<T>(start: () => Promise<Cluster>, fn: (c: Cluster) => Promise<T>): Promise<T> {
  const cluster = await start();
  active.add(cluster);
  try {
    return await fn(cluster);
  } finally {
    await cluster.stop();
    active.delete(cluster);
  }
}

async function prepareDatabase(): Promise<void> {
  const url = new URL(databaseUrl);
  const name = url.pathname.slice(1);
  if (name.startsWith("chat_bench")) {
    const admin = postgres({ host: url.hostname, port: Number(url.port || 5432), user: decodeURIComponent(url.username), password: decodeURIComponent(url.password) || undefined, database: "postgres", max: 1, onnotice: () => undefined });
    try {
      await admin.unsafe(`DROP DATABASE IF EXISTS "${name.replace(/"/g, "")}" WITH (FORCE)`);
    } finally {
      await admin.end({ timeout: 2 });
    }
  }
  await runNode("migrations", "packages/db/dist/migrate-cli.js", { DATABASE_URL: databaseUrl });
}

async function deleteRedisKeys(prefix: string): Promise<void> {
  const redis = new Redis(redisUrl);
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      if (keys.length) await redis.unlink(...keys);
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
}

const results: BenchResults = {
  version: 1,
  mode: plan.mode,
  command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`,
  startedAt: startedAt.toISOString(),
  finishedAt: "",
  durationS: 0,
  environment: await describeEnvironment(redisUrl, databaseUrl),
  plan,
  systems: { chat: { errors: [] }, "socket.io": { errors: [] } },
  errors: [],
};

async function scenario(system: { errors: BenchResults["errors"] } | null, name: string, fn: () => Promise<void>): Promise<void> {
  if (interrupted) return;
  try {
    await fn();
  } catch (err) {
    const message = (err as Error).stack ?? String(err);
    log(`${name} failed: ${message}`);
    (system?.errors ?? results.errors).push({ scenario: name, message: (err as Error).message });
  }
}

await scenario(null, "setup", prepareDatabase);
const sql = postgres(databaseUrl, { max: 2, onnotice: () => undefined });
const services = new ServicePids(env);
const ctx: BenchContext = {
  env,
  services,
  sql,
  messageBytes: 64,
  userPrefix: (label) => `b${runTag}${label}_`,
  log,
};

const startSystem = (system: SystemName, nodeArgs: string[] = []) => () =>
  system === "chat" ? startChatCluster(env, { prefix: redisPrefix, nodeArgs }) : startBaselineCluster(env, `bench:${runTag}:socket.io`, nodeArgs);

const warm = async (c: BenchContext, cluster: Cluster) => {
  await runLoad({
    protocol: cluster.system,
    urls: cluster.urls,
    secret: env.secret,
    userPrefix: c.userPrefix("w"),
    ...plan.warmup,
    messageBytes: ctx.messageBytes,
    notifications: true,
    connectConcurrency: 64,
    connectTimeoutMs: 15000,
  });
};

/** Warm-up, then the fixed load and find-max (those asked for) against `cluster`, into `out`. */
async function runLoads(c: BenchContext, cluster: Cluster, out: LoadResults, name: string, loads: { fixed: boolean; findMax: boolean }): Promise<void> {
  log(`${name}: warming up`);
  await warm(c, cluster);
  if (loads.fixed) {
    const f = plan.fixed;
    log(`${name}: fixed ${f.rate} msg/s, ${f.pairs} pairs, ${f.durationMs / 1000} s`);
    out.fixed = await measuredLoadWithNoise(c, cluster, f, "fx", plan.noise, { verifyPersistence: true });
    const l = out.fixed.load;
    log(
      `  p50 ${l.latencyMs.p50.toFixed(2)} ms, p99 ${l.latencyMs.p99.toFixed(2)} ms, loss ${l.delivery.lost}` +
        (l.notifications ? `, notify p99 ${l.notifications.latencyMs.p99.toFixed(1)} ms` : "") +
        (out.fixed.cpu ? `, ${out.fixed.cpu.perDeliveredUs.toFixed(0)} µs CPU/msg` : ""),
    );
    const redis = redisCpuUs(out.fixed);
    if (redis) log(`  Redis CPU per message: ${redis.servers.map((s) => `${s.name} ${s.us.toFixed(1)} µs`).join(", ")}${redis.servers.length > 1 ? `, sum ${redis.sumUs.toFixed(1)} µs` : ""}`);
  }
  if (loads.findMax) {
    log(`${name}: find-max`);
    out.findMax = await findMax(c, cluster, { ...plan.findMax, threadsFor, noise: plan.noise });
    if (out.findMax.error) out.errors.push({ scenario: "find-max", message: out.findMax.error });
    log(`  ${name} max ${out.findMax.maxRate} msg/s`);
  }
}

/**
 * Our cluster's loads on a local Redis Cluster the bench starts (masters only), with their own
 * users (`c` prefix) so the persistence checks count only theirs, and the backlog read on that cluster.
 */
async function redisClusterLoads(): Promise<void> {
  // The loads named with redis-cluster in --only, or both when it names neither.
  const named = wants("fixed") || wants("find-max");
  const loads = { fixed: !named || wants("fixed"), findMax: !named || wants("find-max") };
  const out: NonNullable<BenchResults["redisCluster"]> = { masters: [], errors: [] };
  results.redisCluster = out;
  await scenario(out, "redis-cluster load", async () => {
    const missing = missingClusterBinaries();
    if (missing.length) throw new Error(`${missing.join(" and ")} not on PATH (Debian: apt-get install redis-server redis-tools)`);
    await withCluster(
      () => startChatOnRedisCluster(env, { prefix: redisPrefix, masters: REDIS_CLUSTER_MASTERS }),
      async (cluster) => {
        const rc = cluster.redisCluster!;
        out.masters = rc.masters.map(({ name, port }) => ({ name, port }));
        log(`redis-cluster: ${rc.masters.length} masters (no replicas) on ports ${rc.masters.map((m) => m.port).join(", ")}`);
        const clusterEnv = { ...env, redisUrl: rc.url };
        const clusterServices = new ServicePids(clusterEnv, rc.masters);
        try {
          const c: BenchContext = { ...ctx, env: clusterEnv, services: clusterServices, userPrefix: (label) => ctx.userPrefix(`c${label}`) };
          await runLoads(c, cluster, out, "chat on a Redis Cluster", loads);
        } finally {
          await clusterServices.close();
        }
      },
    );
  });
}

if (results.errors.length === 0) {
  for (const system of systems) {
    const out = results.systems[system];
    if (wants("fixed") || wants("find-max")) {
      await scenario(out, `${system} load`, () =>
        withCluster(startSystem(system), (cluster) => runLoads(ctx, cluster, out, system, { fixed: wants("fixed"), findMax: wants("find-max") })),
      );
    }
    // Right after the single Redis's loads, so both meet the shared machine in about the same state.
    if (system === "chat" && wants("redis-cluster")) await redisClusterLoads();
    if (wants("idle-memory") || wants("connection-rate")) {
      await scenario(out, `${system} connections`, () =>
        // The inspector port lets idle-memory run a full GC in the nodes afterwards (SIGUSR1).
        withCluster(startSystem(system, ["--inspect-port=127.0.0.1:0"]), async (cluster) => {
          if (wants("idle-memory")) {
            await waitForQuiet(plan.noise.quietWaitMs);
            log(`${system}: ${plan.idleMemory.connections} idle connections`);
            out.idleMemory = await idleMemory(ctx, cluster, plan.idleMemory.connections, plan.idleMemory.settleMs);
            const gc = out.idleMemory.perConnectionAfterGcKiB;
            log(
              `  ${out.idleMemory.perConnectionKiB.toFixed(2)} KiB per connection (${out.idleMemory.opened} opened, ${out.idleMemory.failed} failed)` +
                (gc === null ? "" : `; ${gc.toFixed(2)} KiB after a full GC`),
            );
          }
          if (wants("connection-rate")) {
            await waitForQuiet(plan.noise.quietWaitMs);
            log(`${system}: connection rate, ${plan.connectionRate.connections} sockets`);
            out.connectionRate = await connectionRate(ctx, cluster, plan.connectionRate.connections, plan.connectionRate.concurrency);
            log(`  ${out.connectionRate.perSecond.toFixed(0)} sockets/s ready, p99 ${out.connectionRate.latencyMs.p99.toFixed(1)} ms`);
          }
        }),
      );
    }
  }

  if (wants("groups")) {
    await scenario(results.systems.chat, "groups", () =>
      withCluster(
        () => startChatCluster(env, { prefix: `${redisPrefix}groups:`, gatewaySettings: { CHAT_GROUP_MAX_MEMBERS: "1000", CHAT_RATE_MESSAGES_PER_SECOND: "0" } }),
        async (cluster) => {
          const out: NonNullable<BenchResults["groups"]> = { loads: [] };
          results.groups = out;
          log("groups: warming up");
          await warm(ctx, cluster);
          const d = plan.groups.direct;
          await waitForQuiet(plan.noise.quietWaitMs);
          log(`groups: 1:1 beside them, ${d.rate} msg/s, ${d.pairs} pairs`);
          out.direct = await measuredLoad(ctx, cluster, d, "gd", { verifyPersistence: true });
          log(`  p99 ${out.direct.load.latencyMs.p99.toFixed(2)} ms${out.direct.cpu ? `, ${out.direct.cpu.perDeliveredUs.toFixed(0)} µs CPU per delivered message` : ""}`);
          for (const [i, shape] of plan.groups.shapes.entries()) {
            await waitForQuiet(plan.noise.quietWaitMs);
            log(`groups: ${shape.members} members, ${shape.connected} connected, ${shape.rate.toFixed(1)} msg/s`);
            const g = await groupLoad(ctx, cluster, shape, `g${i}`);
            out.loads.push(g);
            log(
              `  ${g.framesPerS.toFixed(0)} frames/s (${g.delivered} of ${g.expected}), p99 ${g.latencyMs.p99.toFixed(2)} ms, ${g.cpuPerFrameUs.toFixed(1)} µs CPU per frame, ` +
                `persisted ${g.persisted} of ${g.sent - g.refused}, ${g.wrongCounts} counts wrong`,
            );
          }
        },
      ),
    );
  }

  if (wants("worker-drain")) {
    await scenario(null, "worker drain", async () => {
      const d = plan.workerDrain;
      await waitForQuiet(plan.noise.quietWaitMs);
      log(`worker drain: ${d.entries} entries`);
      results.drain = await workerDrain(ctx, `${redisPrefix}drain:`, d.entries, d.pairs);
      log(`  ${results.drain.entriesPerSecond.toFixed(0)} entries/s, counts ${results.drain.countsExact ? "exact" : "WRONG"}`);
    });
  }

  if (wants("profile")) {
    const withPerf = perfAvailable();
    await scenario(null, "profile", async () => {
      results.profile = [];
      await withCluster(
        () => startChatCluster(env, { prefix: redisPrefix, nodeArgs: ["--inspect=127.0.0.1:0", ...(withPerf ? ["--perf-basic-prof-only-functions"] : [])] }),
        async (cluster) => {
          const processes = [...cluster.nodes, ...(cluster.worker ? [cluster.worker] : [])];
          log(`profile: V8 sampling profiler${withPerf ? " and perf" : ""} on ${processes.map((p) => p.name).join(", ")} at ${plan.profile.rate} msg/s`);
          await warm(ctx, cluster);
          const inspectors = await Promise.all(
            processes.map((p) => {
              const url = p.inspectorUrl();
              if (!url) throw new Error(`${p.name} printed no inspector URL`);
              return Inspector.connect(url);
            }),
          );
          const profiles: CpuProfile[] = [];
          const perfDir = mkdtempSync(join(tmpdir(), "chat-bench-perf-"));
          const perfTargets: { name: string; pids: number[] }[] = [
            ...processes.map((p) => ({ name: p.name, pids: [p.pid] })),
            { name: "redis-server", pids: await services.redisPids() },
          ];
          let recordings: PerfRecording[] = [];
          try {
            const m = await measuredLoad(ctx, cluster, plan.profile, "pr", {
              around: {
                connected: async () => {
                  // Postgres backends exist once the sockets are open (unread counts on connect).
                  perfTargets.push({ name: "postgres", pids: await services.postgresPids() });
                  if (withPerf) recordings = perfTargets.filter((t) => t.pids.length).map((t, i) => perfRecord(t.pids.join(","), join(perfDir, `${i}.data`)));
                  await Promise.all(inspectors.map((i) => i.startProfiler()));
                },
                drained: async () => {
                  profiles.push(...((await Promise.all(inspectors.map((i) => i.stopProfiler()))) as CpuProfile[]));
                  await Promise.all(recordings.map((r) => r.stop()));
                },
              },
            });
            if (withPerf) {
              results.perf = perfTargets.filter((t) => t.pids.length).map((t, i) => summarizePerf(t.name, join(perfDir, `${i}.data`)));
            }
            results.profileLoad = m;
            // Only the samples of the timed load: connects and the drain's idle tail are left out.
            processes.forEach((p, i) => {
              results.profile!.push(summarizeProfile(p.name, profiles[i]!, m.windowUs));
              writeFileSync(profilePath(p.name), JSON.stringify(profiles[i]));
            });
          } finally {
            for (const i of inspectors) i.close();
            rmSync(perfDir, { recursive: true, force: true });
            removePerfMaps(processes.map((p) => p.pid));
          }
        },
      );
      const dir = mkdtempSync(join(tmpdir(), "chat-bench-prof-"));
      try {
        log(`profile: --cpu-prof on a worker draining ${plan.profileDrainEntries} entries`);
        const drain = await workerDrain(ctx, `${redisPrefix}pdrain:`, plan.profileDrainEntries, plan.workerDrain.pairs, ["--cpu-prof", `--cpu-prof-dir=${dir}`]);
        results.profile.push(...summarizeProfiles(dir, [{ name: `worker draining ${drain.entries} entries`, pid: drain.workerPid }], drain.windowUs));
        for (const f of readdirSync(dir)) if (f.endsWith(".cpuprofile")) copyFileSync(join(dir, f), profilePath("worker-drain"));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
}

await Promise.allSettled([sql.end({ timeout: 2 }), services.close(), deleteRedisKeys(redisPrefix)]);
rmSync(mediaDir, { recursive: true, force: true });
results.finishedAt = new Date().toISOString();
results.durationS = (Date.now() - startedAt.getTime()) / 1000;
const written = writeReports(results, outDir, { docs: values.docs, repoRoot: REPO_ROOT });
process.stdout.write(written.summary + "\n");
log(`wrote ${written.files.join(", ")} in ${results.durationS.toFixed(0)} s`);
const failed = results.errors.length + Object.values(results.systems).reduce((a, s) => a + s.errors.length, 0) + (results.redisCluster?.errors.length ?? 0);
process.exit(failed > 0 || interrupted ? 1 : 0);
