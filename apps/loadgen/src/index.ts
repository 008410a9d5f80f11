export * from "./client-id.js";
export * from "./connections.js";
export * from "./histogram.js";
export * from "./protocols/index.js";
export * from "./run.js";
export * from "./sequence-tracker.js";
export type { ShardOptions, ShardResult } from "./shard.js";
export * from "./token.js";
