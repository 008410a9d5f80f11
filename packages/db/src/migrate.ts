import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";

/** The checked-in migrations (drizzle-kit), applied by runMigrations and by the embedded engine. */
export const migrationsFolder = fileURLToPath(new URL("../migrations", import.meta.url));

/** Arbitrary constant: serializes concurrent migrators (several pods or test runs starting at once). */
const MIGRATION_LOCK = 7_202_611;

export class MigrationError extends Error {
  override readonly name = "MigrationError";
  readonly code = "migration_failed";
}

export interface MigrateOptions {
  /** A Unix socket to connect through instead of the URL's host (the embedded engine's PGlite). */
  socketPath?: string;
}

const socket = (options: MigrateOptions): { path?: string } => (options.socketPath ? { path: options.socketPath } : {});

/** Creates the database named in `url` when it does not exist; connects to the `postgres` database for that. */
export async function ensureDatabase(url: string, options: MigrateOptions = {}): Promise<void> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.slice(1));
  if (!name) throw new MigrationError("DATABASE_URL names no database");
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const sql = postgres(admin.toString(), { max: 1, onnotice: () => {}, ...socket(options) });
  try {
    const found = await sql`SELECT 1 FROM pg_database WHERE datname = ${name}`;
    if (found.length === 0) {
      try {
        await sql.unsafe(`CREATE DATABASE "${name.replaceAll('"', '""')}"`);
      } catch (err) {
        // Another migrator created it between our check and our CREATE.
        if ((err as { code?: string }).code !== "42P04") throw err;
      }
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Applies the checked-in migrations, idempotently, on a dedicated one-connection client. */
export async function runMigrations(url: string, options: MigrateOptions = {}): Promise<void> {
  await ensureDatabase(url, options);
  const sql = postgres(url, { max: 1, onnotice: () => {}, ...socket(options) });
  try {
    await sql`SELECT pg_advisory_lock(${MIGRATION_LOCK})`;
    await migrate(drizzle(sql), { migrationsFolder });
  } catch (cause) {
    throw new MigrationError(`migrations failed on ${redactUrl(url)}`, { cause });
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Where the database's schema stands against the migrations checked in with this version. */
export interface SchemaStatus {
  /** Migrations this version ships (migrations/meta/_journal.json). */
  known: number;
  /** How many of those the database has applied (drizzle's rule: every one up to its latest). */
  applied: number;
  /** Migrations the database has applied that this version does not know: a newer version migrated it. */
  newer: number;
  /** behind: some known migration is not applied (none at all on an unmigrated database); ahead: newer > 0. */
  state: "current" | "behind" | "ahead";
}

/** The `when` of each checked-in migration, in order: drizzle records it as created_at once applied. */
function knownMigrations(): number[] {
  const journal = JSON.parse(readFileSync(`${migrationsFolder}/meta/_journal.json`, "utf8")) as { entries: { when: number }[] };
  return journal.entries.map((e) => e.when);
}

/**
 * Compares drizzle's record of applied migrations (drizzle.__drizzle_migrations) with the checked-in
 * journal. Read-only; a connection problem rejects as the driver's error.
 */
export async function schemaStatus(sql: postgres.Sql): Promise<SchemaStatus> {
  const known = knownMigrations();
  const lastKnown = known.at(-1) ?? 0;
  const [table] = await sql<{ present: boolean }[]>`SELECT to_regclass('drizzle.__drizzle_migrations') IS NOT NULL AS present`;
  let latest = -Infinity;
  let newer = 0;
  if (table?.present) {
    const [row] = await sql<{ latest: string | null; newer: number }[]>`
      SELECT max(created_at)::text AS latest, (count(*) FILTER (WHERE created_at > ${lastKnown}))::int AS newer
      FROM drizzle.__drizzle_migrations`;
    if (row?.latest != null) latest = Number(row.latest);
    newer = row?.newer ?? 0;
  }
  const applied = known.filter((when) => when <= latest).length;
  return { known: known.length, applied, newer, state: applied < known.length ? "behind" : newer > 0 ? "ahead" : "current" };
}

/** Why a database cannot be used by this version at start-up; the message is one line naming the fix. */
export class DatabaseStartupError extends Error {
  override readonly name = "DatabaseStartupError";
  readonly code = "database_not_usable";
}

/**
 * The start-up check of the gateway and the worker: Postgres answers at `url` and its schema is not
 * behind this version (a database ahead of it, during the rollout of a newer version, is accepted:
 * the caller should log a warning). Uses its own short-lived connection, not the service's pool.
 * Rejects with a DatabaseStartupError saying what to do (the password left out).
 */
export async function checkDatabase(url: string, options: MigrateOptions = {}): Promise<SchemaStatus> {
  const where = redactUrl(url);
  const sql = postgres(url, { max: 1, connect_timeout: 10, onnotice: () => {}, ...socket(options) });
  let status: SchemaStatus;
  try {
    status = await schemaStatus(sql);
  } catch (err) {
    const e = err as Error & { code?: string };
    // Invalid catalog name: the server answers but the database was never created.
    if (e.code === "3D000") throw new DatabaseStartupError(`the database at ${where} does not exist: run npm run migrate (it creates it) or set DATABASE_URL`);
    throw new DatabaseStartupError(`Postgres is not usable at ${where} (${e.message}): start PostgreSQL or set DATABASE_URL`);
  } finally {
    await sql.end({ timeout: 5 }).catch(() => {});
  }
  if (status.state === "behind") {
    throw new DatabaseStartupError(
      `the database schema at ${where} is behind this version (applied ${status.applied} of ${status.known} migrations): run npm run migrate (DATABASE_URL)`,
    );
  }
  return status;
}

/** The URL without its password, for logs and errors. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "<unparseable url>";
  }
}

/** A database migrated by a newer version (during its rollout) is used as it is, with this warning. */
export function warnIfSchemaAhead(schema: SchemaStatus, database: string, log: { warn(fields: Record<string, unknown>, msg: string): void }): void {
  if (schema.state === "ahead") log.warn({ ...schema, database }, "the database schema is ahead of this version (a newer version migrated it); starting anyway");
}
