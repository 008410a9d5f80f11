import { runMigrations } from "@chat/db";
import { DATABASE_URL } from "./helpers/env.js";

/** The suite runs against the built apps and, when Postgres answers (see vitest.config.ts), a migrated database. */
export default async function setup(): Promise<void> {
  if (process.env["CHAT_TEST_SERVICES"] === "up") await runMigrations(DATABASE_URL);
}
