import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

/** Clock ticks per second of /proc CPU times. */
const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU seconds of a process (all its threads), or undefined when it is gone. */
export function cpuSeconds(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name may hold spaces and parentheses: fields start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** Resident set size of a process in KiB (VmRSS), or undefined when it is gone. */
export function rssKiB(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

export function parentPid(pid: number): number | undefined {
  try {
    const m = /^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Jiffies of the whole machine (/proc/stat): busy and total, and the busy part spent in interrupt
 * handlers (loopback networking runs there) and stolen by the hypervisor.
 */
export function boxJiffies(): { busy: number; total: number; interrupts: number; steal: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!;
  // user nice system idle iowait irq softirq steal
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total, interrupts: (v[5] ?? 0) + (v[6] ?? 0), steal: v[7] ?? 0 };
}

/** Named groups of server processes whose CPU is summed (gateways, worker, redis, postgres...). */
export type ProcessGroups = Record<string, number[]>;

export interface CpuSnapshot {
  at: number;
  perPid: Map<number, number>;
  box: ReturnType<typeof boxJiffies>;
  /** This process's CPU (the generator and the bench). */
  self: NodeJS.CpuUsage;
  /** Every process, to name the busiest ones that are not ours. */
  all: Map<number, { name: string; cpuS: number }>;
}

/** CPU seconds and a short name of every process on the machine. */
export function allProcesses(withNames: boolean): Map<number, { name: string; cpuS: number }> {
  const out = new Map<number, { name: string; cpuS: number }>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const cpuS = cpuSeconds(pid);
    if (cpuS === undefined) continue;
    out.set(pid, { name: withNames ? processName(pid) : "?", cpuS });
  }
  return out;
}

/** `node script.js …` or `postgres: …` (more telling than the command name), or `[comm]` for a kernel thread. */
function processName(pid: number): string {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
    if (argv.length === 0) return `[${readFileSync(`/proc/${pid}/comm`, "utf8").trim()}]`;
    return (argv[0]!.endsWith("node") && argv[1] ? `node ${argv.slice(1).join(" ")}` : argv.join(" ")).slice(0, 60);
  } catch {
    return "?";
  }
}

/** `withNames` also reads every process's command line (slower: for the end of a window). */
export function snapshotCpu(groups: ProcessGroups, withNames = false): CpuSnapshot {
  const perPid = new Map<number, number>();
  for (const pids of Object.values(groups)) {
    for (const pid of pids) {
      const s = cpuSeconds(pid);
      if (s !== undefined) perPid.set(pid, s);
    }
  }
  return { at: performance.now(), perPid, box: boxJiffies(), all: allProcesses(withNames), self: process.cpuUsage() };
}

export interface CpuDelta {
  wallS: number;
  /** CPU seconds per group over the interval (a process absent at the start counts from 0). */
  groups: Record<string, number>;
  totalS: number;
  /** Share of the whole machine that was busy (all processes, 0..1). */
  boxUtilization: number;
  /** CPU seconds the whole machine was busy (all cores, all processes, the kernel). */
  boxBusyS: number;
  /** Of that, interrupt handlers (loopback networking runs there: the load's own traffic, mostly). */
  interruptsS: number;
  /** Of that, time the hypervisor gave to other machines. */
  stealS: number;
  /** This process (the generator, the bench) over the window. */
  selfS: number;
  /** Busy time of no server, not this process, not interrupts nor steal: other people's work. */
  othersS: number;
  /** The busiest processes outside the groups and this process, by name. */
  topOthers: { name: string; cpuS: number }[];
}

export function cpuDelta(start: CpuSnapshot, end: CpuSnapshot, groups: ProcessGroups): CpuDelta {
  const out: Record<string, number> = {};
  let total = 0;
  for (const [name, pids] of Object.entries(groups)) {
    let s = 0;
    for (const pid of new Set(pids)) {
      const b = end.perPid.get(pid);
      if (b === undefined) continue;
      s += b - (start.perPid.get(pid) ?? 0);
    }
    out[name] = s;
    total += s;
  }
  const dTotal = end.box.total - start.box.total;
  const boxBusyS = (end.box.busy - start.box.busy) / CLK_TCK;
  const notOthers = (end.box.interrupts - start.box.interrupts + end.box.steal - start.box.steal) / CLK_TCK;
  const selfS = (end.self.user + end.self.system - start.self.user - start.self.system) / 1e6;
  const ours = new Set([...Object.values(groups).flat(), process.pid]);
  const others = new Map<string, number>();
  for (const [pid, p] of end.all) {
    if (ours.has(pid)) continue;
    const d = p.cpuS - (start.all.get(pid)?.cpuS ?? 0);
    if (d > 0) others.set(p.name, (others.get(p.name) ?? 0) + d);
  }
  return {
    wallS: (end.at - start.at) / 1000,
    groups: out,
    totalS: total,
    boxUtilization: dTotal > 0 ? (end.box.busy - start.box.busy) / dTotal : 0,
    boxBusyS,
    interruptsS: (end.box.interrupts - start.box.interrupts) / CLK_TCK,
    stealS: (end.box.steal - start.box.steal) / CLK_TCK,
    selfS,
    othersS: Math.max(0, boxBusyS - notOthers - selfS - total),
    topOthers: [...others.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 3)
      .filter(([, cpuS]) => cpuS >= 0.05)
      .map(([name, cpuS]) => ({ name, cpuS })),
  };
}
