export * from "./codes.js";
export type * from "./events.js";
export * from "./schemas.js";
export * from "./usernames.js";
export * from "./validate.js";
