import { runMigrations, redactUrl } from "./migrate.js";

const url = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/chat";
try {
  await runMigrations(url);
  process.stdout.write(JSON.stringify({ level: "info", component: "db:migrate", database: redactUrl(url), msg: "migrations applied" }) + "\n");
} catch (err) {
  // One line a person can act on (the URL without its password), not a JSON log: nothing runs yet.
  const e = err as Error & { cause?: Error };
  process.stderr.write(`migrate: Postgres is not usable at ${redactUrl(url)} (${e.cause?.message ?? e.message}): start PostgreSQL or set DATABASE_URL\n`);
  process.exit(1);
}
