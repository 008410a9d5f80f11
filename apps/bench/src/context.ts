import type postgres from "postgres";
import type { BenchEnv, ServicePids } from "./cluster.js";

/** What every scenario needs: the environment, the shared services, and unique names. */
export interface BenchContext {
  env: BenchEnv;
  services: ServicePids;
  /** A connection to the bench database, for persistence checks. */
  sql: postgres.Sql;
  /** Message text length of every load. */
  messageBytes: number;
  /** A unique username prefix for one load or scenario (valid usernames: letters, digits, `_`). */
  userPrefix(label: string): string;
  /** A progress line on stderr. */
  log(message: string): void;
}
