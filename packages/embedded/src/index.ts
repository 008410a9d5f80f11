export * from "./embedded-postgres.js";
export * from "./message-log-postgres.js";
