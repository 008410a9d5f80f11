import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LoadResult } from "@chat/loadgen";
import { describe, expect, it } from "vitest";
import { FULL } from "./plan.js";
import { categoryOf } from "./perf.js";
import { areaOf, summarizeProfile } from "./profile.js";
import { redisCpuUs, renderMarkdown, writeReports, type BenchResults } from "./report.js";
import type { MeasuredLoad } from "./scenarios/load.js";
import { p99Chart } from "./svg.js";

describe("profile summary", () => {
  it("names areas by package, workspace or runtime", () => {
    expect(areaOf("file:///r/node_modules/ioredis/built/Pipeline.js", "write")).toBe("ioredis");
    expect(areaOf("file:///r/node_modules/@socket.io/redis-adapter/dist/index.js", "f")).toBe("@socket.io/redis-adapter");
    expect(areaOf("file:///r/apps/gateway/dist/transport/server.js", "send")).toBe("@chat/gateway");
    expect(areaOf("node:internal/streams/writable", "write")).toBe("node:internal");
    expect(areaOf("", "(garbage collector)")).toBe("(garbage collector)");
    expect(areaOf("", "writeUtf8String")).toBe("(native)");
  });

  it("charges native and runtime frames to their nearest package caller, within the window", () => {
    const frame = (id: number, functionName: string, url: string, children: number[] = []) => ({ id, callFrame: { functionName, url, lineNumber: 0 }, children });
    const profile = {
      nodes: [
        frame(1, "(root)", "", [2, 5]),
        frame(2, "send", "file:///r/apps/gateway/dist/server.js", [3]),
        frame(3, "write", "node:net", [4]),
        frame(4, "writeUtf8String", ""),
        frame(5, "(idle)", ""),
      ],
      // Samples at t = 1000 + 10, 20, 30, 90 µs; the last gap (a preempted thread) still counts one interval.
      samples: [4, 4, 2, 5],
      timeDeltas: [10, 10, 10, 60],
      startTime: 1000,
      endTime: 1040,
    };
    const all = summarizeProfile("g", profile);
    expect(all.totalMs).toBeCloseTo(0.09);
    // Three busy samples of the 10 µs interval.
    expect(all.busyMs).toBeCloseTo(0.03);
    expect(all.topFunctions[0]).toMatchObject({ frame: "writeUtf8String", area: "(native)" });
    expect(all.topAttributed).toHaveLength(1);
    expect(all.topAttributed[0]).toMatchObject({ frame: "send (apps/gateway/dist/server.js:1)", area: "@chat/gateway", selfPct: 100 });
    const windowed = summarizeProfile("g", profile, { fromUs: 1025, toUs: 1100 });
    expect(windowed.busyMs).toBeCloseTo(0.01);
    expect(windowed.totalMs).toBeCloseTo(0.07);
  });
});

describe("perf categories", () => {
  it("sorts symbols into kernel, JavaScript, GC, JIT, V8 runtime and native", () => {
    expect(categoryOf("k", "finish_task_switch.isra.0")).toBe("kernel");
    expect(categoryOf(".", "JS:dispatch packages/bus/dist/router.js:72:13")).toBe("JavaScript");
    expect(categoryOf(".", "v8::internal::Scavenger::ScavengeObject<x>")).toBe("GC");
    expect(categoryOf(".", "v8::internal::compiler::GraphReducer::ReduceTop")).toBe("JIT compiler");
    expect(categoryOf(".", "Builtins_LoadIC")).toBe("V8 runtime");
    expect(categoryOf(".", "__memmove_avx512_unaligned_erms")).toBe("native (libc, libuv, uWS, node)");
  });
});

