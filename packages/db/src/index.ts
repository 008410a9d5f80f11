export * from "./client.js";
export * from "./closed-socket-guard.js";
export * from "./migrate.js";
export * from "./queries/persist.js";
export * from "./queries/unread.js";
export * as schema from "./schema.js";
export * from "./queries/history.js";
export * from "./queries/uploads.js";
export * from "./unavailable.js";
