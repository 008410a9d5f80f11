import { spawn, type ChildProcess } from "node:child_process";
import { Redis } from "ioredis";
import { onTestFinished } from "vitest";
import { waitFor } from "./wait.js";

export { freePort } from "./ports.js";

export interface PrivateRedis {
  child: ChildProcess;
  /** SIGKILL by pid (a crash: nothing is flushed beyond what the config already wrote). */
  kill(): Promise<void>;
}

/**
 * A redis-server of the test's own, for faults that must not touch the shared one; killed by its
 * pid when the test ends. Resolves once it answers PING (after replaying its AOF, if any).
 */
export async function startPrivateRedis(port: number, args: string[] = ["--save", "", "--appendonly", "no"]): Promise<PrivateRedis> {
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const output: string[] = [];
  child.stdout!.on("data", (d: Buffer) => output.push(d.toString()));
  child.stderr!.on("data", (d: Buffer) => output.push(d.toString()));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, "SIGKILL");
    await exited;
  };
  onTestFinished(kill);
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`redis-server exited: ${output.join("")}`);
      const probe = new Redis({ host: "127.0.0.1", port, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
      probe.on("error", () => {});
      try {
        await probe.connect();
        return (await probe.ping()) === "PONG";
      } finally {
        probe.disconnect();
      }
    },
    10000,
    50,
  );
  return { child, kill };
}