describe("report", () => {
  const results: BenchResults = {
    version: 1,
    mode: "full",
    command: "npm run bench",
    startedAt: "2026-01-01T00:00:00.000Z",
    finishedAt: "2026-01-01T00:05:00.000Z",
    durationS: 300,
    environment: { cpu: "cpu", cores: 2, memoryGiB: 24, kernel: "6", node: "v20", redis: "7", postgres: "15", commit: "abc", backgroundBusyPct: 3, loadAverage: 0.5 },
    plan: FULL,
    systems: { chat: { errors: [] }, "socket.io": { errors: [] } },
    drain: {
      entries: 100000,
      pairs: 1000,
      loadMs: 1,
      drainMs: 2000,
      entriesPerSecond: 50000,
      persisted: 100000,
      wrongCounts: 0,
      memberRows: 2000,
      countsExact: true,
      windowUs: { fromUs: 0, toUs: 1 },
      workerPid: 1,
    },
    errors: [{ scenario: "setup", message: "boom\nstack" }],
  };

  it("renders every scenario, marks what did not run, and judges the targets it has", () => {
    const md = renderMarkdown(results, "chart.svg");
    expect(md).toContain("### Targets");
    expect(md).toMatch(/Worker drain with exact counts \| ≥ 30,000 entries\/s \| 50,000 entries\/s .*\*\*met\*\*/);
    expect(md).toMatch(/Max sustained rate.*not run/);
    expect(md).toContain("### 3. Idle memory: 10,000 open connections");
    expect(md).toContain("- setup: boom");
    expect(md).not.toContain("stack");
    expect(md).not.toContain("Redis Cluster");
  });

  /** A load of `delivered` messages over 5 s whose processes used `groups` CPU seconds. */
  const measured = (rate: number, delivered: number, groups: Record<string, number>, p99 = 4): MeasuredLoad => {
    const h = { count: delivered, min: 1, mean: 2, p50: 2, p90: 3, p95: 3, p99, p999: 5, max: 6 };
    const load: LoadResult = {
      protocol: "chat",
      pairs: 100,
      threads: 1,
      offeredRate: rate,
      achievedRate: rate,
      durationMs: 5000,
      warmupMs: 1000,
      delivery: { sent: delivered, received: delivered, lost: 0, duplicates: 0, outOfOrder: 0, unknown: 0, lossPct: 0 },
      refused: 0,
      acks: delivered,
      unexpectedCloses: 0,
      unmatchedFrames: 0,
      latencyMs: h,
      latencyFromSendMs: h,
      sendLagMs: h,
      ackLatencyMs: h,
      notifications: { expected: delivered, received: delivered, latencyMs: h, persistLagMs: h },
      generator: { cpuMs: 1000, wallMs: 5000, coreShare: 0.2, boxShare: 0.1, maxEventLoopUtilization: 0.3, saturated: false },
      connectMs: 100,
      latencyHistogram: { buckets: [], min: 1, max: 6, sum: 0, count: 0, clamped: 0 },
    };
    const totalS = Object.values(groups).reduce((a, b) => a + b, 0);
    const per = (v: number) => (v / delivered) * 1e6;
    return {
      load,
      windowUs: { fromUs: 0, toUs: 5e6 },
      cpu: {
        wallS: 5,
        groups,
        totalS,
        boxUtilization: 0.5,
        boxBusyS: 5,
        interruptsS: 0.1,
        stealS: 0,
        selfS: 1,
        othersS: 0,
        otherS: 0,
        topOthers: [],
        perDeliveredUs: per(totalS),
        perDeliveredUsByGroup: Object.fromEntries(Object.entries(groups).map(([k, v]) => [k, per(v)])),
      },
    };
  };
  const step = (rate: number, m: MeasuredLoad, held: boolean) => ({ rate, held, failures: held ? [] : ["p99 80.0 ms > 50 ms"], measured: m });

  it("puts the Redis Cluster's CPU per master and summed beside the single Redis's, with both maximum rates", () => {
    const one = measured(2000, 10000, { gateways: 2, worker: 1, redis: 0.5, postgres: 1 });
    const onCluster = measured(2000, 10000, { gateways: 2, worker: 1, "redis-1": 0.2, "redis-2": 0.3, "redis-3": 0.1, postgres: 1 }, 6);
    const r: BenchResults = {
      ...results,
      errors: [],
      systems: {
        chat: { errors: [], fixed: one, findMax: { maxRate: 4000, firstFailedRate: 8000, steps: [step(4000, measured(4000, 20000, { redis: 2 }), true), step(8000, measured(8000, 40000, { redis: 5 }), false)] } },
        "socket.io": { errors: [] },
      },
      redisCluster: {
        masters: [
          { name: "redis-1", port: 7001 },
          { name: "redis-2", port: 7002 },
          { name: "redis-3", port: 7003 },
        ],
        fixed: onCluster,
        findMax: { maxRate: 8000, firstFailedRate: null, steps: [step(8000, measured(8000, 40000, { "redis-1": 1, "redis-2": 2, "redis-3": 1 }), true)] },
        errors: [{ scenario: "find-max", message: "sockets refused" }],
      },
    };

    expect(redisCpuUs(one)).toEqual({ servers: [{ name: "redis", us: 50, coreShare: 0.1 }], sumUs: 50, busiestCoreShare: 0.1 });
    const cluster = redisCpuUs(onCluster)!;
    expect(cluster.servers.map((s) => s.name)).toEqual(["redis-1", "redis-2", "redis-3"]);
    expect(cluster.sumUs).toBeCloseTo(60);
    expect(cluster.busiestCoreShare).toBeCloseTo(0.06);

    const md = renderMarkdown(r, "chart.svg");
    expect(md).toContain("### 7. Redis CPU per message: one Redis and a local 3-master Redis Cluster");
    expect(md).toContain("| Redis CPU per delivered message at 2,000 msg/s, µs (cluster: sum of the masters) | 50.0 | 60.0 | 1.20× |");
    expect(md).toContain("| … of which redis-2 (master 2, :7002), µs | – | 30.0 | – |");
    expect(md).toContain("| Busiest redis-server, % of one core | 10 | 6 | 0.60× |");
    expect(md).toContain("| Others' CPU during the fixed load, % of machine | 0 | 0 | – |");
    expect(md).toContain("| **Highest rate that held (find-max), msg/s** | 4,000 | 8,000 | 2.00× |");
    // At the highest rate that held: 2 s over 20,000 messages on one Redis, 4 s over 40,000 on the cluster.
    expect(md).toContain("| Redis CPU per delivered message at that rate, µs (sum) | 100.0 | 100.0 | 1.00× |");
    expect(md).toMatch(/\| cluster, 3 masters \| 8,000 \| .* \| 100\.0 \| 25\.0 \/ 50\.0 \/ 25\.0 \| 40 \| .* \| held \|/);
    expect(md).toMatch(/\| one Redis \| 8,000 \| .* \| 125\.0 \| – \| 100 \| .* \| failed: p99 80\.0 ms > 50 ms \|/);
    expect(md).toContain("ours again on a local 3-master Redis Cluster without replicas");
    expect(md).toContain("- redis-cluster: find-max: sockets refused");

    const failed = renderMarkdown({ ...r, redisCluster: { masters: [], errors: [{ scenario: "redis-cluster load", message: "redis-server not on PATH" }] } }, "chart.svg");
    expect(failed).not.toContain("### 7.");
    expect(failed).not.toContain("ours again");
    expect(failed).toContain("- redis-cluster: redis-cluster load: redis-server not on PATH");

    const dir = mkdtempSync(join(tmpdir(), "bench-report-test-"));
    try {
      const { summary } = writeReports(r, dir, { docs: false, repoRoot: dir });
      expect(summary).toContain("| Highest rate that held (find-max), msg/s | 4,000 | 8,000 | 2.00× |");
      expect(summary).toContain("| … of which redis-1 (master 1, :7001), µs | – | 20.0 | – |");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("draws the p99 chart with the limit line and hollow failed steps", () => {
    const svg = p99Chart(
      [
        { name: "ours", points: [{ rate: 1000, p99: 2, held: true }, { rate: 2000, p99: 80, held: false }] },
        { name: "base <io>", points: [] },
      ],
      50,
    );
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg).toContain("limit 50 ms");
    expect(svg).toContain("base &lt;io&gt;");
    expect(svg).toContain('fill="#fff"><title>ours: 2000 msg/s');
    expect(svg.trim().endsWith("</svg>")).toBe(true);
  });
});
