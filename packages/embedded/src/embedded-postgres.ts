import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import { drizzle } from "drizzle-orm/pglite";
import { migrate } from "drizzle-orm/pglite/migrator";
import { migrationsFolder } from "@chat/db";

/**
 * Postgres inside this process (PGlite), migrated, reached by postgres.js through a private Unix
 * socket that takes ONE connection: PGlite is a single Postgres session, and the socket server's
 * multiplexing of several connections interleaves their extended-protocol messages (a Parse of one
 * connection lands between the Bind and Execute of another: `portal "" does not exist`). So every
 * user of the database in the process shares one postgres.js client of one connection.
 */
export interface EmbeddedPostgres {
  /** A postgres:// URL for logs and for the clients' database name; connect with `socketPath`. */
  readonly url: string;
  readonly socketPath: string;
  /** Where the database files live. */
  readonly dataDir: string;
  close(): Promise<void>;
}

export class DataDirInUseError extends Error {
  override readonly name = "DataDirInUseError";
  readonly code = "data_dir_in_use";
}

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
};

/**
 * Opens (creating if needed) the database under `dataDir` and applies the checked-in migrations,
 * the very ones the cluster's Postgres gets. A second process on the same directory would corrupt
 * it, so a lock file with our pid refuses that.
 */
export async function openEmbeddedPostgres(dataDir: string): Promise<EmbeddedPostgres> {
  const dir = resolve(dataDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const lockFile = join(dir, "lock");
  let holder: number | null = null;
  try {
    holder = Number(readFileSync(lockFile, "utf8").trim()) || null;
  } catch {
    // no lock file: nobody holds it
  }
  if (holder !== null && holder !== process.pid && isAlive(holder)) {
    throw new DataDirInUseError(`${dir} is in use by process ${holder}; stop it or set CHAT_DATA_DIR elsewhere`);
  }
  writeFileSync(lockFile, `${process.pid}\n`);

  const db = await PGlite.create({ dataDir: join(dir, "pg") });
  try {
    await migrate(drizzle(db), { migrationsFolder });
  } catch (cause) {
    await db.close();
    throw new Error(`migrations failed on the embedded database in ${dir}`, { cause });
  }
  // Unix socket paths are limited to ~107 bytes, so the socket lives in a short private directory.
  const socketDir = mkdtempSync(join(tmpdir(), "chat-pg-"));
  const socketPath = join(socketDir, ".s.PGSQL.5432");
  const server = new PGLiteSocketServer({ db, path: socketPath, maxConnections: 1 });
  await server.start();
  return {
    url: "postgres://postgres@localhost/postgres",
    socketPath,
    dataDir: dir,
    async close() {
      await server.stop();
      await db.close();
      rmSync(socketDir, { recursive: true, force: true });
      rmSync(lockFile, { force: true });
    },
  };
}
