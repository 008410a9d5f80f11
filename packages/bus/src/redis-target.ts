import { Cluster, Redis, type ClusterOptions, type RedisOptions } from "ioredis";

/**
 * REDIS_URL, read as one Redis instance or a Redis Cluster:
 *
 *   redis://[user:pass@]host[:port][/db]            one instance (handed to ioredis as it is)
 *   rediss://...                                     the same over TLS
 *   redis+cluster://[user:pass@]host[:port][?addr=host2:port2&addr=host3:port3]
 *   rediss+cluster://...                             a cluster over TLS
 *
 * A cluster's seed nodes are the URL's host:port (port 6379 when left out, as for redis://) and every
 * `addr` (whose port is required); the client learns the other nodes from them. The user name and
 * password are those of every node. Redis Cluster has database 0 only, so a path other than "" or
 * "/0" is refused.
 */
export type RedisTarget =
  | { mode: "single"; url: string }
  | { mode: "cluster"; seeds: { host: string; port: number }[]; tls: boolean; username?: string; password?: string };

export class RedisTargetError extends Error {
  override readonly name = "RedisTargetError";
  readonly code = "redis_url_invalid";
}

export type RedisClient = Redis | Cluster;

export interface OpenRedisOptions {
  connectionName: string;
  enableOfflineQueue?: boolean;
  maxRetriesPerRequest?: number | null;
  lazyConnect?: boolean;
  retryStrategy?: (times: number) => number | null;
  connectTimeout?: number;
}

const DEFAULT_PORT = 6379;
const SCHEMES = "redis://, rediss://, redis+cluster:// or rediss+cluster://";

