import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { Redis } from "ioredis";
import { freePort } from "./ports.js";

// A local Redis Cluster (masters + replicas, one redis-server each on loopback) for the test suites
// (packages/tests: vitest's globalSetup starts one, so no vitest here) and the bench (apps/bench, which
// reads each server's CPU by its pid). The servers run in the foreground (no --daemonize) so that we
// hold their pids: a crash is a SIGKILL by pid, and nothing outlives stop() or this Node process.

export interface ClusterNode {
  port: number;
  pid: number;
  /** CLUSTER MYID. */
  id: string;
}

export interface LocalRedisCluster {
  /** Every node started, killed ones included. */
  nodes: ClusterNode[];
  /** The masters at start: "redis+cluster://127.0.0.1:p1?addr=127.0.0.1:p2&addr=127.0.0.1:p3". */
  url: string;
  /** The masters at start. */
  seeds: { host: string; port: number }[];
  /** The servers' working directory (nodes-P.conf); removed by stop(). */
  dir: string;
  /**
   * The masters serving slots, from CLUSTER NODES of a running node, as that node sees them now: a
   * killed master stays listed until the cluster flags it "fail".
   */
  masters(): Promise<ClusterNode[]>;
  /** SIGKILL by pid (a crash), resolves once the process has exited. */
  killNode(port: number): Promise<void>;
  /**
   * Resolves once, on every running node: CLUSTER INFO says cluster_state:ok and cluster_slots_ok:16384
   * and knows every node started; its CLUSTER NODES flags no running node fail, fail?, handshake or
   * noaddr, and shows each running node following the master that node itself says it follows; all
   * of them see the same set of slot-owning masters, all running (no slot left on a killed node);
   * every running replica has master_link_status:up with a running master. A master left without a
   * replica does NOT keep it waiting: after failover() the promoted master has none (the killed node
   * is not replaced). Throws after timeoutMs (30 s) with what is still missing.
   */
  waitHealthy(timeoutMs?: number): Promise<void>;
  /** The master serving `slot` now (CLUSTER SLOTS of a running node). */
  masterOfSlot(slot: number): Promise<ClusterNode>;
  /**
   * SIGKILLs the master on `masterPort` and resolves once one of its replicas is a master and
   * waitHealthy's conditions hold again; tookMs runs from the kill.
   */
  failover(masterPort: number, timeoutMs?: number): Promise<{ promotedPort: number; tookMs: number }>;
  /** SIGKILL every node still running, then remove `dir`. Idempotent. */
  stop(): Promise<void>;
}

export interface ClusterOptions {
  masters?: number;
  replicasPerMaster?: number;
  nodeTimeoutMs?: number;
}

const HOST = "127.0.0.1";
const SLOTS = 16384;
/** Redis listens for its cluster bus on the client port + 10000. */
const BUS_OFFSET = 10000;
const POLL_MS = 50;
const TAIL_CHARS = 1500;

interface Proc {
  port: number;
  child: ChildProcess;
  exited: Promise<void>;
  alive: boolean;
  tail: () => string;
  id: string;
}

