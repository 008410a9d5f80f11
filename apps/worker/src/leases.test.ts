import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { PartitionLeases, type LeaseKeys, type LeaseOptions } from "./leases.js";

/**
 * The lease manager against the suite's Redis (shared with other tests: each test has its own key
 * prefix and deletes its keys). Conditions are polled with a deadline; the only fixed delays are the
 * simulated "batch in hand" of a release, which is what the ordering assertions are about.
 */

const REDIS_URL = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";
const servicesUp = process.env["CHAT_TEST_SERVICES"] === "up";
const WORKER_DIR = fileURLToPath(new URL("..", import.meta.url));
const DIST_LEASES = fileURLToPath(new URL("../dist/leases.js", import.meta.url));
const SRC_LEASES = fileURLToPath(new URL("./leases.ts", import.meta.url));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 5 ms until true; returns the time it took. */
async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<number> {
  const start = performance.now();
  while (!cond()) {
    if (performance.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
  return performance.now() - start;
}

interface Event {
  t: number;
  worker: string;
  ev: "acquired" | "released" | "released-done";
  p: number;
  reason?: string;
}

interface LogLine {
  level: "info" | "warn";
  o: object;
  m: string;
}

interface TestWorker {
  id: string;
  leases: PartitionLeases;
  logs: LogLine[];
}

let redis: Redis;
const cleanups: (() => Promise<void>)[] = [];

function keysFor(prefix: string): LeaseKeys {
  return { lease: (p) => `${prefix}lease:${p}`, workers: `${prefix}workers` };
}

/** A fresh prefix whose keys (N leases and the registry) are deleted after the test. */
function scope(partitions: number): { prefix: string; keys: LeaseKeys } {
  const prefix = `t-leases-${randomBytes(4).toString("hex")}:`;
  const keys = keysFor(prefix);
  cleanups.push(async () => {
    await redis.del(keys.workers, ...Array.from({ length: partitions }, (_, p) => keys.lease(p)));
  });
  return { prefix, keys };
}

function worker(
  client: Redis,
  keys: LeaseKeys,
  options: Omit<LeaseOptions, "workerId"> & { workerId: string },
  timeline: Event[],
  batchInHandMs = 0,
): TestWorker {
  const logs: LogLine[] = [];
  const id = options.workerId;
  const leases = new PartitionLeases(
    client,
    keys,
    options,
    {
      acquired: (p) => void timeline.push({ t: performance.now(), worker: id, ev: "acquired", p }),
      released: async (p, reason) => {
        timeline.push({ t: performance.now(), worker: id, ev: "released", p, reason });
        // The consumer finishing the batch in hand.
        if (batchInHandMs > 0) await sleep(batchInHandMs);
        timeline.push({ t: performance.now(), worker: id, ev: "released-done", p, reason });
      },
    },
    { info: (o, m) => void logs.push({ level: "info", o, m }), warn: (o, m) => void logs.push({ level: "warn", o, m }) },
  );
  cleanups.push(() => leases.stop());
  return { id, leases, logs };
}

/** Samples the owned() sets every few ms and records any partition owned by two workers at once. */
function sampleOverlaps(workers: TestWorker[]): { stop(): { samples: number; overlaps: string[] } } {
  let samples = 0;
  const overlaps: string[] = [];
  const timer = setInterval(() => {
    samples++;
    const seen = new Map<number, string>();
    for (const w of workers)
      for (const p of w.leases.owned()) {
        const other = seen.get(p);
        if (other) overlaps.push(`partition ${p} owned by ${other} and ${w.id}`);
        seen.set(p, w.id);
      }
  }, 2);
  return {
    stop: () => {
      clearInterval(timer);
      return { samples, overlaps };
    },
  };
}

afterEach(async () => {
  // Workers first (they delete their leases), then whatever keys are left.
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

describe.skipIf(!servicesUp)(`partition leases${servicesUp ? "" : " (skipped: Redis and Postgres do not answer)"}`, () => {
  beforeAll(() => {
    redis = new Redis(REDIS_URL);
  });
  afterAll(async () => {
    await redis.quit();
  });

  it("a joining worker takes half: the other releases after its batch in hand, never both owning a partition", async () => {
    const N = 8;
    const { keys } = scope(N);
    const timeline: Event[] = [];
    const opts = { partitions: N, ttlMs: 1500, heartbeatMs: 250 };
    // The batch in hand outlasts a heartbeat: the lease must stay ours (renewed) until it is done.
    const a = worker(redis, keys, { ...opts, workerId: "w-a" }, timeline, 400);
    await a.leases.start();
    expect([...a.leases.owned()].sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);

    const b = worker(redis, keys, { ...opts, workerId: "w-b" }, timeline);
    const both = sampleOverlaps([a, b]);
    const joined = performance.now();
    await b.leases.start();
    await waitFor(() => a.leases.owned().size === 4 && b.leases.owned().size === 4, 5000, "a 4/4 split");
    const rebalanceMs = performance.now() - joined;
    const { samples, overlaps } = both.stop();
    console.log(`rebalance (N=8, heartbeat 250 ms, batch in hand 400 ms): ${Math.round(rebalanceMs)} ms from join to a 4/4 split; ${samples} samples`);

    expect(overlaps).toEqual([]);
    expect(samples).toBeGreaterThan(50);
    // 2 heartbeats + the batch in hand, with slack for a loaded machine.
    expect(rebalanceMs).toBeLessThan(2 * 250 + 400 + 1000);
    const union = new Set([...a.leases.owned(), ...b.leases.owned()]);
    expect(union.size).toBe(8);

    // Every partition b acquired was released by a for a rebalance, and b got it only after a's
    // released() had resolved.
    const acquiredByB = timeline.filter((e) => e.worker === "w-b" && e.ev === "acquired");
    expect(acquiredByB).toHaveLength(4);
    for (const acq of acquiredByB) {
      const done = timeline.find((e) => e.worker === "w-a" && e.ev === "released-done" && e.p === acq.p);
      expect(done, `a's release of ${acq.p}`).toBeDefined();
      expect(done!.reason).toBe("rebalance");
      expect(done!.t).toBeLessThanOrEqual(acq.t);
    }
    expect(timeline.filter((e) => e.worker === "w-a" && e.ev === "released" && e.reason === "rebalance")).toHaveLength(4);
    expect(timeline.some((e) => e.ev === "released" && e.reason === "lost")).toBe(false);

    // stop() hands everything back after the consumers finish, and leaves the registry.
    const aOwned = [...a.leases.owned()];
    await a.leases.stop();
    for (const p of aOwned) expect(timeline.some((e) => e.worker === "w-a" && e.ev === "released-done" && e.p === p && e.reason === "stopping")).toBe(true);
    expect(a.leases.owned().size).toBe(0);
    expect(await redis.zrange(keys.workers, 0, -1)).toEqual(["w-b"]);
    // a's leases are gone: each is free, or already b's (its heartbeat may have come meanwhile:
    // a's stop waits out a batch in hand of 400 ms, over a heartbeat of 250).
    for (const p of aOwned) expect(await redis.get(keys.lease(p))).not.toBe("w-a");
    // b takes the rest at its next heartbeat.
    await waitFor(() => b.leases.owned().size === 8, 2000, "b owning all 8 after a stopped");
  });

  it("three workers share 16 partitions: each owned by exactly one, 5 or 6 each", async () => {
    const N = 16;
    const { keys } = scope(N);
    const timeline: Event[] = [];
    const opts = { partitions: N, ttlMs: 1500, heartbeatMs: 250 };
    const workers = ["w-1", "w-2", "w-3"].map((id) => worker(redis, keys, { ...opts, workerId: id }, timeline, 20));
    const sampler = sampleOverlaps(workers);
    const started = performance.now();
    await Promise.all(workers.map((w) => w.leases.start()));
    const sizes = () => workers.map((w) => w.leases.owned().size);
    await waitFor(() => sizes().every((s) => s >= 5 && s <= 6) && sizes().reduce((x, y) => x + y) === N, 5000, "a 6/5/5 share");
    const ms = performance.now() - started;
    const { overlaps } = sampler.stop();
    console.log(`three workers, N=16: shares ${sizes().join("/")} after ${Math.round(ms)} ms`);
    expect(overlaps).toEqual([]);
    const union = new Set(workers.flatMap((w) => [...w.leases.owned()]));
    expect(union.size).toBe(N);
    // Redis agrees with each worker's view.
    for (const w of workers) for (const p of w.leases.owned()) expect(await redis.get(keys.lease(p))).toBe(w.id);
  });

  /**
   * A worker that dies holding leases: the victim runs in a child process (the built module) and is
   * SIGKILLed, so nothing of it releases anything.
   */
  async function takeover(ttlMs: number, heartbeatMs: number, splitFirst: boolean): Promise<number> {
    if (!existsSync(DIST_LEASES) || statSync(DIST_LEASES).mtimeMs < statSync(SRC_LEASES).mtimeMs)
      throw new Error(`${DIST_LEASES} is missing or older than leases.ts: build it first (npx turbo run build --filter=@chat/worker)`);
    const N = 8;
    const { prefix, keys } = scope(N);
    const victimOwned = new Set<number>();
    const script = `
      import { Redis } from "ioredis";
      import { PartitionLeases } from ${JSON.stringify(pathToFileURL(DIST_LEASES).href)};
      const a = JSON.parse(process.env.LEASE_ARGS);
      const redis = new Redis(a.url);
      const keys = { lease: (p) => a.prefix + "lease:" + p, workers: a.prefix + "workers" };
      const out = (o) => process.stdout.write(JSON.stringify(o) + "\\n");
      const leases = new PartitionLeases(redis, keys, { partitions: a.n, workerId: "victim", ttlMs: a.ttl, heartbeatMs: a.hb },
        { acquired: (p) => out({ ev: "acquired", p }), released: async (p, reason) => out({ ev: "released", p, reason }) },
        { info: () => {}, warn: (o, m) => process.stderr.write(m + "\\n") });
      await leases.start();
      out({ ev: "started" });
      setInterval(() => {}, 1 << 30);
    `;
    const child: ChildProcess = spawn(process.execPath, ["--input-type=module", "-e", script], {
      cwd: WORKER_DIR,
      env: { PATH: process.env["PATH"], LEASE_ARGS: JSON.stringify({ url: REDIS_URL, prefix, n: N, ttl: ttlMs, hb: heartbeatMs }) },
      stdio: ["ignore", "pipe", "pipe"],
    });
    cleanups.push(async () => void child.kill("SIGKILL"));
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    let victimStarted = false;
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const e = JSON.parse(line) as { ev: string; p: number };
      if (e.ev === "started") victimStarted = true;
      else if (e.ev === "acquired") victimOwned.add(e.p);
      else if (e.ev === "released") victimOwned.delete(e.p);
    });
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    await waitFor(() => victimStarted || child.exitCode !== null, 10_000, "the victim's start");
    expect(victimStarted, `victim exited: ${stderr}`).toBe(true);
    expect(victimOwned.size).toBe(N);

    const timeline: Event[] = [];
    const survivor = worker(redis, keys, { partitions: N, ttlMs, heartbeatMs, workerId: "survivor" }, timeline);
    await survivor.leases.start();
    if (splitFirst) await waitFor(() => survivor.leases.owned().size === 4 && victimOwned.size === 4, 4 * heartbeatMs + 2000, "a 4/4 split with the victim");
    const victims = [...victimOwned];
    expect(victims.length).toBeGreaterThan(0);
    for (const p of victims) expect(survivor.leases.owned().has(p)).toBe(false);

    const killedAt = performance.now();
    child.kill("SIGKILL");
    await exited;
    const takeoverMs = await waitFor(() => survivor.leases.owned().size === N, ttlMs + heartbeatMs + 3000, "the survivor owning every partition");
    console.log(
      `takeover (ttl ${ttlMs} ms, heartbeat ${heartbeatMs} ms): the survivor owned all ${N} partitions ${Math.round(takeoverMs)} ms after SIGKILL (victim held ${victims.length})`,
    );
    // Not before the victim's leases could have expired (its last renew was at most one heartbeat
    // before the kill), and not later than ttl + heartbeat after it plus scheduling slack.
    expect(takeoverMs).toBeGreaterThan(ttlMs - heartbeatMs - 300);
    expect(takeoverMs).toBeLessThan(ttlMs + heartbeatMs + 1000);
    for (const p of victims) expect(await redis.get(keys.lease(p))).toBe("survivor");
    // The dead worker's registry entry is gone too, so the survivor's share is everything.
    expect(await redis.zrange(keys.workers, 0, -1)).toEqual(["survivor"]);
    return takeoverMs;
  }

  it("takes over a killed worker's partitions within ttl + heartbeat (ttl 1.5 s, heartbeat 0.5 s)", async () => {
    await takeover(1500, 500, true);
  });

  // The defaults the caller uses. No 4/4 split first (it would add two 3 s heartbeats): the victim
  // holds all 8 when killed, which is the same takeover path with more partitions to take.
  it("takes over a killed worker's partitions within 15 s with the default ttl 10 s, heartbeat 3 s", async () => {
    const ms = await takeover(10_000, 3000, false);
    expect(ms).toBeLessThan(15_000);
  }, 40_000);

  it("a worker cut off from Redis stops consuming its partitions after ttl; another takes them", async () => {
    const N = 8;
    const { keys } = scope(N);
    const timeline: Event[] = [];
    const ttlMs = 1500;
    const heartbeatMs = 300;
    const own = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
    own.on("error", () => {});
    cleanups.push(async () => own.disconnect());
    const a = worker(own, keys, { partitions: N, ttlMs, heartbeatMs, workerId: "w-cut" }, timeline);
    await a.leases.start();
    const b = worker(redis, keys, { partitions: N, ttlMs, heartbeatMs, workerId: "w-ok" }, timeline);
    await b.leases.start();
    await waitFor(() => a.leases.owned().size === 4 && b.leases.owned().size === 4, 4000, "a 4/4 split");
    const cut = [...a.leases.owned()];
    const sampler = sampleOverlaps([a, b]);

    const cutAt = performance.now();
    own.disconnect();
    const lostMs = await waitFor(() => a.leases.owned().size === 0, ttlMs + 1000, "the cut-off worker dropping its partitions");
    const lost = timeline.filter((e) => e.worker === "w-cut" && e.ev === "released" && e.t >= cutAt);
    expect(lost.map((e) => e.reason)).toEqual(cut.map(() => "lost"));
    expect(new Set(lost.map((e) => e.p))).toEqual(new Set(cut));
    // By its local deadline: the last renew sent plus ttl less a tenth, so before ttl after the cut
    // (slack for a late timer on a busy machine) and not before a heartbeat less than that.
    expect(lostMs).toBeLessThan(ttlMs + 200);
    expect(lostMs).toBeGreaterThan(0.9 * ttlMs - heartbeatMs - 100);
    expect(a.logs.some((l) => l.level === "warn" && l.m.includes("heartbeat failed") && (l.o as { workerId?: string }).workerId === "w-cut")).toBe(true);

    const takenMs = await waitFor(() => b.leases.owned().size === N, ttlMs + heartbeatMs + 2000, "the other worker owning every partition");
    const { overlaps } = sampler.stop();
    console.log(`Redis cut-off (ttl ${ttlMs} ms, heartbeat ${heartbeatMs} ms): released "lost" ${Math.round(lostMs)} ms after the cut, taken over ${Math.round(takenMs + lostMs)} ms after it`);
    expect(overlaps).toEqual([]);
    // Each partition was given up locally before the other worker acquired it.
    for (const p of cut) {
      const gaveUp = lost.find((e) => e.p === p)!;
      const took = timeline.find((e) => e.worker === "w-ok" && e.ev === "acquired" && e.p === p && e.t > cutAt);
      expect(took, `w-ok acquiring ${p}`).toBeDefined();
      expect(gaveUp.t).toBeLessThan(took!.t);
    }
    // Stopping without Redis still resolves (the registry entry expires by itself).
    await a.leases.stop();
  });
});
