import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

/** Postgres inside this process (PGlite), reached by postgres.js through a private Unix socket. */
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
 * Opens (creating if needed) the database under `dataDir`. PGlite is one Postgres session: its
 * socket server multiplexes client connections query by query and keeps a transaction's queries
 * together, so the gateway's and the worker's pools share it safely. A second process on the same
 * directory would corrupt it, so a lock file with our pid refuses that.
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
  // Unix socket paths are limited to ~107 bytes, so the socket lives in a short private directory.
  const socketDir = mkdtempSync(join(tmpdir(), "chat-pg-"));
  const socketPath = join(socketDir, ".s.PGSQL.5432");
  const server = new PGLiteSocketServer({ db, path: socketPath, maxConnections: 16 });
  // The server's own queue interleaves clients message by message; see ProtocolQueue.
  (server as unknown as { queryQueue: ProtocolQueue }).queryQueue = new ProtocolQueue(db);
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

const PARSE = 0x50;
const BIND = 0x42;
const DESCRIBE = 0x44;
const EXECUTE = 0x45;
const CLOSE = 0x43;
const SYNC = 0x53;
const QUERY = 0x51;
const TERMINATE = 0x58;
/** Messages of an extended-protocol exchange that only take effect with the Sync (or Flush) that follows. */
const HELD = new Set([PARSE, BIND, DESCRIBE, EXECUTE, CLOSE]);
const SYNC_MESSAGE = new Uint8Array([SYNC, 0, 0, 0, 4]);

interface Job {
  handlerId: number;
  bytes: Uint8Array;
  /** Ends with Sync or a simple Query: the exchange is over, another client may go next. */
  complete: boolean;
  onData(data: Uint8Array): void;
  resolve(bytes: number): void;
  reject(err: unknown): void;
}

/**
 * Replaces the query queue of PGLiteSocketServer (same four methods). That queue runs each protocol
 * message of each client as it comes, so two clients' extended-protocol exchanges (Parse, Bind,
 * Execute... Sync, as postgres.js sends every query) interleave in the one PGlite session: one
 * client's Bind replaces the other's unnamed portal ("portal \"\" does not exist"), and an error
 * lands on the wrong client. Here a client's messages are held until its Sync (or Flush, or a
 * simple Query) and run together; after a Flush, or inside a transaction, only that client's
 * messages run until it is done, like its own session.
 */
class ProtocolQueue {
  private readonly held = new Map<number, Uint8Array[]>();
  private readonly jobs: Job[] = [];
  private running = false;
  /** The client whose transaction or unfinished exchange is open: only its jobs may run. */
  private owner: number | null = null;

  constructor(private readonly db: PGlite) {}

  enqueue(handlerId: number, message: Uint8Array, onData: (data: Uint8Array) => void): Promise<number> {
    // A startup message begins with its length (first byte 0), not a type.
    if (message[0] !== 0 && HELD.has(message[0]!)) {
      const held = this.held.get(handlerId);
      if (held) held.push(message);
      else this.held.set(handlerId, [message]);
      return Promise.resolve(0);
    }
    const parts = this.held.get(handlerId) ?? [];
    this.held.delete(handlerId);
    parts.push(message);
    const bytes = parts.length === 1 ? message : Buffer.concat(parts);
    const complete = message[0] === SYNC || message[0] === QUERY || message[0] === TERMINATE || message[0] === 0;
    return new Promise((resolve, reject) => {
      this.jobs.push({ handlerId, bytes, complete, onData, resolve, reject });
      void this.run();
    });
  }

  getQueueLength(): number {
    return this.jobs.length;
  }

  clearQueueForHandler(handlerId: number): void {
    this.held.delete(handlerId);
    for (let i = this.jobs.length - 1; i >= 0; i--) {
      const job = this.jobs[i]!;
      if (job.handlerId !== handlerId) continue;
      this.jobs.splice(i, 1);
      job.reject(new Error("Handler disconnected"));
    }
  }

  /** A client went away: end its unfinished exchange and roll back its transaction, so others can go on. */
  async clearTransactionIfNeeded(handlerId: number): Promise<void> {
    if (this.owner !== handlerId) return;
    await this.db.runExclusive(() => this.db.execProtocolRawStream(SYNC_MESSAGE, { onRawData: () => {} }));
    if (this.db.isInTransaction()) await this.db.exec("ROLLBACK");
    this.owner = null;
    await this.run();
  }

  private async run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (;;) {
        const at = this.owner === null ? 0 : this.jobs.findIndex((j) => j.handlerId === this.owner);
        if (at < 0 || at >= this.jobs.length) return;
        const job = this.jobs.splice(at, 1)[0]!;
        let sent = 0;
        try {
          await this.db.runExclusive(() =>
            this.db.execProtocolRawStream(job.bytes, {
              onRawData: (data: Uint8Array) => {
                sent += data.length;
                job.onData(data);
              },
            }),
          );
        } catch (err) {
          job.reject(err);
          continue;
        } finally {
          this.owner = !job.complete || this.db.isInTransaction() ? job.handlerId : null;
        }
        job.resolve(sent);
      }
    } finally {
      this.running = false;
    }
  }
}
