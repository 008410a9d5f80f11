export { loadWorkerConfig, WORKER_SETTINGS, type WorkerConfig } from "./config.js";
export { startWorker, type RunningWorker, type WorkerParts } from "./worker.js";
export { openRedisWorkerBus } from "./bus-redis.js";
