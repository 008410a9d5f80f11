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
