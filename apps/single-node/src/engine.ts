import { ConfigError } from "@chat/config";

/** Which parts one process runs on. */
export type Engine =
  | { kind: "embedded"; dataDir: string }
  | { kind: "redis"; redisUrl: string; databaseUrl: string };

/**
 * Embedded when neither REDIS_URL nor DATABASE_URL is set; Redis and Postgres when both are. One of
 * the two alone is refused: running half on embedded parts would split the data without anyone
 * noticing.
 */
export function chooseEngine(env: NodeJS.ProcessEnv): Engine {
  const redisUrl = env["REDIS_URL"] || undefined;
  const databaseUrl = env["DATABASE_URL"] || undefined;
  if (!redisUrl && !databaseUrl) return { kind: "embedded", dataDir: env["CHAT_DATA_DIR"] || "./.data" };
  if (redisUrl && databaseUrl) return { kind: "redis", redisUrl, databaseUrl };
  throw new ConfigError([
    `${redisUrl ? "REDIS_URL" : "DATABASE_URL"} is set but ${redisUrl ? "DATABASE_URL" : "REDIS_URL"} is not: set both (Redis and Postgres) or neither (embedded engine under CHAT_DATA_DIR)`,
  ]);
}
