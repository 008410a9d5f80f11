/** One environment variable of an app: its name, default, meaning and parser. */
export interface Setting<T = unknown> {
  env: string;
  /** Used when the variable is unset or empty; undefined means "no default" (the app decides). */
  default: string | undefined;
  description: string;
  parse: (raw: string) => T;
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
  readonly code = "config_invalid";
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
  }
}

type Values<S extends Record<string, Setting>> = { [K in keyof S]: S[K] extends Setting<infer T> ? T : never };

/**
 * Parses every setting of the table; collects all problems instead of stopping at the first.
 * Settings without a default and without a value are absent from the result.
 */
export function readSettings<S extends Record<string, Setting>>(
  table: S,
  env: NodeJS.ProcessEnv,
): { values: Partial<Values<S>>; problems: string[] } {
  const values: Partial<Record<keyof S, unknown>> = {};
  const problems: string[] = [];
  for (const key of Object.keys(table) as (keyof S)[]) {
    const s = table[key]!;
    const raw = env[s.env] === "" ? undefined : env[s.env];
    const value = raw ?? s.default;
    if (value === undefined) continue;
    try {
      values[key] = s.parse(value);
    } catch (err) {
      problems.push(`${s.env} ${(err as Error).message}`);
    }
  }
  return { values: values as Partial<Values<S>>, problems };
}

export const text = (raw: string): string => raw;

export function integer(min: number, max: number): (raw: string) => number {
  return (raw) => {
    // Kubernetes injects <SERVICE>_PORT=tcp://10.0.0.1:8000 for every Service; say so instead of NaN.
    if (!/^\d+$/.test(raw.trim())) throw new Error(`must be an integer between ${min} and ${max}, got "${raw}"`);
    const n = Number(raw.trim());
    if (n < min || n > max) throw new Error(`must be between ${min} and ${max}, got ${n}`);
    return n;
  };
}

export function url(...protocols: string[]): (raw: string) => string {
  return (raw) => {
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      throw new Error("is not a URL");
    }
    if (!protocols.includes(u.protocol)) throw new Error(`must use ${protocols.join(" or ")}`);
    return raw;
  };
}

export function oneOf<T extends string>(...allowed: T[]): (raw: string) => T {
  return (raw) => {
    if (!(allowed as string[]).includes(raw)) throw new Error(`must be one of ${allowed.join(", ")}`);
    return raw as T;
  };
}

/** Settings both apps share. */
export const commonSettings = {
  redisUrl: {
    env: "REDIS_URL",
    default: "redis://127.0.0.1:6379",
    description:
      "Redis: pub/sub, the message log, presence. `redis+cluster://host:port?addr=host2:port2` (`rediss+cluster://` for TLS) is a Redis Cluster, given by seed nodes",
    parse: url("redis:", "rediss:", "redis+cluster:", "rediss+cluster:"),
  },
  databaseUrl: { env: "DATABASE_URL", default: "postgres://postgres@127.0.0.1:5432/chat", description: "Postgres database", parse: url("postgres:", "postgresql:") },
  redisPrefix: {
    env: "CHAT_REDIS_PREFIX",
    default: "chat:",
    description: "Prefix of every Redis key, channel and stream name (no `{` or `}` on a Redis Cluster)",
    parse: (raw: string) => {
      if (/[\s*?[\]]/.test(raw)) throw new Error("must not contain whitespace or glob characters");
      return raw;
    },
  },
  partitions: {
    env: "CHAT_PARTITIONS",
    default: "16",
    description:
      "Partitions of the message log: conversations are spread over this many Redis streams, each consumed by one worker at a time. Recorded in Redis on first start; every gateway and worker must use the same value, and it must not change afterwards (see docs/scaling.md)",
    parse: integer(1, 1024),
  },
  logLevel: { env: "LOG_LEVEL", default: "info", description: "Log level", parse: oneOf("trace", "debug", "info", "warn", "error", "fatal", "silent") },
} satisfies Record<string, Setting>;

/** Markdown table rows of a settings table, for the README. */
export function settingsTable(table: Record<string, Setting>): string {
  return Object.values(table)
    .map((s) => `| \`${s.env}\` | ${s.default === undefined ? "" : `\`${s.default}\``} | ${s.description} |`)
    .join("\n");
}

/**
 * An expected start-up failure (a port in use, a backend that does not answer, a data directory in
 * use...): its message is one line a person can act on, naming the thing and the setting to change.
 */
export class StartupError extends Error {
  override readonly name = "StartupError";
  readonly code = "startup_failed";
}

/** The line for a port that could not be listened on, from the errno of the attempt (when known). */
export function portProblem(errno: string | undefined, host: string, port: number, portSetting: string, hostSetting = "HOST"): string {
  const where = `${host}:${port}`;
  if (errno === "EADDRINUSE") return `port ${port} is already in use (${where}): stop the other process or set ${portSetting} to a free port (0 picks one)`;
  if (errno === "EADDRNOTAVAIL" || errno === "ENOTFOUND" || errno === "EAI_AGAIN") {
    return `cannot listen on ${where}: ${host} is not an address of this machine: set ${hostSetting}`;
  }
  if (errno === "EACCES") return `cannot listen on ${where}: permission denied (ports below 1024 need privileges): set ${portSetting}`;
  return `cannot listen on ${where}${errno ? ` (${errno})` : ""}: set ${portSetting} (or ${hostSetting})`;
}

/**
 * The one line printed for a failure at start-up: configuration problems and StartupErrors as they
 * are; anything else with its message, since it is a bug or a case not foreseen (the stack follows
 * on the next lines for those only).
 */
export function startupFailureText(program: string, err: unknown): string {
  if (err instanceof ConfigError) return `${program}: invalid configuration: ${err.problems.join("; ")}\n`;
  if (err instanceof StartupError) return `${program}: ${err.message}\n`;
  const e = err as Error;
  return `${program}: cannot start: ${e?.message ?? String(err)}\n${e?.stack ? `${e.stack}\n` : ""}`;
}

/**
 * Prints a start-up failure as plain text on stderr (never the JSON of the running service's logs)
 * and exits: 2 for configuration, 1 otherwise.
 */
export function exitOnStartupFailure(program: string, err: unknown): never {
  process.stderr.write(startupFailureText(program, err));
  process.exit(err instanceof ConfigError ? 2 : 1);
}
