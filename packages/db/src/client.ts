import { drizzle, type PostgresJsDatabase } from "drizzle-orm/postgres-js";
import postgres from "postgres";
import * as schema from "./schema.js";

export type Db = PostgresJsDatabase<typeof schema>;

export interface DbClient {
  db: Db;
  sql: postgres.Sql;
  close(): Promise<void>;
}

export interface DbOptions {
  /** Pool size. @default 10 */
  max?: number;
  /** Application name shown in pg_stat_activity. */
  applicationName?: string;
  /** A Unix socket to connect through instead of the URL's host (the embedded engine's PGlite). */
  socketPath?: string;
}

/** Opens a pool lazily (no connection until the first query). */
export function createDb(url: string, options: DbOptions = {}): DbClient {
  const client = postgres(url, {
    max: options.max ?? 10,
    onnotice: () => {},
    connection: { application_name: options.applicationName ?? "chat" },
    types: { bigint: postgres.BigInt },
    ...(options.socketPath ? { path: options.socketPath } : {}),
  });
  return { db: drizzle(client, { schema }), sql: client, close: () => client.end({ timeout: 5 }) };
}
