import { spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { Ajv } from "ajv";
import { chatMessageFrameSchema, createFrameParser, readMessagesFrameSchema, serverEventSchemas, validateServerEvent } from "@chat/protocol";
import { describe, expect, it } from "vitest";
import * as frames from "../../../k6/lib/frames.js";
import { signHs256, tokenClaims } from "../../../k6/lib/jwt.js";
import { arrivalRatePerGateway, share } from "../../../k6/lib/scenarios.js";
import { FIXTURES, K6, REPO_ROOT } from "./paths.js";

const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const typeCheck = (project: string) => spawnSync(process.execPath, [tsc, "-p", project, "--pretty", "false"], { encoding: "utf8" });

describe("k6 scripts type-check against @types/k6", () => {
  it("k6/tsconfig.json (every script and lib file, strict checkJs)", () => {
    const r = typeCheck(join(K6, "tsconfig.json"));
    expect(r.stdout).toBe("");
    expect(r.status).toBe(0);
  });

  it("rejects fixtures/k6-broken (a misspelt k6 API, a wrong argument to a frame builder)", () => {
    const r = typeCheck(join(FIXTURES, "k6-broken/tsconfig.json"));
    expect(r.status).not.toBe(0);
    expect(r.stdout).toMatch(/Property 'sendd' does not exist on type 'WebSocket'/);
    expect(r.stdout).toMatch(/Argument of type 'number' is not assignable to parameter of type 'string'/);
  });

  it("every script builds its frames with k6/lib/frames.js, not by hand", () => {
    for (const file of readdirSync(K6).filter((f) => f.endsWith(".js"))) {
      const text = readFileSync(join(K6, file), "utf8");
      expect(text, file).not.toMatch(/JSON\.stringify|\.send\(/);
    }
    for (const file of readdirSync(join(K6, "lib")).filter((f) => f.endsWith(".js") && f !== "frames.js" && f !== "jwt.js")) {
      const text = readFileSync(join(K6, "lib", file), "utf8");
      expect(text, file).not.toMatch(/JSON\.stringify|type:\s*"(chat_message|read_messages)"/);
    }
  });
});

describe("frames built by k6/lib/frames.js", () => {
  const ajv = new Ajv({ strict: true, allErrors: true, allowUnionTypes: true });
  const validChat = ajv.compile(chatMessageFrameSchema);
  const validRead = ajv.compile(readMessagesFrameSchema);
  // The gateway's own parser, with its default message length limit.
  const parse = createFrameParser({ maxMessageLength: 4096 });
  const largest = frames.clientId(10_000_000, 2 ** 31, 2 ** 31, 9_999_999_999_999);

  it.each([
    ["a short message", frames.chatMessage(frames.messageText(1, 64), frames.clientId(1, 0, 1, Date.now()))],
    ["the largest client_id and a 4096-character text", frames.chatMessage(frames.messageText(2 ** 31, 4096), largest)],
  ])("chat_message: %s matches the protocol schema and the gateway accepts it", (_name, frame) => {
    expect(validChat(frame), JSON.stringify(validChat.errors)).toBe(true);
    const result = parse(frames.encode(frame));
    expect(result).toMatchObject({ ok: true, frame: { type: "chat_message", client_id: frame.client_id } });
  });

  it("read_messages matches the protocol schema and the gateway accepts it", () => {
    expect(validRead(frames.readMessages()), JSON.stringify(validRead.errors)).toBe(true);
    expect(parse(frames.encode(frames.readMessages()))).toEqual({ ok: true, frame: { type: "read_messages" } });
  });

  it("client_id carries the send time and reads back", () => {
    expect(largest.length).toBeLessThanOrEqual(128);
    expect(frames.parseClientId(frames.clientId(3, 4, 5, 1700000000123))).toEqual({ vu: 3, iteration: 4, seq: 5, sentAtMs: 1700000000123 });
    expect(frames.parseClientId("c-42")).toBeNull();
  });

  it("usernames are valid protocol usernames", () => {
    const pattern = new RegExp((serverEventSchemas.user_join.properties as unknown as { user: { pattern: string } }).user.pattern);
    for (const name of [frames.username("m1abc", 1, 0, "a"), frames.username("x".repeat(200), 99999, 2 ** 31, "pool")]) {
      expect(name).toMatch(pattern);
    }
  });

  it("every server event and field the scripts read exists in the protocol's server event schemas", () => {
    for (const [type, fields] of Object.entries(frames.SERVER_FIELDS_READ)) {
      const schema = (serverEventSchemas as Record<string, { properties: Record<string, unknown> }>)[type];
      expect(schema, `server event ${type}`).toBeDefined();
      for (const field of fields) expect(Object.keys(schema!.properties), `${type}.${field}`).toContain(field);
    }
    for (const first of Object.values(frames.FIRST_EVENT)) expect(Object.keys(frames.SERVER_FIELDS_READ)).toContain(first);
  });

  it("reads valid server events the way the scripts expect", () => {
    const sentAt = Date.now() - 5;
    const event = {
      type: "chat_message",
      id: "01934f9c-2a70-7c1e-9d4b-5be2f7a1c0de",
      message: frames.messageText(7, 64),
      multimedia_url: null,
      date_added: new Date().toISOString(),
      from_user: { username: "k6_run_1_0_a" },
      to_user: { username: "k6_run_1_0_b" },
      room: "k6_run_1_0_b",
      client_id: frames.clientId(1, 0, 7, sentAt),
    };
    expect(validateServerEvent(event)).toEqual({ ok: true });
    const parsed = frames.parseServerFrame(JSON.stringify(event))!;
    expect(frames.senderOf(parsed)).toBe("k6_run_1_0_a");
    expect(frames.parseClientId(parsed["client_id"])?.sentAtMs).toBe(sentAt);
    const last = { type: "single_conversation_last_message", last_message: frames.messageText(3, 64), last_datetime: new Date().toISOString() };
    expect(validateServerEvent(last)).toEqual({ ok: true });
    expect(frames.seqOfText(frames.parseServerFrame(JSON.stringify(last))!["last_message"])).toBe(3);
  });

  it("paths are the gateway's endpoints", async () => {
    const { parseWebSocketPath } = (await import(join(REPO_ROOT, "apps/gateway/dist/routes.js"))) as {
      parseWebSocketPath(path: string): { ok: boolean; endpoint?: { kind: string; other?: string } };
    };
    expect(parseWebSocketPath(frames.chatPath("bob"))).toEqual({ ok: true, endpoint: { kind: "chat", other: "bob" } });
    expect(parseWebSocketPath(frames.notificationsPath())).toEqual({ ok: true, endpoint: { kind: "notifications" } });
    expect(parseWebSocketPath(frames.conversationNotificationsPath("bob"))).toEqual({ ok: true, endpoint: { kind: "conversation-notifications", other: "bob" } });
    expect(frames.socketUrl("ws://gw:8000/", "/ws/bob/", "a.b.c")).toBe("ws://gw:8000/ws/bob/?token=a.b.c");
  });
});

describe("tokens signed by k6/lib/jwt.js", () => {
  const sign = (username: string, secret: string, ttl = 600) =>
    signHs256(
      tokenClaims(username, Math.floor(Date.now() / 1000), ttl),
      secret,
      (key, data) => createHmac("sha256", key).update(data).digest("base64url"),
      (text) => Buffer.from(text, "utf8").toString("base64url"),
    );

  it("are accepted by the gateway's TokenVerifier with the same secret, and refused with another", async () => {
    const { TokenVerifier } = (await import(join(REPO_ROOT, "apps/gateway/dist/auth.js"))) as {
      TokenVerifier: new (secret: string) => { verify(token: string): Promise<string> };
    };
    const verifier = new TokenVerifier("k6-secret");
    await expect(verifier.verify(sign("k6_run_1_0_a", "k6-secret"))).resolves.toBe("k6_run_1_0_a");
    await expect(verifier.verify(sign("k6_run_1_0_a", "other-secret"))).rejects.toMatchObject({ code: "token_invalid" });
    await expect(verifier.verify(sign("k6_run_1_0_a", "k6-secret", -10))).rejects.toMatchObject({ code: "token_expired" });
  });

  it("k6/lib/token.js signs with k6's unpadded base64url, the encoding the Node check uses", () => {
    const text = readFileSync(join(K6, "lib/token.js"), "utf8");
    expect(text).toContain('hmac("sha256", secret, data, "base64rawurl")');
    expect(text).toContain('b64encode(text, "rawurl")');
  });
});

describe("scenarios per gateway", () => {
  it("split the rate and VUs over the gateways without losing any", () => {
    const scenarios = arrivalRatePerGateway(["ws://a", "ws://b", "ws://c"], { rate: 10, timeUnit: "1s", duration: "1m", preAllocatedVUs: 50, maxVUs: 100 });
    expect(Object.keys(scenarios)).toEqual(["default_gateway_0", "default_gateway_1", "default_gateway_2"]);
    expect(Object.values(scenarios).reduce((n, s) => n + s.rate, 0)).toBe(10);
    expect(Object.values(scenarios).map((s) => s.env)).toEqual([{ GATEWAY_INDEX: "0" }, { GATEWAY_INDEX: "1" }, { GATEWAY_INDEX: "2" }]);
    expect([0, 1, 2].map((i) => share(7, 3, i))).toEqual([3, 2, 2]);
  });
});
