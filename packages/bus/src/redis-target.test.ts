import { spawn, spawnSync, execFile, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Cluster, Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RedisTargetError, checkPrefixForTarget, describeRedisTarget, openRedis, parseRedisTarget, type RedisClient, type RedisTarget } from "./redis-target.js";

const SECRET = "S3cr3tPw";

describe("parseRedisTarget: accepted", () => {
  it.each<[string, RedisTarget]>([
    ["redis://127.0.0.1:6379", { mode: "single", url: "redis://127.0.0.1:6379" }],
    [`rediss://user:${SECRET}@redis.example:6380/2`, { mode: "single", url: `rediss://user:${SECRET}@redis.example:6380/2` }],
    ["redis://localhost", { mode: "single", url: "redis://localhost" }],
    ["REDIS://localhost:6379", { mode: "single", url: "REDIS://localhost:6379" }],
    ["redis+cluster://127.0.0.1:7000", { mode: "cluster", seeds: [{ host: "127.0.0.1", port: 7000 }], tls: false }],
    ["redis+cluster://redis-0", { mode: "cluster", seeds: [{ host: "redis-0", port: 6379 }], tls: false }],
    [
      "redis+cluster://h1:7000?addr=h2:7001&addr=h3:7002",
      { mode: "cluster", seeds: [{ host: "h1", port: 7000 }, { host: "h2", port: 7001 }, { host: "h3", port: 7002 }], tls: false },
    ],
    [
      `rediss+cluster://chat:${SECRET}@h1:7000?addr=h2:7001`,
      { mode: "cluster", seeds: [{ host: "h1", port: 7000 }, { host: "h2", port: 7001 }], tls: true, username: "chat", password: SECRET },
    ],
    ["redis+cluster://:pa%40ss%3Aw@h1:7000/0", { mode: "cluster", seeds: [{ host: "h1", port: 7000 }], tls: false, password: "pa@ss:w" }],
    ["redis+cluster://user@h1:7000/", { mode: "cluster", seeds: [{ host: "h1", port: 7000 }], tls: false, username: "user" }],
    ["RediSS+Cluster://h1:7000", { mode: "cluster", seeds: [{ host: "h1", port: 7000 }], tls: true }],
    ["redis+cluster://[::1]:7000?addr=[::1]:7001", { mode: "cluster", seeds: [{ host: "::1", port: 7000 }, { host: "::1", port: 7001 }], tls: false }],
    ["redis+cluster://h1:7000?addr=h1:7000&addr=h2:7001", { mode: "cluster", seeds: [{ host: "h1", port: 7000 }, { host: "h2", port: 7001 }], tls: false }],
    ["  redis+cluster://h1:7000\n", { mode: "cluster", seeds: [{ host: "h1", port: 7000 }], tls: false }],
  ])("%j", (url, expected) => {
    expect(parseRedisTarget(url)).toEqual(expected);
  });
});

