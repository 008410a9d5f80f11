import { runMigrations } from "@chat/db";
import { DATABASE_URL } from "./helpers/env.js";

/** The suite runs against the built apps and a migrated database. */
export default async function setup(): Promise<void> {
  await runMigrations(DATABASE_URL);
}
