export { loadGatewayConfig, GATEWAY_SETTINGS, DEVELOPMENT_JWT_SECRET, type GatewayConfig } from "./config.js";
export { startGateway, type BusRecovery, type GatewayParts, type RunningGateway } from "./gateway.js";
export { openRedisBus, RedisUnreachableError, type RedisGatewayBus } from "./bus-redis.js";
export { chatMessageEvent } from "./sessions/chat-message.js";
