import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { availableParallelism, loadavg, release, totalmem } from "node:os";
import { boxJiffies } from "./proc.js";
import { Redis } from "ioredis";
import postgres from "postgres";
import { REPO_ROOT } from "./processes.js";

export interface Environment {
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  redis: string;
  postgres: string;
  /** HEAD of the checkout, with `-dirty` when the work tree differs. */
  commit: string;
  /** How busy the machine was (all cores, %) over 2 s before the bench started anything: other people's work. */
  backgroundBusyPct: number;
  /** 1-minute load average at that moment. */
  loadAverage: number;
}

const safely = async <T>(fn: () => Promise<T> | T, fallback: T): Promise<T> => {
  try {
    return await fn();
  } catch {
    return fallback;
  }
};

export async function describeEnvironment(redisUrl: string, databaseUrl: string): Promise<Environment> {
  const cpu = await safely(() => /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown", "unknown");
  const redis = await safely(async () => {
    const r = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await r.connect();
      return /redis_version:(\S+)/.exec(await r.info("server"))?.[1] ?? "unknown";
    } finally {
      r.disconnect();
    }
  }, "unreachable");
  const pg = await safely(async () => {
    const url = new URL(databaseUrl);
    url.pathname = "/postgres";
    const sql = postgres(url.toString(), { max: 1, onnotice: () => undefined });
    try {
      const [row] = await sql<{ server_version: string }[]>`SHOW server_version`;
      return row?.server_version ?? "unknown";
    } finally {
      await sql.end({ timeout: 2 });
    }
  }, "unreachable");
  const commit = await safely(() => {
    const git = (...args: string[]) => execFileSync("git", args, { cwd: REPO_ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    return `${git("rev-parse", "--short", "HEAD")}${git("status", "--porcelain") ? "-dirty" : ""}`;
  }, "unknown");
  const before = boxJiffies();
  await new Promise((r) => setTimeout(r, 2000));
  const after = boxJiffies();
  const backgroundBusyPct = after.total > before.total ? ((after.busy - before.busy) / (after.total - before.total)) * 100 : 0;
  return {
    backgroundBusyPct,
    loadAverage: loadavg()[0] ?? 0,
    cpu,
    cores: availableParallelism(),
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: release(),
    node: process.version,
    redis,
    postgres: pg,
    commit,
  };
}
