import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";
import type { RateLimiter } from "./bus.js";
import type { RedisNames } from "./names.js";

const rateTakeLua = readFileSync(new URL("./lua/rate-take.lua", import.meta.url), "utf8");

/**
 * Token buckets in Redis, one hash per user under the user's hash tag. Its own script, not part of
 * the log's accept: the bucket is the user's slot, the log entry the conversation's partition's.
 */
export class RedisRateLimiter implements RateLimiter {
  constructor(
    private readonly redis: Redis | Cluster,
    private readonly names: RedisNames,
    private readonly ratePerSecond: number,
    private readonly burst: number,
  ) {
    if (!("chatRateTake" in redis)) redis.defineCommand("chatRateTake", { numberOfKeys: 1, lua: rateTakeLua });
  }

  async take(username: string): Promise<number> {
    const run = (this.redis as unknown as { chatRateTake(...a: (string | number)[]): Promise<number> }).chatRateTake;
    return Number(await run.call(this.redis, this.names.rateBucket(username), this.ratePerSecond, this.burst));
  }
}