describe("parseRedisTarget: refused", () => {
  // [url, what the message must say]. Every message names REDIS_URL, is one line, and never holds the
  // password nor any piece of it (SECRET is written around '/', '?', '#' and '@' in some of them).
  it.each<[string, RegExp]>([
    ["http://127.0.0.1:6379", /must start with redis:\/\/, rediss:\/\/, redis\+cluster:\/\/ or rediss\+cluster:\/\//],
    ["127.0.0.1:6379", /must start with/],
    [`${SECRET}`, /must start with/],
    ["redis+sentinel://h1:26379", /must start with/],
    [`unix://user:${SECRET}@/tmp/redis.sock`, /must start with/],
    ["redis+cluster://h1:abc", /a port that is not a number/],
    ["redis+cluster://h1:", /a port that is not a number/],
    ["redis+cluster://h1:0", /port 0, not between 1 and 65535/],
    ["redis+cluster://h1:70000", /port 70000, not between 1 and 65535/],
    ["redis://h1:99999", /port 99999, not between 1 and 65535/],
    ["redis+cluster://h1:7000?addr=h2", /addr=h2 without a port \(write addr=host:port\)/],
    ["redis+cluster://h1:7000?addr=h2:x", /addr=h2:x, whose port is not a number/],
    ["redis+cluster://h1:7000?addr=h2:65536", /addr=h2:65536, whose port 65536 is not between 1 and 65535/],
    ["redis+cluster://h1:7000?addr=:7001", /addr=:7001, which has no host/],
    ["redis+cluster://h1:7000?addr=", /addr=, which has no host/],
    ["redis+cluster://h1:7000?addr=h2:1:2", /addr=h2:1:2, whose port is not a number/],
    ["redis+cluster://:7000", /has no host/],
    ["redis+cluster://", /has no host/],
    ["redis://", /has no host/],
    ["redis://:6379", /has no host/],
    [`redis+cluster://chat:${SECRET}@:7000`, /has no host/],
    [`redis+cluster://chat:${SECRET}@h1:7000/1`, /database other than 0/],
    ["redis+cluster://h1:7000/db0", /database other than 0/],
    ["redis+cluster://h1:7000?db=0", /the parameter "db", and a cluster URL takes only addr=host:port/],
    [`redis+cluster://h1:7000?password=${SECRET}`, /the parameter "password"/],
    ["redis+cluster://h1:7000#top", /'#' fragment/],
    ["redis://h1:6379?addr=h2:6380", /addr= parameters, which only a cluster URL takes: write redis\+cluster:\/\//],
    ["redis+cluster://h_1!:7000", /host that is not a host name or an IP address/],
    [`redis+cluster://chat:${SECRET.slice(0, 4)}/${SECRET.slice(4)}@h1:7000`, /'@' after its host: percent-encode/],
    [`redis+cluster://chat:${SECRET.slice(0, 4)}?${SECRET.slice(4)}@h1:7000`, /'@' after its host/],
    [`redis+cluster://chat:${SECRET.slice(0, 4)}#${SECRET.slice(4)}@h1:7000`, /'@' after its host/],
    [`rediss://chat:${SECRET.slice(0, 4)}/${SECRET.slice(4)}@h1:6380`, /'@' after its host/],
    [`redis+cluster://chat:${SECRET}`, /a port that is not a number/], // the host forgotten: the password reads as a port
    [`redis://chat:${SECRET}`, /a port that is not a number/],
    [`redis+cluster://chat:${SECRET}%zz@h1:7000`, /malformed %-escape/],
  ])("%j", (url, expected) => {
    let error: unknown;
    try {
      parseRedisTarget(url);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(RedisTargetError);
    const e = error as RedisTargetError;
    expect(e.code).toBe("redis_url_invalid");
    expect(e.message).toMatch(expected);
    expect(e.message).toMatch(/^REDIS_URL /);
    expect(e.message).not.toContain("\n");
    for (const piece of [SECRET, SECRET.slice(0, 4), SECRET.slice(4)]) expect(e.message).not.toContain(piece);
  });

  it("shows the URL with its password as ***", () => {
    expect(() => parseRedisTarget(`redis+cluster://chat:${SECRET}@h1:7000/3`)).toThrow(`(REDIS_URL=redis+cluster://chat:***@h1:7000/3)`);
    expect(() => parseRedisTarget(`redis+cluster://:${SECRET}@h1:70000`)).toThrow(`(REDIS_URL=redis+cluster://:***@h1:70000)`);
    expect(() => parseRedisTarget(`redis+cluster://chat:${SECRET}`)).toThrow(`(REDIS_URL=redis+cluster://chat:***)`);
  });
});

describe("describeRedisTarget", () => {
  it.each([
    ["redis://127.0.0.1:6379", "redis://127.0.0.1:6379"],
    [`rediss://user:${SECRET}@redis.example:6380/2`, "rediss://user:***@redis.example:6380/2"],
    [`redis://:${SECRET}@h1`, "redis://:***@h1"],
    [`redis://h1:6379/0?password=${SECRET}&family=6`, "redis://h1:6379/0?password=***&family=6"],
    ["redis+cluster://h1:7000?addr=h2:7001&addr=h3:7002", "redis+cluster://h1:7000?addr=h2:7001&addr=h3:7002"],
    [`rediss+cluster://chat:${SECRET}@h1:7000/0?addr=h2:7001`, "rediss+cluster://chat:***@h1:7000?addr=h2:7001"],
    [`redis+cluster://:${SECRET}@h1`, "redis+cluster://:***@h1:6379"],
    ["redis+cluster://us%20er@[::1]:7000?addr=[::1]:7001", "redis+cluster://us%20er@[::1]:7000?addr=[::1]:7001"],
  ])("%j as %j", (url, shown) => {
    const described = describeRedisTarget(parseRedisTarget(url));
    expect(described).toBe(shown);
    expect(described).not.toContain(SECRET);
    // What it shows is itself a URL that parses to the same nodes.
    const again = parseRedisTarget(described);
    const target = parseRedisTarget(url);
    if (target.mode === "cluster" && again.mode === "cluster") expect(again.seeds).toEqual(target.seeds);
  });
});

describe("checkPrefixForTarget", () => {
  const single = parseRedisTarget("redis://127.0.0.1:6379");
  const cluster = parseRedisTarget("redis+cluster://127.0.0.1:7000");

  it("takes any prefix with one Redis, and a brace-free one with a cluster", () => {
    for (const prefix of ["chat:", "", "chat{x}:", "a}b"]) expect(() => checkPrefixForTarget(prefix, single)).not.toThrow();
    for (const prefix of ["chat:", "", "test:run-1:"]) expect(() => checkPrefixForTarget(prefix, cluster)).not.toThrow();
  });

  it.each(["chat{x}:", "{chat}:", "chat{", "chat}"])("refuses %j with a cluster", (prefix) => {
    expect(() => checkPrefixForTarget(prefix, cluster)).toThrow(RedisTargetError);
    expect(() => checkPrefixForTarget(prefix, cluster)).toThrow(/^CHAT_REDIS_PREFIX .*one slot/);
  });
});

describe("openRedis: options", () => {
  it("gives a cluster its seeds, sharded subscribers, and the URL's credentials and TLS on every node", async () => {
    const client = openRedis(parseRedisTarget(`rediss+cluster://chat:${SECRET}@127.0.0.1:7000?addr=127.0.0.1:7001`), {
      connectionName: "gw-1:commands",
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      lazyConnect: true,
      retryStrategy: () => null,
      connectTimeout: 3000,
    });
    try {
      expect(client).toBeInstanceOf(Cluster);
      const options = (client as Cluster).options;
      expect(options).toMatchObject({ shardedSubscribers: true, scaleReads: "master", enableOfflineQueue: false, lazyConnect: true, maxRedirections: 5 });
      expect(options.redisOptions).toEqual({ connectionName: "gw-1:commands", username: "chat", password: SECRET, tls: {}, maxRetriesPerRequest: 1, connectTimeout: 3000 });
      expect((client as Cluster).status).toBe("wait");
    } finally {
      client.disconnect();
    }
  });

  it("fails a command at once while a cluster without an offline queue is not connected", async () => {
    const client = openRedis(parseRedisTarget(`redis+cluster://127.0.0.1:${await freePort()}`), {
      connectionName: "redis-target-test",
      enableOfflineQueue: false,
      lazyConnect: true,
      retryStrategy: () => null,
    });
    client.on("error", () => {});
    try {
      const started = Date.now();
      await expect(client.get("k")).rejects.toThrow(/enableOfflineQueue/);
      expect(Date.now() - started).toBeLessThan(1000);
    } finally {
      client.disconnect();
    }
  });
});

const servicesAbsent = process.env["CHAT_TEST_SERVICES"] === "absent";
describe.skipIf(servicesAbsent)(`openRedis: one Redis${servicesAbsent ? " (skipped: Redis does not answer; see the services report)" : ""}`, () => {
  it("answers PING under its connection name", async () => {
    const client = openRedis(parseRedisTarget(process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379"), {
      connectionName: "redis-target-test",
      lazyConnect: true,
      maxRetriesPerRequest: 1,
      retryStrategy: () => null,
      connectTimeout: 5000,
    });
    try {
      expect(client).toBeInstanceOf(Redis);
      await client.connect();
      expect(await client.ping()).toBe("PONG");
      expect(await client.client("GETNAME")).toBe("redis-target-test");
    } finally {
      client.disconnect();
    }
  });
});

// ---- a real Redis Cluster: 3 masters, no replicas, on loopback ports of this machine ----

const has = (tool: string) => spawnSync(tool, ["--version"]).status === 0;
const clusterTools = has("redis-server") && has("redis-cli");

/** A port free on 127.0.0.1 whose cluster bus port (port + 10000) is free too. */
async function freePort(): Promise<number> {
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      const server = createServer().once("error", reject);
      server.listen(port, "127.0.0.1", () => server.close(() => resolve((server.address() as AddressInfo | null)?.port ?? port)));
    });
  for (let attempt = 0; attempt < 50; attempt++) {
    const server = createServer();
    const port = await new Promise<number>((resolve, reject) => {
      server.once("error", reject).listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port));
    });
    await new Promise((resolve) => server.close(resolve));
    if (port + 10000 >= 65536) continue;
    if (await listen(port + 10000).then(() => true, () => false)) return port;
  }
  throw new Error("no free port pair (port, port + 10000) on 127.0.0.1");
}

