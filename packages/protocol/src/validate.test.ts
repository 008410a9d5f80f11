import { Ajv } from "ajv";
import { describe, expect, it } from "vitest";
import { ErrorCode } from "./codes.js";
import { chatMessageFrameSchema, readMessagesFrameSchema, serverEventSchemas, typingFrameSchema } from "./schemas.js";
import { isValidUsername } from "./usernames.js";
import { createFrameParser, validateServerEvent } from "./validate.js";

const parse = createFrameParser({ maxMessageLength: 5 });

describe("client frame parser", () => {
  it("accepts a chat message, dropping empty optional strings", () => {
    expect(parse(JSON.stringify({ type: "chat_message", message: "hi", multimedia_url: "", client_id: "" }))).toEqual({
      ok: true,
      frame: { type: "chat_message", message: "hi" },
    });
  });

  it("accepts a media-only message and normalizes its expiration to ISO 8601 UTC", () => {
    const r = parse(JSON.stringify({ type: "chat_message", multimedia_url: "u", multimedia_url_expiration: "2030-01-02T03:04:05+01:00" }));
    expect(r).toEqual({
      ok: true,
      frame: { type: "chat_message", message: "", multimedia_url: "u", multimedia_url_expiration: "2030-01-02T02:04:05.000Z" },
    });
  });

  it("accepts a typing frame, with nothing but its type", () => {
    expect(parse('{"type":"typing"}')).toEqual({ ok: true, frame: { type: "typing" } });
  });

  it.each([
    ["not json", "{", ErrorCode.invalid_json],
    ["an array", "[]", ErrorCode.invalid_frame],
    ["a number", "42", ErrorCode.invalid_frame],
    ["null", "null", ErrorCode.invalid_frame],
    ["no type", "{}", ErrorCode.unknown_type],
    ["an unknown type", '{"type":"nope"}', ErrorCode.unknown_type],
    ["a wrong field type", '{"type":"chat_message","message":1}', ErrorCode.invalid_frame],
    ["an unknown field", '{"type":"chat_message","message":"x","extra":1}', ErrorCode.invalid_frame],
    ["a __proto__ key", '{"type":"chat_message","message":"x","__proto__":{"polluted":true}}', ErrorCode.invalid_frame],
    ["nothing to send", '{"type":"chat_message","message":""}', ErrorCode.empty_message],
    ["too long a text", '{"type":"chat_message","message":"abcdef"}', ErrorCode.message_too_long],
    ["a bad expiration", '{"type":"chat_message","message":"x","multimedia_url_expiration":"soon"}', ErrorCode.invalid_frame],
    ["fields on read_messages", '{"type":"read_messages","x":1}', ErrorCode.invalid_frame],
    ["fields on typing", '{"type":"typing","user":"mallory"}', ErrorCode.invalid_frame],
    ["a NUL character, which Postgres cannot store", '{"type":"chat_message","message":"a\\u0000b"}', ErrorCode.invalid_frame],
    ["a lone surrogate", '{"type":"chat_message","message":"a\\ud800b"}', ErrorCode.invalid_frame],
    ["a lone surrogate in client_id", '{"type":"chat_message","message":"a","client_id":"x\\udc00"}', ErrorCode.invalid_frame],
  ])("refuses %s", (_what, text, code) => {
    const r = parse(text);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.code).toBe(code);
      expect(r.message.length).toBeGreaterThan(0);
    }
    expect(({} as Record<string, unknown>)["polluted"]).toBeUndefined();
  });

  it("counts characters, not UTF-16 units", () => {
    expect(parse(JSON.stringify({ type: "chat_message", message: "😀😀😀😀😀" })).ok).toBe(true);
    expect(parse(JSON.stringify({ type: "chat_message", message: "😀😀😀😀😀😀" })).ok).toBe(false);
  });

  it("echoes the client_id of a refused frame", () => {
    const r = parse(JSON.stringify({ type: "chat_message", message: "", client_id: "c9" }));
    expect(r).toMatchObject({ ok: false, code: ErrorCode.empty_message, clientId: "c9" });
  });
});

describe("usernames", () => {
  it.each(["a", "john.doe+chat@x-y_z", "A".repeat(150)])("accepts %s", (u) => expect(isValidUsername(u)).toBe(true));
  it.each(["", "a b", "x:y", "a|b", "a*", "A".repeat(151), "notifications", "ü"])("refuses %j", (u) =>
    expect(isValidUsername(u)).toBe(false),
  );
});

describe("the schemas themselves", () => {
  // The runtime validators skip this check (validateSchema: false) to start faster.
  it("are valid JSON Schema (draft-07 meta-schema) and compile in strict mode", () => {
    const checker = new Ajv({ strict: true, allowUnionTypes: true });
    for (const schema of [chatMessageFrameSchema, readMessagesFrameSchema, typingFrameSchema, ...Object.values(serverEventSchemas)]) {
      expect(checker.validateSchema(schema), JSON.stringify(checker.errors)).toBe(true);
      expect(() => checker.compile(schema)).not.toThrow();
    }
    expect(checker.validateSchema({ type: "objekt" })).toBe(false);
  });
});

describe("server event schemas", () => {
  it("accepts the events the seed protocol lists and refuses malformed ones", () => {
    expect(validateServerEvent({ type: "user_join", user: "alice" })).toEqual({ ok: true });
    expect(validateServerEvent({ type: "unread_count", unread_count: 3 })).toEqual({ ok: true });
    expect(validateServerEvent({ type: "unread_count", unread_count: -1 }).ok).toBe(false);
    expect(validateServerEvent({ type: "mystery" }).ok).toBe(false);
    expect(validateServerEvent({ type: "typing", user: "alice", room: "bob" })).toEqual({ ok: true });
    expect(validateServerEvent({ type: "typing", user: "alice" }).ok).toBe(false);
    const receipt = { type: "read_receipt", user: "bob", room: "alice", last_read_id: "0192f6c3-1b2a-7c3d-8e4f-0123456789ab", read_at: "2026-12-06T01:02:03.456Z" };
    expect(validateServerEvent(receipt)).toEqual({ ok: true });
    expect(validateServerEvent({ ...receipt, last_read_id: null })).toEqual({ ok: true });
    expect(validateServerEvent({ type: "presence", user: "bob", online: true })).toEqual({ ok: true });
    expect(validateServerEvent({ type: "presence", user: "bob", online: "yes" }).ok).toBe(false);
    expect(validateServerEvent({ ...receipt, last_read_id: "not-an-id" }).ok).toBe(false);
    expect(validateServerEvent({ type: "read_receipt", user: "bob", room: "alice", read_at: receipt.read_at }).ok).toBe(false);
  });
});
