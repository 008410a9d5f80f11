import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import WebSocket from "ws";

// `npm run -s chat -- <me> <other> [--url http://host:port]`: one conversation in a terminal. Lines
// typed (or piped) in are sent as chat messages; events are printed one per line. When input ends, it
// waits for the echo of every line it sent, then exits, so `echo hi | npm run -s chat -- alice bob`
// works as a script.

const USAGE = "usage: npm run -s chat -- <your username> <other username> [--url http://127.0.0.1:8000]";

interface Args {
  me: string;
  other: string;
  base: URL;
}

function fail(line: string, code = 1): never {
  process.stderr.write(`${line}\n`);
  process.exit(code);
}

function parseArgs(argv: string[]): Args {
  const positional: string[] = [];
  let url = process.env["CHAT_URL"] ?? "http://127.0.0.1:8000";
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--url") url = argv[++i] ?? fail(USAGE, 2);
    else if (argv[i]!.startsWith("--url=")) url = argv[i]!.slice("--url=".length);
    else positional.push(argv[i]!);
  }
  const [me, other] = positional;
  if (!me || !other || positional.length > 2) fail(USAGE, 2);
  let base: URL;
  try {
    base = new URL(url);
  } catch {
    fail(`--url ${JSON.stringify(url)} is not a URL (e.g. http://127.0.0.1:8000)`, 2);
  }
  if (base.protocol !== "http:" && base.protocol !== "https:") fail(`--url must be http:// or https://, not ${base.protocol}`, 2);
  return { me, other, base };
}

/** CHAT_TOKEN when given; otherwise the development sign-in of a gateway started with `npm start`. */
async function obtainToken(base: URL, me: string): Promise<string> {
  const given = process.env["CHAT_TOKEN"];
  if (given) return given;
  const endpoint = new URL("/api/dev/token", base);
  let res: Response;
  try {
    res = await fetch(endpoint, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: me }) });
  } catch (err) {
    fail(`cannot reach the gateway at ${base.origin} (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}): start it with npm start, or pass --url`);
  }
  if (res.status === 404) {
    fail(`the gateway at ${base.origin} has no development sign-in: set CHAT_TOKEN to a token for ${me} (npm run -s token -- ${me}, with the gateway's CHAT_JWT_SECRET)`);
  }
  const body = (await res.json().catch(() => null)) as { token?: string; message?: string } | null;
  if (!res.ok || !body?.token) fail(`sign-in as ${me} was refused (${res.status}): ${body?.message ?? "no token in the answer"}`);
  return body.token;
}

const time = (iso: unknown) => (typeof iso === "string" ? iso.slice(11, 19) : new Date().toISOString().slice(11, 19));

/** One readable line per server event; unknown events as their JSON. */
function describe(event: Record<string, unknown>): string {
  switch (event["type"]) {
    case "online_user_list":
      return `* online: ${(event["users"] as string[]).join(", ")}`;
    case "user_join":
      return `* ${String(event["user"])} joined`;
    case "user_leave":
      return `* ${String(event["user"])} left`;
    case "chat_message": {
      const media = event["multimedia_url"] ? ` [${String(event["multimedia_url"])}]` : "";
      const from = (event["from_user"] as { username?: string } | undefined)?.username;
      return `[${time(event["date_added"])}] ${String(from)}: ${String(event["message"] ?? "")}${media}`;
    }
    case "catch_up_end":
      return `* caught up (${String(event["count"])} missed)`;
    case "error":
      return `! ${String(event["code"])}: ${String(event["message"])}`;
    default:
      return JSON.stringify(event);
  }
}

const { me, other, base } = parseArgs(process.argv.slice(2));
const token = await obtainToken(base, me);
const wsUrl = new URL(`/ws/${encodeURIComponent(other)}/`, base);
wsUrl.protocol = base.protocol === "https:" ? "wss:" : "ws:";
// The token goes in a header, never in the URL (which proxies log).
const ws = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${token}` } });

const pending = new Set<string>();
let inputEnded = false;
let closing = false;
const finishIfDone = () => {
  if (inputEnded && pending.size === 0 && !closing) {
    closing = true;
    ws.close(1000, "bye");
  }
};

ws.on("unexpected-response", (_req, res) => {
  let body = "";
  res.on("data", (d: Buffer) => (body += d.toString()));
  res.on("end", () => {
    let message = body;
    try {
      const parsed = JSON.parse(body) as { error?: string; message?: string };
      message = `${parsed.error}: ${parsed.message}`;
    } catch {
      // not JSON: print it as it came
    }
    fail(`the gateway refused the socket (${res.statusCode}) ${message}`);
  });
});
ws.on("error", (err) => fail(`socket error: ${err.message}`));
ws.on("close", (code, reason) => {
  if (closing) process.exit(0);
  fail(`the gateway closed the socket (${code}${reason.length ? ` ${reason.toString()}` : ""})`);
});
ws.on("message", (data) => {
  let event: Record<string, unknown>;
  try {
    event = JSON.parse(data.toString()) as Record<string, unknown>;
  } catch {
    return void process.stdout.write(`${data.toString()}\n`);
  }
  process.stdout.write(`${describe(event)}\n`);
  const clientId = event["client_id"];
  if (typeof clientId === "string" && (event["type"] === "chat_message" || event["type"] === "error")) {
    pending.delete(clientId);
    finishIfDone();
  }
});
ws.on("open", () => {
  const input = createInterface({ input: process.stdin, terminal: false });
  input.on("line", (line) => {
    if (line.trim() === "") return;
    const clientId = randomUUID();
    pending.add(clientId);
    ws.send(JSON.stringify({ type: "chat_message", message: line, client_id: clientId }));
  });
  input.on("close", () => {
    inputEnded = true;
    finishIfDone();
  });
});
