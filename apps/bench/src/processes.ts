import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root: every script path below is relative to it. */
export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** A server process the bench started; stopped by pid, whatever happens. */
export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  /** The JSON log line that said the process is ready (e.g. the gateway's `listening`, with its port). */
  readonly ready: Record<string, unknown>;
  /** The last lines of output, for error messages. */
  tail(): string;
  /** The DevTools WebSocket URL when started with --inspect (from its stderr line). */
  inspectorUrl(): string | undefined;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves on exit. */
  stop(graceMs?: number): Promise<void>;
  readonly exited: Promise<number | null>;
}

export interface SpawnOptions {
  name: string;
  /** Script path relative to the repository root. */
  script: string;
  env: Record<string, string>;
  /** Resolve when a JSON log line has this `msg`. */
  readyMessage: string;
  nodeArgs?: string[];
  timeoutMs?: number;
}

const running = new Map<number, ChildProcess>();

/** Kills (SIGKILL) every process still running: the last resort on exit and on a second Ctrl-C. */
export function killAll(): void {
  for (const [pid, child] of running) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  }
}
process.on("exit", killAll);

/**
 * Starts a Node.js script with only the given environment (plus PATH and HOME), reads its JSON log
 * lines until one has `msg === readyMessage`, and keeps draining its output afterwards so a
 * chatty process never blocks on a full pipe.
 */
export function spawnNode(o: SpawnOptions): Promise<ManagedProcess> {
  const child = spawn(process.execPath, [...(o.nodeArgs ?? []), o.script], {
    cwd: REPO_ROOT,
    env: { PATH: process.env["PATH"] ?? "", HOME: process.env["HOME"] ?? "/tmp", ...o.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const pid = child.pid;
  if (pid === undefined) return Promise.reject(new Error(`${o.name}: could not spawn ${o.script}`));
  running.set(pid, child);
  const lines: string[] = [];
  const keep = (line: string) => {
    lines.push(line);
    if (lines.length > 40) lines.shift();
  };
  const exited = new Promise<number | null>((resolve) =>
    child.on("exit", (code) => {
      running.delete(pid);
      resolve(code);
    }),
  );
  const tail = () => lines.join("\n");
  const stop = async (graceMs = 5000) => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await exited;
    clearTimeout(timer);
  };
  let inspectorUrl: string | undefined;
  createInterface({ input: child.stderr! }).on("line", (line) => {
    inspectorUrl ??= /^Debugger listening on (ws:\/\/\S+)/.exec(line)?.[1];
    keep(line);
  });
  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      settled = true;
      child.kill("SIGKILL");
      reject(new Error(`${o.name} not ready after ${o.timeoutMs ?? 15000} ms:\n${tail()}`));
    }, o.timeoutMs ?? 15000);
    createInterface({ input: child.stdout! }).on("line", (line) => {
      keep(line);
      if (settled || !line.startsWith("{")) return;
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      if (entry["msg"] === o.readyMessage) {
        settled = true;
        clearTimeout(timer);
        resolve({ name: o.name, pid, ready: entry, tail, stop, exited, inspectorUrl: () => inspectorUrl });
      }
    });
    void exited.then((code) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(new Error(`${o.name} exited (${code}) before it was ready:\n${tail()}`));
    });
  });
}

/** Runs a script to completion; rejects with its output when it fails. */
export async function runNode(name: string, script: string, env: Record<string, string>, timeoutMs = 60000): Promise<string> {
  const child = spawn(process.execPath, [script], {
    cwd: REPO_ROOT,
    env: { PATH: process.env["PATH"] ?? "", HOME: process.env["HOME"] ?? "/tmp", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (child.pid !== undefined) running.set(child.pid, child);
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
  clearTimeout(timer);
  if (child.pid !== undefined) running.delete(child.pid);
  if (code !== 0) throw new Error(`${name} failed (${code}):\n${out}`);
  return out;
}