/** Parses REDIS_URL; throws RedisTargetError with a message naming REDIS_URL and what is wrong. */
export function parseRedisTarget(url: string): RedisTarget {
  const raw = url.trim();
  const shown = redactRaw(raw);
  const fail = (what: string): never => {
    throw new RedisTargetError(`REDIS_URL ${what} (REDIS_URL=${shown})`);
  };

  const schemeEnd = raw.indexOf("://");
  // Without a scheme, the value may be anything, a password put in the wrong variable included.
  if (schemeEnd <= 0) throw new RedisTargetError(`REDIS_URL must start with ${SCHEMES} (its value has no scheme, and is not shown: it could be a password)`);
  const scheme = raw.slice(0, schemeEnd).toLowerCase();
  const cluster = scheme === "redis+cluster" || scheme === "rediss+cluster";
  if (!cluster && scheme !== "redis" && scheme !== "rediss") fail(`must start with ${SCHEMES}`);

  // The authority ends at the first '/', '?' or '#' (as WHATWG URL reads it); its user info at its last '@'.
  const rest = raw.slice(schemeEnd + 3);
  const authorityEnd = rest.search(/[/?#]/);
  const authority = authorityEnd === -1 ? rest : rest.slice(0, authorityEnd);
  const tail = authorityEnd === -1 ? "" : rest.slice(authorityEnd);
  // An '@' after the host is a password with a raw '/', '?' or '#' in it: the URL would be read
  // as another host, and parts of the password as a path or a query.
  if (tail.includes("@")) fail("has an '@' after its host: percent-encode '/', '?', '#' and '@' in the user name and password");
  const at = authority.lastIndexOf("@");
  const userInfo = at === -1 ? null : authority.slice(0, at);
  const seed = parseHostPort(authority.slice(at + 1), null, fail);

  const queryStart = tail.indexOf("?");
  const fragmentStart = tail.indexOf("#");
  if (fragmentStart !== -1) fail("has a '#' fragment");
  const path = queryStart === -1 ? tail : tail.slice(0, queryStart);
  const query = new URLSearchParams(queryStart === -1 ? "" : tail.slice(queryStart + 1));

  if (!cluster) {
    if (query.has("addr")) fail(`has addr= parameters, which only a cluster URL takes: write ${scheme}+cluster://`);
    try {
      new URL(raw);
    } catch {
      fail("is not a valid URL");
    }
    return { mode: "single", url };
  }

  if (path !== "" && path !== "/" && path !== "/0") fail("names a database other than 0, and Redis Cluster has database 0 only: remove the path");
  const seeds = [seed];
  for (const [key, value] of query) {
    if (key !== "addr") fail(`has the parameter "${key}", and a cluster URL takes only addr=host:port`);
    seeds.push(parseHostPort(value, value, fail));
  }
  const unique = seeds.filter((s, i) => seeds.findIndex((o) => o.host === s.host && o.port === s.port) === i);

  const target: RedisTarget = { mode: "cluster", seeds: unique, tls: scheme === "rediss+cluster" };
  if (userInfo !== null) {
    const colon = userInfo.indexOf(":");
    try {
      const username = decodeURIComponent(colon === -1 ? userInfo : userInfo.slice(0, colon));
      const password = colon === -1 ? "" : decodeURIComponent(userInfo.slice(colon + 1));
      if (username) target.username = username;
      if (password) target.password = password;
    } catch {
      fail("has a malformed %-escape in its user name or password");
    }
  }
  return target;
}

/**
 * "host:port", "[v6]:port" or, when the port is optional, "host". `addr` names the addr= parameter
 * being read, null for the URL's own host. Never echoes a port that is not a number: in
 * "redis://user:pass" (no host) the password reads as one.
 */
function parseHostPort(text: string, addr: string | null, fail: (what: string) => never): { host: string; port: number } {
  const whose = (what: string, rest: string) => (addr === null ? `has a ${what} that ${rest}` : `has addr=${addr}, whose ${what} ${rest}`);
  const m = /^\[([0-9A-Fa-f:.]+)\](?::(.*))?$/.exec(text) ?? /^([^:[\]]*)(?::(.*))?$/.exec(text);
  if (!m) return fail(addr === null ? "has a host that is not host:port" : `has addr=${addr}, which is not host:port`);
  const host = m[1] ?? "";
  const port = m[2];
  if (host === "") return fail(addr === null ? "has no host" : `has addr=${addr}, which has no host`);
  if (!/^[A-Za-z0-9._:-]+$/.test(host)) return fail(whose("host", "is not a host name or an IP address"));
  if (port === undefined) {
    if (addr !== null) return fail(`has addr=${addr} without a port (write addr=host:port)`);
    return { host, port: DEFAULT_PORT };
  }
  if (!/^\d{1,5}$/.test(port)) return fail(whose("port", "is not a number"));
  const n = Number(port);
  if (n < 1 || n > 65535) return fail(addr === null ? `has port ${n}, not between 1 and 65535` : `has addr=${addr}, whose port ${n} is not between 1 and 65535`);
  return { host, port: n };
}

/**
 * Hides the password of any string meant as a Redis URL, parseable or not, erring towards hiding too
 * much: everything from the first ':' after "://" to the last '@' (a password may hold '@', ':', and
 * when mistyped '/', '?' or '#'), a password= query parameter (ioredis reads its query as options),
 * and, when there is no '@', a "port" that is not a number ("redis://user:pass" without its host).
 */
function redactRaw(raw: string): string {
  let s = raw.replace(/([?&]password=)[^&#]*/gi, "$1***");
  const sep = s.indexOf("://");
  const start = sep === -1 ? 0 : sep + 3;
  const at = s.lastIndexOf("@");
  if (at >= start) {
    const colon = s.indexOf(":", start);
    return colon !== -1 && colon < at ? `${s.slice(0, colon + 1)}***${s.slice(at)}` : s;
  }
  const end = s.slice(start).search(/[/?#]/);
  const authorityEnd = end === -1 ? s.length : start + end;
  const authority = s.slice(start, authorityEnd);
  const m = /^([^:[\]]*):(.*)$/.exec(authority);
  if (m && !/^\d*$/.test(m[2] ?? "")) s = `${s.slice(0, start)}${m[1]}:***${s.slice(authorityEnd)}`;
  return s;
}

/** Refuses (RedisTargetError naming CHAT_REDIS_PREFIX) a prefix with braces in cluster mode. */
export function checkPrefixForTarget(prefix: string, target: RedisTarget): void {
  if (target.mode !== "cluster" || !/[{}]/.test(prefix)) return;
  // Redis hashes only what is between the first '{' and the next '}' of a key: a prefix holding a
  // brace takes the place of every name's own {hash tag}, and puts every key in one slot of one node.
  throw new RedisTargetError(
    `CHAT_REDIS_PREFIX ${JSON.stringify(prefix)} contains '{' or '}', which a Redis Cluster reads as the hash tag of every key (all keys in one slot): remove the braces`,
  );
}

/** The URL as it may appear in logs and errors: password replaced by ***. Works for both schemes. */
export function describeRedisTarget(target: RedisTarget): string {
  if (target.mode === "single") return redactRaw(target.url.trim());
  const hostPort = (s: { host: string; port: number }) => `${s.host.includes(":") ? `[${s.host}]` : s.host}:${s.port}`;
  const user = target.username ? encodeURIComponent(target.username) : "";
  const userInfo = target.password !== undefined ? `${user}:***@` : user ? `${user}@` : "";
  const [first, ...others] = target.seeds;
  const addrs = others.map((s) => `addr=${hostPort(s)}`).join("&");
  return `${target.tls ? "rediss" : "redis"}+cluster://${userInfo}${first ? hostPort(first) : ""}${addrs ? `?${addrs}` : ""}`;
}

/**
 * Opens a client for the target: one ioredis Redis, or an ioredis Cluster with one sharded subscriber
 * connection per master (SSUBSCRIBE goes to the node owning the channel's slot; SPUBLISH is an
 * ordinary keyed command). Both keep their "error" events to the caller, who must listen to them:
 * a Cluster emits "error" with a plain emit (a sharded subscriber that cannot connect), which throws
 * when nobody listens.
 */
export function openRedis(target: RedisTarget, options: OpenRedisOptions): RedisClient {
  const { connectionName, enableOfflineQueue, maxRetriesPerRequest, lazyConnect, retryStrategy, connectTimeout } = options;
  if (target.mode === "single") {
    const single: RedisOptions = { connectionName };
    if (enableOfflineQueue !== undefined) single.enableOfflineQueue = enableOfflineQueue;
    if (maxRetriesPerRequest !== undefined) single.maxRetriesPerRequest = maxRetriesPerRequest;
    if (lazyConnect !== undefined) single.lazyConnect = lazyConnect;
    if (retryStrategy !== undefined) single.retryStrategy = retryStrategy;
    if (connectTimeout !== undefined) single.connectTimeout = connectTimeout;
    return new Redis(target.url, single);
  }

  // Every node's connection. ioredis gives node connections no retryStrategy (a lost node is found
  // again through MOVED and a slots refresh), so maxRetriesPerRequest, which counts reconnections,
  // hardly applies there: a lost node's commands fail with "Connection is closed." and go to the
  // retryDelayOnFailover path below.
  const redisOptions: NonNullable<ClusterOptions["redisOptions"]> = { connectionName };
  if (target.username !== undefined) redisOptions.username = target.username;
  if (target.password !== undefined) redisOptions.password = target.password;
  // Server name left to Node's default (the host connected to); CLUSTER SLOTS hands out node IPs.
  if (target.tls) redisOptions.tls = {};
  if (maxRetriesPerRequest !== undefined) redisOptions.maxRetriesPerRequest = maxRetriesPerRequest;
  if (connectTimeout !== undefined) redisOptions.connectTimeout = connectTimeout;

  const clusterOptions: ClusterOptions = {
    // One subscriber connection per master, SSUBSCRIBE routed by slot, resubscribed on topology changes.
    shardedSubscribers: true,
    scaleReads: "master",
    redisOptions,
    // Retries below are bounded by maxRedirections: every MOVED, ASK, TRYAGAIN, CLUSTERDOWN or
    // "Connection is closed." costs one, and the command is rejected when none is left.
    // 5, not 16: a send is answered "unavailable" after at most 5 retries (~1 s) instead of ~16 (~3 s+); a healthy resharding needs 1-2.
    maxRedirections: 5,
    // A node's connection closed (its master is failing over): retry after 200 ms, after a slots refresh; 5 of these ≈ 1 s, then reject.
    retryDelayOnFailover: 200,
    // CLUSTERDOWN (slots uncovered until a replica is promoted, seconds): the same 200 ms, so that a send fails within ~1 s rather than waiting out the election.
    retryDelayOnClusterDown: 200,
    // TRYAGAIN (a multi-key command during a slot migration) clears within milliseconds: 100 ms, ioredis' default.
    retryDelayOnTryAgain: 100,
    // The failover and CLUSTERDOWN retries wait for a slots refresh, which opens a new connection (TLS
    // included) to one node after another until one answers CLUSTER SLOTS: 1 s per node bounds how
    // long a dead node delays a send, and is ample for a connection and CLUSTER SLOTS on a loaded node.
    slotsRefreshTimeout: 1000,
    // A periodic refresh notices a failover on slots this client sends nothing to (and moves sharded
    // subscribers to the new master) within 5 s; each refresh costs every client a new connection, so
    // not more often. MOVED replies trigger a refresh at once anyway.
    slotsRefreshInterval: 5000,
  };
  if (enableOfflineQueue !== undefined) clusterOptions.enableOfflineQueue = enableOfflineQueue;
  if (lazyConnect !== undefined) clusterOptions.lazyConnect = lazyConnect;
  if (retryStrategy !== undefined) clusterOptions.clusterRetryStrategy = retryStrategy;
  return new Cluster(target.seeds.map((s) => ({ host: s.host, port: s.port })), clusterOptions);
}
