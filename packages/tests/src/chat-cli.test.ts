import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer, type AddressInfo } from "node:net";
import { describe, expect, it } from "vitest";
import { connectReady, dropPrefixAtEnd, freshPrefix, REPO_ROOT, startGateway, tokenFor, uniqueUser } from "./helpers/index.js";

// `npm run chat`, the README's terminal client: lines in, one readable line per event out.

const CLI = "apps/chat-cli/dist/main.js";

/** A loopback port nothing listens on (it was free a moment ago). */
async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as AddressInfo).port;
  server.close();
  await once(server, "close");
  return port;
}

/** Runs the client with `input` on its stdin (then end of input) and returns what it printed. */
async function chat(args: string[], input: string, env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env: { PATH: process.env["PATH"], ...env }, stdio: ["pipe", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  child.stdin.end(input);
  const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
  const [code] = (await once(child, "exit")) as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr };
}

describe("npm run chat", () => {
  it("signs in through a development gateway, sends piped lines, prints the other user's socket events, and exits once its lines are echoed", async () => {
    const prefix = freshPrefix("chatcli");
    dropPrefixAtEnd(prefix);
    // Development mode with its built-in secret: the client signs in through POST /api/dev/token.
    const g = await startGateway(prefix, { NODE_ENV: "development", CHAT_JWT_SECRET: undefined });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const tokenRes = await fetch(`http://127.0.0.1:${g.port}/api/dev/token`, { method: "POST", body: JSON.stringify({ username: bob }) });
    const bobSocket = await connectReady(g.url, `/ws/${alice}/`, ((await tokenRes.json()) as { token: string }).token);

    const r = await chat([alice, bob, "--url", `http://127.0.0.1:${g.port}`], "hello bob\n\nsecond line\n");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^\* online: /);
    expect(lines.filter((l) => / \S+: /.test(l) && l.startsWith("["))).toEqual([
      expect.stringMatching(new RegExp(`^\\[\\d\\d:\\d\\d:\\d\\d\\] ${alice}: hello bob$`)),
      expect.stringMatching(new RegExp(`^\\[\\d\\d:\\d\\d:\\d\\d\\] ${alice}: second line$`)),
    ]);
    // The blank line was not sent; bob's socket got exactly the two messages.
    await bobSocket.until((frames) => frames.some((f) => f.type === "chat_message" && f["message"] === "second line"));
    const received = bobSocket.ofType("chat_message");
    expect(received.map((f) => [(f["from_user"] as { username: string }).username, f["message"]])).toEqual([[alice, "hello bob"], [alice, "second line"]]);
  });

  it("against a production gateway, needs CHAT_TOKEN and says so in one line; with it, it chats", async () => {
    const prefix = freshPrefix("chatcli");
    dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const url = `http://127.0.0.1:${g.port}`;

    const refused = await chat([alice, bob, "--url", url], "hello\n");
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(`the gateway at ${url} has no development sign-in: set CHAT_TOKEN to a token for ${alice} (npm run -s token -- ${alice}, with the gateway's CHAT_JWT_SECRET)\n`);

    const ok = await chat([alice, bob, "--url", url], "hello\n", { CHAT_TOKEN: await tokenFor(alice) });
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(new RegExp(`\\] ${alice}: hello\\n`));
  });

  it("reports an unreachable gateway, a refused token and bad arguments in one line each, exiting non-zero", async () => {
    const closedPort = await freePort();
    const down = await chat(["alice", "bob", "--url", `http://127.0.0.1:${closedPort}`], "");
    expect(down.code).toBe(1);
    expect(down.stderr).toBe(`cannot reach the gateway at http://127.0.0.1:${closedPort} (connect ECONNREFUSED 127.0.0.1:${closedPort}): start it with npm start, or pass --url\n`);

    const prefix = freshPrefix("chatcli");
    dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix);
    const badToken = await chat(["alice", "bob", "--url", `http://127.0.0.1:${g.port}`], "", { CHAT_TOKEN: "not-a-jwt" });
    expect(badToken.code).toBe(1);
    expect(badToken.stderr).toMatch(/^the gateway refused the socket \(401\) token_invalid: .+\n$/);

    const usage = await chat(["alice"], "");
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^usage: npm run -s chat -- /);
  });
});