/** Polls `check` every 50 ms until it returns true, failing after `ms`. */
async function waitFor(what: string, ms: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function withTimeout<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

describe.skipIf(!clusterTools)(
  `openRedis: a Redis Cluster of 3 masters${clusterTools ? "" : " (skipped: redis-server or redis-cli is not installed; apt-get install redis-server redis-tools)"}`,
  () => {
    let dir = "";
    const servers = new Map<number, ChildProcess>();
    const admins: Redis[] = [];
    const clients: RedisClient[] = [];
    let ports: number[] = [];
    const killAll = () => {
      for (const child of servers.values()) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    };
    // Should the worker die without afterAll, no redis-server of ours outlives it.
    process.once("exit", killAll);

    /** Starts redis-server on `port`; resolves once it accepts connections. */
    async function startServer(port: number): Promise<void> {
      const child = spawn(
        "redis-server",
        [
          "--port", String(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", `nodes-${port}.conf`,
          "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no", "--dir", dir,
        ],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      servers.set(port, child);
      let output = "";
      const ready = new Promise<void>((resolve, reject) => {
        const onData = (d: Buffer) => {
          output = (output + d.toString()).slice(-4000);
          if (output.includes("Ready to accept connections")) resolve();
        };
        child.stdout!.on("data", onData);
        child.stderr!.on("data", onData);
        child.once("exit", (code, signal) => reject(new Error(`redis-server on ${port} exited (${code ?? signal}) before it was ready:\n${output}`)));
        child.once("error", reject);
      });
      await withTimeout(`redis-server on ${port} to start`, 10_000, ready);
    }

    function open(url: string, options: Partial<Parameters<typeof openRedis>[1]> = {}): RedisClient {
      const client = openRedis(parseRedisTarget(url), { connectionName: "redis-target-test", lazyConnect: true, connectTimeout: 2000, ...options });
      client.on("error", () => {}); // a killed node is reported here; the test looks at the commands
      clients.push(client);
      return client;
    }

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "chat-redis-target-cluster-"));
      while (ports.length < 3) {
        const port = await freePort();
        if (!ports.includes(port)) ports.push(port);
      }
      await Promise.all(ports.map(startServer));
      const nodes = ports.map((p) => `127.0.0.1:${p}`);
      await withTimeout(
        "redis-cli --cluster create",
        20_000,
        new Promise<void>((resolve, reject) => {
          execFile("redis-cli", ["--cluster", "create", ...nodes, "--cluster-replicas", "0", "--cluster-yes"], { timeout: 20_000 }, (err, stdout, stderr) =>
            err ? reject(new Error(`redis-cli --cluster create failed: ${err.message}\n${stdout}\n${stderr}`)) : resolve(),
          );
        }),
      );
      for (const port of ports) {
        const admin = new Redis({ host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null, connectTimeout: 2000 });
        admin.on("error", () => {});
        admins.push(admin);
      }
      await waitFor("cluster_state:ok on every node", 20_000, async () => {
        const infos = await Promise.all(admins.map((a) => a.cluster("INFO") as Promise<string>));
        return infos.every((info) => info.includes("cluster_state:ok"));
      });
    }, 60_000);

    afterAll(async () => {
      for (const client of clients) client.disconnect();
      for (const admin of admins) admin.disconnect();
      const exits = [...servers.values()].filter((c) => c.exitCode === null && c.signalCode === null).map((c) => once(c, "exit"));
      for (const child of servers.values()) child.kill("SIGTERM");
      await withTimeout("redis-server to stop", 10_000, Promise.all(exits)).catch(() => killAll());
      process.removeListener("exit", killAll);
      if (dir) rmSync(dir, { recursive: true, force: true });
    }, 20_000);

    it("sets and gets keys in the slots of every master, from a URL naming two of the three", async () => {
      const client = open(`redis+cluster://127.0.0.1:${ports[0]}?addr=127.0.0.1:${ports[1]}`);
      expect(client).toBeInstanceOf(Cluster);
      await withTimeout("cluster connect", 10_000, client.connect());
      const keys = Array.from({ length: 200 }, (_, i) => `redis-target-test:${i}`);
      await Promise.all(keys.map((k) => client.set(k, `v-${k}`)));
      expect(await Promise.all(keys.map((k) => client.get(k)))).toEqual(keys.map((k) => `v-${k}`));
      // Every master holds some of them: the client routed by slot, to nodes the URL did not name too.
      const sizes = await Promise.all(admins.map((a) => a.dbsize()));
      expect(sizes.every((n) => n > 0)).toBe(true);
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(keys.length);
      expect((client as Cluster).nodes("master")).toHaveLength(3);
    });

    it("delivers sharded pub/sub (SSUBSCRIBE, SPUBLISH, smessage) on channels of every master", async () => {
      const subscriber = open(`redis+cluster://127.0.0.1:${ports[1]}`, { enableOfflineQueue: true });
      const publisher = open(`redis+cluster://127.0.0.1:${ports[2]}?addr=127.0.0.1:${ports[0]}`, { enableOfflineQueue: false, maxRetriesPerRequest: 1 });
      await withTimeout("cluster connect", 10_000, Promise.all([subscriber.connect(), publisher.connect()]));
      const channels = Array.from({ length: 12 }, (_, i) => `redis-target-test:{room-${i}}:events`);
      const slots = await Promise.all(channels.map((c) => admins[0]!.cluster("KEYSLOT", c) as Promise<number>));
      const owners = new Set(await Promise.all(slots.map((slot) => ownerOf(slot))));
      expect(owners.size).toBe(3);

      const received = new Map<string, string>();
      const all = new Promise<void>((resolve) => {
        subscriber.on("smessage", (channel: string, message: string) => {
          received.set(channel, message);
          if (received.size === channels.length) resolve();
        });
      });
      for (const channel of channels) await withTimeout(`ssubscribe ${channel}`, 5000, subscriber.ssubscribe(channel));
      const receivers = await Promise.all(channels.map((c) => publisher.spublish(c, `hello ${c}`)));
      expect(receivers).toEqual(channels.map(() => 1));
      await withTimeout("every smessage", 5000, all);
      expect(Object.fromEntries(received)).toEqual(Object.fromEntries(channels.map((c) => [c, `hello ${c}`])));
    });

    // Last: it kills a master. A send to its slots is refused within a bound, not queued for the failover.
    it("fails a command on a dead master's slot fast (no offline queue)", async () => {
      const client = open(`redis+cluster://127.0.0.1:${ports[0]}`, {
        enableOfflineQueue: false,
        maxRetriesPerRequest: 1,
        retryStrategy: (times) => Math.min(times * 200, 2000),
      });
      await withTimeout("cluster connect", 10_000, client.connect());
      const victim = ports[2]!;
      const victimAdmin = admins[2]!;
      await Promise.all(Array.from({ length: 50 }, (_, i) => client.set(`redis-target-test:dead:${i}`, "x")));
      const key = await victimAdmin.randomkey();
      expect(key).toBeTruthy();
      expect(await client.get(key!)).not.toBeNull();

      const server = servers.get(victim)!;
      const exited = once(server, "exit");
      server.kill("SIGKILL");
      await exited;
      const started = Date.now();
      const error = await withTimeout("the refused get", 10_000, client.get(key!).then(() => null, (err: Error) => err));
      const elapsed = Date.now() - started;
      expect(error).toBeInstanceOf(Error);
      expect(elapsed).toBeLessThan(4000);
    });

    async function ownerOf(slot: number): Promise<number> {
      const ranges = await admins[0]!.cluster("SLOTS");
      const range = ranges.find(([from, to]) => slot >= from && slot <= to);
      return range![2]![1];
    }
  },
);
