import { Redis } from "ioredis";
import { afterAll } from "vitest";
import { REDIS_URL } from "./env.js";

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
