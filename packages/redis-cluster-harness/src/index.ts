export * from "./redis-cluster.js";
