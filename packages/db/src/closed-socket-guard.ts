/** The two levels the guard logs at (a pino logger fits). */
interface GuardLog {
  warn(fields: Record<string, unknown>, msg: string): void;
  fatal(fields: Record<string, unknown>, msg: string): void;
}

/**
 * postgres.js 3.4.9 (the latest release) can throw from a `setImmediate` after one of its connections
 * closed: a small write is buffered for the next tick, the socket closes meanwhile, and `nextWrite`
 * calls `write` on `null` (porsager/postgres#1154, #1208; fixes proposed in #1168, #1209, not released).
 * Nothing can catch it, so it ends the process, which happened to a worker when Postgres stopped.
 * The closed connection's queries are rejected by postgres.js itself, or, for the write that vanished,
 * never answered, which the worker's stall timeout turns into a retry on a new pool.
 */
export function isClosedSocketWrite(err: unknown): boolean {
  return (
    err instanceof TypeError &&
    err.message.includes("reading 'write'") &&
    typeof err.stack === "string" &&
    err.stack.includes("nextWrite") &&
    /postgres[\\/](src|cjs[\\/]src)[\\/]connection\.js/.test(err.stack)
  );
}

/**
 * Keeps the process alive through that one exception (logged as a warning); any other uncaught
 * exception is logged as fatal and exits with 1, as Node would. Called by each process' main.
 */
export function survivePostgresClosedSocketWrites(log: GuardLog): void {
  process.on("uncaughtException", (err) => {
    if (isClosedSocketWrite(err)) {
      log.warn({ err }, "postgres.js wrote to a closed connection (porsager/postgres#1208); its query fails or stalls and is retried");
      return;
    }
    log.fatal({ err }, "uncaught exception");
    process.exit(1);
  });
}
