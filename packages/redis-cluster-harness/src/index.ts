export * from "./redis-cluster.js";
export { freePort } from "./ports.js";
