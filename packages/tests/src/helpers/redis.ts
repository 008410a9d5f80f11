import { Redis } from "ioredis";
import { afterAll } from "vitest";
import { REDIS_URL } from "./env.js";
import { atEnd } from "./scope.js";

let client: Redis | null = null;

/** A Redis connection for inspecting state, closed after the file's tests. */
export function testRedis(): Redis {
  if (!client) {
    client = new Redis(REDIS_URL);
    const c = client;
    afterAll(async () => {
      await c.quit();
      client = null;
    });
  }
  return client;
}

/**
 * Deletes this test's keys from the shared Redis when it ends. Call it before starting the test's
 * processes: teardowns run in reverse, so this runs after they are stopped.
 */
export function dropPrefixAtEnd(prefix: string): void {
  atEnd(async () => {
    const redis = testRedis();
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      if (keys.length > 0) await redis.unlink(...keys);
    } while (cursor !== "0");
  });
}
