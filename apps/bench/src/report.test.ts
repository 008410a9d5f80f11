import { describe, expect, it } from "vitest";
import { FULL } from "./plan.js";
import { categoryOf } from "./perf.js";
import { areaOf, summarizeProfile } from "./profile.js";
import { renderMarkdown, type BenchResults } from "./report.js";
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
