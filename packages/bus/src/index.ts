export * from "./envelope.js";
export type { Log } from "./log.js";
export * from "./names.js";
export * from "./presence-redis.js";
export * from "./router.js";
export * from "./stream.js";
export * from "./connection-limit.js";
