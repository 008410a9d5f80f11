export * from "./client.js";
export * from "./db.js";
export * from "./env.js";
export * from "./processes.js";
export * from "./redis.js";
export * from "./tokens.js";
export * from "./wait.js";
export * from "./private-redis.js";
