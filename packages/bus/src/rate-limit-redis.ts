import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";
import type { RateLimiter } from "./bus.js";
import type { RedisNames } from "./names.js";

const lua = (name: string) => readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), "utf8");

/** A script that takes from a user's token bucket: token-bucket.lua's take_token, then the script. */
export const withTokenBucket = (script: string): string => `${lua("token-bucket")}\n${script}`;

const rateTakeLua = withTokenBucket(lua("rate-take"));

/**
 * Token buckets in Redis, one hash per user under the user's hash tag. Its own script, not part of
 * the log's accept: on a Redis Cluster the bucket is the user's slot, the log entry the
 * conversation's partition's. (On a single Redis the log takes from the bucket in its accept instead:
 * see RedisMessageLogOptions.rate.)
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