// Whatever stop() has not reached yet when Node exits (a failed run, a forgotten afterAll).
const running = new Set<ChildProcess>();
const dirs = new Set<string>();
let exitHook = false;
function installExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  process.on("exit", () => {
    for (const child of running) {
      try {
        process.kill(child.pid!, "SIGKILL");
      } catch {
        // already gone
      }
    }
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
}

/** The binaries the harness needs that are not on PATH (empty when it can run). */
export function missingClusterBinaries(): string[] {
  const dirsOnPath = (process.env["PATH"] ?? "").split(delimiter).filter(Boolean);
  const found = (bin: string) =>
    dirsOnPath.some((d) => {
      try {
        accessSync(join(d, bin), constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
  return ["redis-server", "redis-cli"].filter((bin) => !found(bin));
}

/** The seed nodes of a "redis+cluster://host:port?addr=host:port&addr=..." URL. */
export function clusterSeedsFromUrl(url: string): { host: string; port: number }[] {
  const u = new URL(url);
  if (u.protocol !== "redis+cluster:") throw new Error(`not a redis+cluster:// URL: ${url}`);
  return [`${u.hostname}:${u.port}`, ...u.searchParams.getAll("addr")].map((addr) => {
    const colon = addr.lastIndexOf(":");
    const port = Number(addr.slice(colon + 1));
    if (colon < 1 || !Number.isInteger(port) || port <= 0) throw new Error(`no host:port in ${addr} (${url})`);
    return { host: addr.slice(0, colon).replace(/^\[|\]$/g, ""), port };
  });
}

export async function startRedisCluster(options: ClusterOptions = {}): Promise<LocalRedisCluster> {
  const masterCount = options.masters ?? 3;
  const replicasPerMaster = options.replicasPerMaster ?? 1;
  const nodeTimeoutMs = options.nodeTimeoutMs ?? 2000;
  // redis-cli --cluster create refuses fewer.
  if (masterCount < 3) throw new Error(`a Redis Cluster needs at least 3 masters, not ${masterCount}`);
  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), "chat-redis-cluster-"));
  dirs.add(dir);
  const procs: Proc[] = [];
  let cliOutput = "";

  const stop = async () => {
    for (const p of procs) if (p.alive) kill(p);
    await Promise.all(procs.map((p) => p.exited));
    rmSync(dir, { recursive: true, force: true });
    dirs.delete(dir);
  };
  const fail = async (what: string, err: unknown): Promise<never> => {
    await stop();
    const tails = procs.map((p) => `--- redis-server ${p.port} ---\n${p.tail().trimEnd().split("\n").slice(-8).join("\n")}`);
    if (cliOutput) tails.push(`--- redis-cli --cluster create ---\n${cliOutput.slice(-TAIL_CHARS).trimEnd()}`);
    throw new Error(`redis cluster: ${what}: ${err instanceof Error ? err.message : String(err)}\n${tails.join("\n")}`);
  };

  try {
    for (const port of await pickPorts(masterCount * (1 + replicasPerMaster))) procs.push(spawnNode(port, dir, nodeTimeoutMs));
  } catch (err) {
    return fail("starting redis-server", err);
  }
  try {
    await Promise.all(
      procs.map(async (p) => {
        await until(`redis-server ${p.port} answering`, 10_000, async () => ((await onNode(p.port, (c) => c.ping())) === "PONG" ? null : "no PONG"), () => exitReason(p));
        p.id = await onNode(p.port, (c) => c.cluster("MYID"));
      }),
    );
  } catch (err) {
    return fail("waiting for redis-server", err);
  }
  try {
    cliOutput = await run("redis-cli", ["--cluster", "create", ...procs.map((p) => `${HOST}:${p.port}`), "--cluster-replicas", String(replicasPerMaster), "--cluster-yes"], 30_000);
  } catch (err) {
    cliOutput = (err as Error & { output?: string }).output ?? "";
    return fail("redis-cli --cluster create", err);
  }

  const live = () => procs.filter((p) => p.alive);
  const byId = new Map<string, Proc>();
  for (const p of procs) byId.set(p.id, p);
  const asNode = (p: Proc): ClusterNode => ({ port: p.port, pid: p.child.pid!, id: p.id });

  /** Each running node's CLUSTER INFO, CLUSTER NODES and INFO replication, and whom it follows ("-": none). */
  const survey = () =>
    Promise.all(
      live().map(async (p) => {
        const [info, nodes, repl] = await onNode(p.port, (c) => Promise.all([c.cluster("INFO"), clusterNodes(c), c.info("replication")]));
        const table = parseNodes(nodes);
        return { p, info: fields(info), table, repl: fields(repl), follows: table.find((n) => n.flags.includes("myself"))?.master };
      }),
    );

  /** What still keeps the cluster from healthy (waitHealthy's doc), or null. */
  const unhealthy = async (): Promise<string | null> => {
    const views = await survey();
    if (!views.length) return "no node is running";
    const follows = new Map(views.map((v) => [v.p.id, v.follows]));
    let owners: string | undefined;
    for (const { p, info, table, repl } of views) {
      if (info["cluster_state"] !== "ok") return `${p.port} says cluster_state:${info["cluster_state"]}`;
      if (info["cluster_slots_ok"] !== String(SLOTS)) return `${p.port} says cluster_slots_ok:${info["cluster_slots_ok"]}`;
      if (info["cluster_known_nodes"] !== String(procs.length)) return `${p.port} knows ${info["cluster_known_nodes"]} of ${procs.length} nodes`;
      // Roles spread by gossip, a second or two after redis-cli returns: a master that does not know its
      // replica yet would not count its vote in a failover.
      for (const n of table) {
        if (!byId.get(n.id)?.alive) continue;
        const bad = n.flags.filter((f) => ["fail", "fail?", "handshake", "noaddr"].includes(f));
        if (bad.length) return `${p.port} flags ${n.port} ${bad.join(",")}`;
        if (n.master !== follows.get(n.id)) return `${p.port} does not know yet whom ${n.port} replicates`;
      }
      const slotOwners = table.filter((n) => n.slots > 0).map((n) => n.id);
      const dead = slotOwners.filter((id) => !byId.get(id)?.alive);
      if (dead.length) return `${p.port} still sees slots on ${dead.map((id) => byId.get(id)?.port ?? id).join(", ")} (not running)`;
      const ownersKey = slotOwners.sort().join(",");
      if (owners !== undefined && ownersKey !== owners) return `the nodes do not agree yet on which masters serve the slots`;
      owners = ownersKey;
      const master = follows.get(p.id);
      if (master && master !== "-") {
        if (repl["master_link_status"] !== "up") return `replica ${p.port} says master_link_status:${repl["master_link_status"]}`;
        if (!byId.get(master)?.alive) return `replica ${p.port} still follows a master that is not running`;
      }
    }
    return null;
  };
  const waitHealthy = (timeoutMs = 30_000) => until("cluster healthy", timeoutMs, unhealthy);

  /** `probe` on the first running node that answers. */
  const fromAnyNode = async <T>(probe: (c: Redis) => Promise<T>): Promise<T> => {
    let last: unknown = new Error("no node is running");
    for (const p of live()) {
      try {
        return await onNode(p.port, probe);
      } catch (err) {
        last = err;
      }
    }
    throw last;
  };
  const nodeOf = (id: string, port: number): ClusterNode => {
    const p = byId.get(id);
    if (!p) throw new Error(`node ${id} (port ${port}) is not one this harness started`);
    return asNode(p);
  };
  const masters = async () => parseNodes(await fromAnyNode(clusterNodes)).filter((n) => n.slots > 0 && n.flags.includes("master") && !n.flags.includes("fail")).map((n) => nodeOf(n.id, n.port));

  const killNode = async (port: number) => {
    const p = procs.find((q) => q.port === port);
    if (!p) throw new Error(`no node of this cluster on port ${port}`);
    if (p.alive) kill(p);
    await p.exited;
  };

  let seeds: { host: string; port: number }[];
  try {
    await waitHealthy(30_000);
    seeds = (await masters()).map((m) => ({ host: HOST, port: m.port }));
    if (seeds.length !== masterCount) throw new Error(`${seeds.length} masters, expected ${masterCount}`);
  } catch (err) {
    return fail("waiting for the new cluster", err);
  }
  const [first, ...rest] = seeds;
  return {
    nodes: procs.map(asNode),
    url: `redis+cluster://${HOST}:${first!.port}${rest.length ? `?${rest.map((s) => `addr=${HOST}:${s.port}`).join("&")}` : ""}`,
    seeds,
    dir,
    masters,
    killNode,
    waitHealthy,
    masterOfSlot: async (slot) => {
      const ranges = await fromAnyNode((c) => c.cluster("SLOTS"));
      const master = ranges.find(([from, to]) => slot >= from && slot <= to)?.[2];
      if (!master) throw new Error(`no master serves slot ${slot}`);
      return nodeOf(master[2], master[1]);
    },
    failover: async (masterPort, timeoutMs = 30_000) => {
      const master = procs.find((p) => p.port === masterPort && p.alive);
      if (!master) throw new Error(`no running node on port ${masterPort}`);
      // Each replica's own word, not the master's view of it (gossip may lag).
      const replicas = (await survey()).filter((v) => v.follows === master.id).map((v) => v.p);
      if (!replicas.length) throw new Error(`${masterPort} is not a master with a running replica`);
      const started = Date.now();
      await killNode(masterPort);
      let promotedPort = 0;
      await until(`failover of ${masterPort}`, timeoutMs, async () => {
        for (const r of replicas) {
          const role = fields(await onNode(r.port, (c) => c.info("replication")).catch(() => ""))["role"];
          if (role === "master") promotedPort = r.port;
        }
        if (!promotedPort) return `no replica of ${masterPort} (${replicas.map((r) => r.port).join(", ")}) is a master yet`;
        return unhealthy();
      });
      return { promotedPort, tookMs: Date.now() - started };
    },
    stop,
  };
}

function spawnNode(port: number, dir: string, nodeTimeoutMs: number): Proc {
  const args = ["--port", String(port), "--bind", HOST, "--cluster-enabled", "yes", "--cluster-config-file", `nodes-${port}.conf`, "--cluster-node-timeout", String(nodeTimeoutMs), "--cluster-require-full-coverage", "no", "--save", "", "--appendonly", "no", "--dir", dir];
  // A master waits 5 s (the default) for more replicas before a diskless full sync: most of the
  // start-up (about 7 s, 2.5 s without).
  args.push("--repl-diskless-sync-delay", "0");
  const child = spawn("redis-server", args, { stdio: ["ignore", "pipe", "pipe"] });
  let tail = "";
  const keep = (d: Buffer | string) => (tail = (tail + d.toString()).slice(-TAIL_CHARS));
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  running.add(child);
  const p: Proc = { port, child, alive: true, tail: () => tail, id: "", exited: Promise.resolve() };
  p.exited = new Promise<void>((resolve) => {
    const gone = () => {
      p.alive = false;
      running.delete(child);
      resolve();
    };
    child.once("exit", gone);
    // A spawn failure (ENOENT) may come without "exit".
    child.once("error", (err) => {
      keep(`${err.message}\n`);
      gone();
    });
  });
  return p;
}

function kill(p: Proc): void {
  try {
    process.kill(p.child.pid!, "SIGKILL");
  } catch {
    // exited on its own
  }
}

function exitReason(p: Proc): string | null {
  if (p.alive) return null;
  return `exited (${p.child.exitCode ?? p.child.signalCode ?? "spawn failed"})`;
}

/** Distinct free ports whose cluster bus port (port + 10000) is a valid port and free too. */
async function pickPorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  for (let tries = 0; ports.length < count; tries++) {
    if (tries > count * 50) throw new Error(`found only ${ports.length} of ${count} free port pairs`);
    const port = await freePort();
    const taken = (q: number) => ports.some((p) => p === q || p + BUS_OFFSET === q || p === q + BUS_OFFSET);
    if (port + BUS_OFFSET < 65536 && !taken(port) && !taken(port + BUS_OFFSET) && (await canListen(port + BUS_OFFSET))) ports.push(port);
  }
  return ports;
}

function canListen(port: number): Promise<boolean> {
  const srv = createServer();
  return new Promise((resolve) => {
    srv.once("error", () => resolve(false));
    srv.listen(port, HOST, () => srv.close(() => resolve(true)));
  });
}

/** One short-lived connection to one node (no cluster redirections, no retries). */
async function onNode<T>(port: number, probe: (c: Redis) => Promise<T>): Promise<T> {
  const c = new Redis({ host: HOST, port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2000, commandTimeout: 5000 });
  c.on("error", () => {});
  try {
    await c.connect();
    return await probe(c);
  } finally {
    c.disconnect();
  }
}

/** Polls `check` (what is still missing, or null when done) until null; `abort` stops early. */
async function until(what: string, timeoutMs: number, check: () => Promise<string | null>, abort: () => string | null = () => null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reason = abort();
    if (reason) throw new Error(`${what}: ${reason}`);
    let missing: string | null;
    try {
      missing = await check();
    } catch (err) {
      missing = err instanceof Error ? err.message : String(err);
    }
    if (missing === null) return;
    if (Date.now() > deadline) throw new Error(`${what}: not after ${timeoutMs} ms (${missing})`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr.on("data", (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    const failed = (message: string) => reject(Object.assign(new Error(message), { output }));
    child.once("error", (err) => {
      clearTimeout(timer);
      failed(err.message);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(output);
      else failed(signal === "SIGKILL" ? `no answer after ${timeoutMs} ms` : `exited with ${code ?? signal}`);
    });
  });
}

/** "key:value" lines (CLUSTER INFO, INFO). */
function fields(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split(/\r?\n/)) {
    const colon = line.indexOf(":");
    if (colon > 0) out[line.slice(0, colon)] = line.slice(colon + 1).trim();
  }
  return out;
}

async function clusterNodes(c: Redis): Promise<string> {
  return String(await c.cluster("NODES"));
}

/** CLUSTER NODES: "<id> <ip:port@bus> <flags> <master|-> <ping> <pong> <epoch> <link> <slot>...". */
function parseNodes(text: string): { id: string; port: number; flags: string[]; master: string; slots: number }[] {
  return text
    .split("\n")
    .filter((line) => line.trim())
    .map((line) => {
      const [id = "", addr = "", flags = "", master = "", , , , , ...slots] = line.trim().split(" ");
      const hostPort = addr.split("@")[0] ?? "";
      // "[slot->-id]" entries are slots being imported or migrated, not served.
      return { id, port: Number(hostPort.slice(hostPort.lastIndexOf(":") + 1)), flags: flags.split(","), master, slots: slots.filter((s) => !s.startsWith("[")).length };
    });
}
