import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** A V8 .cpuprofile (what `node --cpu-prof` writes). */
export interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileEntry {
  /** `function (file:line)` or a V8 pseudo-frame like `(garbage collector)`. */
  frame: string;
  /** Where the code lives: a package (`ioredis`, `@chat/bus`), `node:internal`, or a V8 category. */
  area: string;
  selfMs: number;
  /** Share of the process's busy (non-idle) samples. */
  selfPct: number;
}

export interface ProfileSummary {
  process: string;
  /** Wall time sampled in the window. */
  totalMs: number;
  /** Non-idle samples × the sampling interval: about the main thread's CPU time. */
  busyMs: number;
  /** Self time per function (native and runtime frames as themselves). */
  topFunctions: ProfileEntry[];
  /**
   * Self time with native and node:internal frames charged to their nearest caller in a package
   * or in our code (e.g. uWebSockets.js' native send and the socket writes under it count for the
   * JavaScript function that called them): what each piece of code costs, callees in the runtime included.
   */
  topAttributed: ProfileEntry[];
  /** Attributed time summed by area (package, our workspace, or V8 category). */
  areas: { area: string; selfMs: number; selfPct: number }[];
}

/** Which package or part of the runtime a script URL belongs to. */
export function areaOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith("(") ? functionName : "(native)";
  if (url.startsWith("node:")) return "node:internal";
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1]!;
  const ws = /\/(apps|packages)\/([^/]+)\//.exec(url);
  if (ws) return `@chat/${ws[2]}`;
  return url.replace(/^file:\/\//, "");
}

function shortUrl(url: string): string {
  return url
    .replace(/^file:\/\//, "")
    .replace(/^.*node_modules\//, "")
    .replace(/^.*\/(apps|packages)\//, "$1/");
}

const frameName = (callFrame: CpuProfile["nodes"][number]["callFrame"]): string =>
  callFrame.url ? `${callFrame.functionName || "(anonymous)"} (${shortUrl(callFrame.url)}:${callFrame.lineNumber + 1})` : callFrame.functionName || "(anonymous)";

/**
 * Self time per function and per area of one profile, counting only samples taken within
 * `window` (µs of the monotonic clock, the one process.hrtime uses) when given.
 */
export function summarizeProfile(processName: string, profile: CpuProfile, window?: { fromUs: number; toUs: number }, top = 15): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // Each sample counts for one sampling interval, not for the wall time since the previous one: a
  // thread preempted inside a syscall (a write that wakes Redis or the client on a 2-core machine)
  // takes its next sample only when it runs again, and weighting by the gap would charge the time it
  // spent off the CPU to that syscall. Counting samples approximates CPU time.
  const deltas = profile.timeDeltas.filter((d) => d > 0).sort((a, b) => a - b);
  const interval = deltas[Math.floor(deltas.length / 2)] ?? 1000;
  const self = new Map<number, number>();
  let t = profile.startTime;
  let wallUs = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i] ?? 0;
    t += dt;
    if (window && (t < window.fromUs || t > window.toUs)) continue;
    wallUs += dt;
    const id = profile.samples[i]!;
    self.set(id, (self.get(id) ?? 0) + interval);
  }
  // The nearest ancestor (or the node itself) that is code in a package or workspace.
  const owner = (id: number): CpuProfile["nodes"][number] => {
    const start = byId.get(id)!;
    for (let cur: CpuProfile["nodes"][number] | undefined = start; cur; cur = byId.get(parent.get(cur.id) ?? -1)) {
      const url = cur.callFrame.url;
      if (url && !url.startsWith("node:")) return cur;
    }
    return start;
  };
  const frames = new Map<string, { area: string; us: number }>();
  const attributed = new Map<string, { area: string; us: number }>();
  const add = (into: Map<string, { area: string; us: number }>, node: CpuProfile["nodes"][number], us: number) => {
    const key = frameName(node.callFrame);
    const f = into.get(key) ?? { area: areaOf(node.callFrame.url, node.callFrame.functionName), us: 0 };
    f.us += us;
    into.set(key, f);
  };
  let busyUs = 0;
  for (const [id, us] of self) {
    const node = byId.get(id);
    if (!node) continue;
    if (node.callFrame.functionName === "(idle)") continue;
    busyUs += us;
    add(frames, node, us);
    add(attributed, owner(id), us);
  }
  const pct = (us: number) => (busyUs > 0 ? (us / busyUs) * 100 : 0);
  const areas = new Map<string, number>();
  for (const f of attributed.values()) areas.set(f.area, (areas.get(f.area) ?? 0) + f.us);
  const topOf = (m: Map<string, { area: string; us: number }>) =>
    [...m.entries()]
      .sort((a, b) => b[1].us - a[1].us)
      .slice(0, top)
      .map(([frame, f]) => ({ frame, area: f.area, selfMs: f.us / 1000, selfPct: pct(f.us) }));
  return {
    process: processName,
    totalMs: wallUs / 1000,
    busyMs: busyUs / 1000,
    topFunctions: topOf(frames),
    topAttributed: topOf(attributed),
    areas: [...areas.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([area, us]) => ({ area, selfMs: us / 1000, selfPct: pct(us) })),
  };
}

/** Reads the .cpuprofile files of `dir` whose names hold one of the pids, summarized per process. */
export function summarizeProfiles(dir: string, processes: { name: string; pid: number }[], window?: { fromUs: number; toUs: number }): ProfileSummary[] {
  const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile"));
  const out: ProfileSummary[] = [];
  for (const p of processes) {
    // Node names them CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile; the main thread is thread 0.
    const file = files.find((f) => f.split(".")[3] === String(p.pid) && f.split(".")[4] === "0");
    if (!file) continue;
    out.push(summarizeProfile(p.name, JSON.parse(readFileSync(join(dir, file), "utf8")) as CpuProfile, window));
  }
  return out;
}
