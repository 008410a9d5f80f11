import { runMigrations, redactUrl } from "./migrate.js";

const url = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/chat";
try {
  await runMigrations(url);
  process.stdout.write(JSON.stringify({ level: "info", component: "db:migrate", database: redactUrl(url), msg: "migrations applied" }) + "\n");
} catch (err) {
  const e = err as Error & { cause?: Error };
  process.stderr.write(
    JSON.stringify({ level: "error", component: "db:migrate", msg: e.message, cause: e.cause?.message ?? null }) + "\n",
  );
  process.exit(1);
}
