import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, rmSync } from "node:fs";

/**
 * On-CPU profiles with Linux `perf` (when installed): unlike V8's sampler, which samples on a
 * wall-clock timer and charges a thread preempted inside a syscall to that syscall, perf samples
 * only while the thread runs and also sees the kernel (syscalls, context switches, networking),
 * GC and JIT threads. Node started with --perf-basic-prof-only-functions writes
 * /tmp/perf-<pid>.map, so JavaScript functions have names (`JS:*name file:line`).
 */
export function perfAvailable(): boolean {
  try {
    execFileSync("perf", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

export interface PerfRecording {
  /** Stops recording (SIGINT) and resolves when the data file is written. */
  stop(): Promise<void>;
  readonly file: string;
}

/** Records on-CPU samples of `pids` (comma-separated) into `file` until stop(). */
export function perfRecord(pids: string, file: string, frequency = 499): PerfRecording {
  const child: ChildProcess = spawn("perf", ["record", "-F", String(frequency), "-o", file, "-p", pids], { stdio: "ignore" });
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  return {
    file,
    stop: async () => {
      child.kill("SIGINT");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export interface PerfSummary {
  process: string;
  samples: number;
  /** Shares (%) of on-CPU samples: kernel, JavaScript, V8 builtins, GC, JIT compiler, the rest. */
  categories: Record<string, number>;
  topSymbols: { symbol: string; category: string; pct: number }[];
}

export function categoryOf(kind: string, symbol: string): string {
  if (kind === "k") return "kernel";
  if (symbol.startsWith("JS:")) return "JavaScript";
  if (/Scavenge|MarkCompact|Heap::|Sweeper|ConcurrentMarking|GCTracer|MemoryAllocator|Marking/.test(symbol)) return "GC";
  if (/compiler::|Compile|Turbofan|Maglev|Sparkplug|baseline::/.test(symbol)) return "JIT compiler";
  if (symbol.startsWith("Builtins_") || symbol.startsWith("v8::")) return "V8 runtime";
  return "native (libc, libuv, uWS, node)";
}

/** Parses `perf report --sort sym` of one recording. */
export function summarizePerf(processName: string, file: string, top = 15): PerfSummary {
  const text = execFileSync("perf", ["report", "-i", file, "--no-children", "--sort", "sym", "-g", "none", "--stdio"], {
    encoding: "utf8",
    maxBuffer: 64 << 20,
    stdio: ["ignore", "pipe", "ignore"],
  });
  const m = /# Samples: ([\d.]+)([KMG]?)/.exec(text);
  const samples = m ? Math.round(Number(m[1]) * ({ K: 1e3, M: 1e6, G: 1e9 }[m[2] as "K" | "M" | "G"] ?? 1)) : 0;
  const categories: Record<string, number> = {};
  const symbols: { symbol: string; category: string; pct: number }[] = [];
  for (const line of text.split("\n")) {
    const row = /^\s+([\d.]+)%\s+\[(.)\]\s+(.+?)\s*$/.exec(line);
    if (!row) continue;
    const pct = Number(row[1]);
    const symbol = row[3]!.replace(/^JS:\*?/, "JS:").replace(/file:\/\/\S*?\/(apps|packages|node_modules)\//, "$1/");
    const category = categoryOf(row[2]!, symbol);
    categories[category] = (categories[category] ?? 0) + pct;
    symbols.push({ symbol, category, pct });
  }
  return { process: processName, samples, categories, topSymbols: symbols.sort((a, b) => b.pct - a.pct).slice(0, top) };
}

/** Removes what --perf-basic-prof left in /tmp for these pids. */
export function removePerfMaps(pids: number[]): void {
  for (const pid of pids) {
    const map = `/tmp/perf-${pid}.map`;
    if (existsSync(map)) rmSync(map, { force: true });
  }
}
