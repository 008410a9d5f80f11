import { connect } from "node:net";
import postgres from "postgres";
import { redactUrl } from "@chat/db";

/** Whether the Redis and Postgres the suites need answer, and if not, why. */
export interface ServicesProbe {
  up: boolean;
  /** One line per service that does not answer. */
  problems: string[];
}

function pingRedis(url: string, timeoutMs: number): Promise<void> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: u.hostname || "127.0.0.1", port: Number(u.port || 6379) });
    const fail = (err: Error) => {
      socket.destroy();
      reject(err);
    };
    socket.setTimeout(timeoutMs, () => fail(new Error(`no answer within ${timeoutMs} ms`)));
    socket.on("error", fail);
    socket.on("connect", () => {
      const password = decodeURIComponent(u.password);
      const user = decodeURIComponent(u.username);
      if (password) socket.write(`AUTH ${user ? `${user} ` : ""}${password}\r\n`);
      socket.write("PING\r\n");
    });
    let reply = "";
    socket.on("data", (d: Buffer) => {
      reply += d.toString();
      if (reply.includes("+PONG")) {
        socket.end();
        resolve();
      } else if (reply.startsWith("-")) fail(new Error(reply.trim()));
    });
  });
}

async function pingPostgres(url: string, timeoutMs: number): Promise<void> {
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const sql = postgres(admin.toString(), { max: 1, connect_timeout: Math.ceil(timeoutMs / 1000), onnotice: () => {} });
  try {
    await sql`SELECT 1`;
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/** Probes both services (about 2 s at most each). */
export async function probeServices(redisUrl: string, databaseUrl: string): Promise<ServicesProbe> {
  const problems: string[] = [];
  const [redis, pg] = await Promise.allSettled([pingRedis(redisUrl, 2000), pingPostgres(databaseUrl, 2000)]);
  if (redis.status === "rejected") problems.push(`Redis does not answer at ${redactUrl(redisUrl)}: ${(redis.reason as Error).message}`);
  if (pg.status === "rejected") problems.push(`Postgres does not answer at ${redactUrl(databaseUrl)}: ${(pg.reason as Error).message}`);
  return { up: problems.length === 0, problems };
}
