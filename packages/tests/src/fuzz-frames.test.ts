import { readFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { CloseCode, ErrorCode } from "@chat/protocol";
import {
  REPO_ROOT,
  connectReady,
  freshPrefix,
  messagesBetween,
  startGateway,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type Frame,
  type RunningProcess,
  type TestClient,
} from "./helpers/index.js";

// Property-based fuzzing of the chat socket against a real gateway and worker. Every generated frame
// must get exactly one `error` frame (with the code and client_id an independent oracle predicts),
// or, beyond the transport limit of 16 x CHAT_MAX_FRAME_BYTES, the documented dropped connection
// (1006). The gateway never exits, the socket answers afterwards, nothing is persisted, and a valid
// message afterwards has exactly the expected shape (no prototype pollution in the gateway).
//
// Reproduce a run with FUZZ_SEED=<seed printed below>.

/** Large enough for thousands of nesting levels to reach the parser, small enough to fuzz past 16x. */
const MAX_FRAME_BYTES = 32 * 1024;
const HARD_LIMIT = 16 * MAX_FRAME_BYTES;
const NUM_RUNS = Number(process.env["FUZZ_RUNS"] ?? 200);
const SEED = Number(process.env["FUZZ_SEED"] ?? Math.floor(Math.random() * 2 ** 31));

testSql();

// ---------------------------------------------------------------------------------------------
// Generated frames and the oracle
// ---------------------------------------------------------------------------------------------

interface Fuzz {
  what: string;
  binary: boolean;
  data: string | Uint8Array;
  /** For frames whose `type` is a client event: the code the generator knows the frame deserves. */
  expectCode?: ErrorCode;
}

type Expectation = { drop: true } | { drop: false; code: ErrorCode; clientId: string | undefined };

function fuzz(what: string, data: string | Uint8Array, binary = false, expectCode?: ErrorCode): Fuzz {
  const f: Fuzz & { [k: symbol]: unknown } = { what, binary, data, ...(expectCode ? { expectCode } : {}) };
  // Counterexamples can be half a megabyte: report them by description, size and head only.
  f[fc.toStringMethod] = () => {
    const size = typeof data === "string" ? Buffer.byteLength(data) : data.byteLength;
    const head = typeof data === "string" ? data.slice(0, 160) : Buffer.from(data.slice(0, 48)).toString("hex");
    return `${what} (${binary ? "binary" : "text"}, ${size} bytes, expect ${expectCode ?? "derived"}): ${JSON.stringify(head)}`;
  };
  return f;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const codePoints = (s: string) => [...s].length;

/** The client_id a server must echo (docs/protocol.md: a string of 1 to 128 characters). */
function echoable(value: unknown): string | undefined {
  if (!isObject(value) || !Object.prototype.hasOwnProperty.call(value, "client_id")) return undefined;
  const id = value["client_id"];
  return typeof id === "string" && id.length > 0 && codePoints(id) <= 128 ? id : undefined;
}

/** What the protocol says must happen to this frame, derived from docs/protocol.md. */
function expectationOf(f: Fuzz): Expectation {
  const bytes = typeof f.data === "string" ? Buffer.byteLength(f.data) : f.data.byteLength;
  if (bytes > HARD_LIMIT) return { drop: true };
  if (f.binary) return { drop: false, code: ErrorCode.binary_not_supported, clientId: undefined };
  // What the gateway receives: the client encodes the string as UTF-8 (lone surrogates become U+FFFD).
  const wire = Buffer.from(f.data as string, "utf8").toString("utf8");
  let value: unknown;
  let parsed = true;
  try {
    value = JSON.parse(wire);
  } catch {
    parsed = false;
  }
  const clientId = parsed ? echoable(value) : undefined;
  if (bytes > MAX_FRAME_BYTES) return { drop: false, code: ErrorCode.frame_too_large, clientId };
  if (!parsed) return { drop: false, code: ErrorCode.invalid_json, clientId: undefined };
  if (!isObject(value)) return { drop: false, code: ErrorCode.invalid_frame, clientId: undefined };
  const type = value["type"];
  if (type !== "chat_message" && type !== "read_messages") return { drop: false, code: ErrorCode.unknown_type, clientId };
  if (f.expectCode === undefined) throw new Error(`generator bug: no expected code for a client event frame: ${f.what}`);
  return { drop: false, code: f.expectCode, clientId };
}

/** A JSON object written by hand, so values can be raw JSON text (1e309, -0, duplicate keys...). */
function rawObject(entries: [string, string][]): string {
  return `{${entries.map(([k, raw]) => `${JSON.stringify(k)}:${raw}`).join(",")}}`;
}

const HUGE_NUMBERS = [
  "1e309", "-1e309", "-0", "-0.0", "18446744073709551616", "18446744073709551615", "-9223372036854775809",
  "9007199254740993", "1e-400", "123456789012345678901234567890123456789e999", "0.1e-99999", "2e308", "4.9e-324",
];

/** A client_id as clients might send: BMP text with quotes, separators and control characters. */
const clientIdArb = fc.oneof(
  fc.string({ minLength: 1, maxLength: 40 }),
  fc.string({
    minLength: 1,
    maxLength: 128,
    unit: fc.oneof(
      fc.constantFrom("\n", "\r", "\t", '"', "\\", "'", "\u2028", "\u2029", ":", "|", "*", "\u00e9", "\u4e2d"),
      fc.integer({ min: 1, max: 0xfffd }).filter((c) => c < 0xd800 || c > 0xdfff).map((c) => String.fromCharCode(c)),
    ),
  }),
);

/** Raw JSON text of a value whose type is wrong for every string field of chat_message. */
const wrongTypeRaw = fc.oneof(
  fc.integer().map(String),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => JSON.stringify(d)),
  fc.boolean().map(String),
  fc.constant("null"),
  fc.constantFrom(...HUGE_NUMBERS),
  fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 4 }).map((v) => JSON.stringify(v)),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }).map((v) => JSON.stringify(v)),
  fc.constantFrom('{"__proto__":{"polluted":true}}', '["\\u0000"]', "[[[[[[[[[[]]]]]]]]]]", '{"length":99999}'),
);

const CHAT_FIELDS = ["type", "message", "multimedia_url", "file_identifier", "multimedia_url_expiration", "client_id"] as const;

/** A chat_message with one field of the wrong type (or length): invalid_frame (unknown_type for `type`). */
const wrongTypeFrame = fc
  .tuple(fc.constantFrom(...CHAT_FIELDS), wrongTypeRaw, clientIdArb, fc.boolean())
  .chain(([field, raw, cid, withId]) => {
    const tooLong: Record<string, fc.Arbitrary<string>> = {
      type: fc.constantFrom('"CHAT_MESSAGE"', '"chat_message "', '""', '"read_messages\\u0000"', '"chat_message\\n"'),
      multimedia_url: fc.integer({ min: 4097, max: 6000 }).map((n) => JSON.stringify("h".repeat(n))),
      file_identifier: fc.integer({ min: 513, max: 2000 }).map((n) => JSON.stringify("f".repeat(n))),
      multimedia_url_expiration: fc.oneof(
        fc.integer({ min: 65, max: 200 }).map((n) => JSON.stringify("2".repeat(n))),
        fc.constantFrom('"soon"', '"not a date"', '"2026-99-99T99:99:99Z"', '"yesterday at noon"'),
      ),
      client_id: fc.integer({ min: 129, max: 400 }).map((n) => JSON.stringify("c".repeat(n))),
      message: fc.constant(raw),
    };
    return fc.oneof(fc.constant(raw), tooLong[field]!).map((value) => {
      const entries: [string, string][] = [
        ["type", '"chat_message"'],
        ["message", '"hello"'],
      ];
      if (withId) entries.push(["client_id", JSON.stringify(cid)]);
      const i = entries.findIndex(([k]) => k === field);
      if (i >= 0) entries[i] = [field, value];
      else entries.push([field, value]);
      return fuzz(`chat_message with a wrong ${field}`, rawObject(entries), false, field === "type" ? undefined : ErrorCode.invalid_frame);
    });
  });

/** Unknown fields on client events, including prototype-ish keys. */
const extraFieldFrame = fc
  .tuple(
    fc.constantFrom("chat_message", "read_messages"),
    fc.oneof(fc.constantFrom("__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "__defineGetter__", "valueOf", "room", "id", "from_user"), fc.string({ minLength: 1, maxLength: 12 })),
    fc.jsonValue({ maxDepth: 2 }),
    fc.option(clientIdArb, { nil: undefined }),
  )
  .filter(([, key]) => !(CHAT_FIELDS as readonly string[]).includes(key))
  .map(([type, key, value, cid]) => {
    const entries: [string, string][] = [["type", JSON.stringify(type)]];
    if (type === "chat_message") entries.push(["message", '"hi"']);
    if (cid !== undefined) entries.push(["client_id", JSON.stringify(cid)]);
    entries.push([key, JSON.stringify(value) ?? "null"]);
    return fuzz(`${type} with an unknown field ${JSON.stringify(key)}`, rawObject(entries), false, ErrorCode.invalid_frame);
  });

/** Objects that try to pollute Object.prototype through __proto__ / constructor.prototype. */
const pollutionFrame = fc
  .tuple(
    fc.constantFrom(["__proto__"], ["constructor", "prototype"], ["prototype"], ["__proto__", "__proto__"], ["constructor", "__proto__"]),
    fc.constantFrom(undefined, "chat_message", "read_messages", "admin"),
    fc.boolean(),
    fc.option(clientIdArb, { nil: undefined }),
  )
  .map(([path, type, nestInMessage, cid]) => {
    const payload = JSON.stringify({ client_id: "polluted", multimedia_url: "https://polluted.example/x", message: "polluted", isAdmin: true, type: "chat_message" });
    const polluting = path.reduceRight((inner, key) => rawObject([[key, inner]]), payload);
    const entries: [string, string][] = [];
    if (type !== undefined) entries.push(["type", JSON.stringify(type)]);
    if (nestInMessage) entries.push(["message", polluting]);
    else {
      if (type === "chat_message") entries.push(["message", '"hi"']);
      entries.push([path[0]!, polluting.slice(polluting.indexOf(":") + 1, -1)]);
    }
    if (cid !== undefined) entries.push(["client_id", JSON.stringify(cid)]);
    return fuzz(`pollution via ${path.join(".")}${nestInMessage ? " in message" : ""}`, rawObject(entries), false, ErrorCode.invalid_frame);
  });

/** Huge and odd numbers: as the frame, as the type, in every field. */
const hugeNumberFrame = fc.tuple(fc.constantFrom(...HUGE_NUMBERS), fc.constantFrom("frame", ...CHAT_FIELDS)).map(([n, where]) => {
  if (where === "frame") return fuzz("a huge number as the frame", n);
  const entries: [string, string][] = [["type", '"chat_message"'], ["message", '"hi"'], ["client_id", '"num-1"']];
  const i = entries.findIndex(([k]) => k === where);
  if (i >= 0) entries[i] = [where, n];
  else entries.push([where, n]);
  return fuzz(`a huge number as ${where}`, rawObject(entries), false, where === "type" ? undefined : ErrorCode.invalid_frame);
});

/** Thousands of nesting levels, balanced or not, alone or inside a chat_message field. */
const deepFrame = fc
  .tuple(fc.constantFrom("array", "object", "mixed", "unbalanced", "in-message", "in-client_id"), fc.integer({ min: 1000, max: 60_000 }))
  .map(([shape, depth]) => {
    const arrays = (n: number) => "[".repeat(n) + "]".repeat(n);
    const objects = (n: number) => '{"a":'.repeat(n) + "1" + "}".repeat(n);
    const mixed = (n: number) => '[{"a":'.repeat(n) + "null" + "}]".repeat(n);
    switch (shape) {
      case "array":
        return fuzz(`${depth} nested arrays`, arrays(depth));
      case "object":
        return fuzz(`${Math.floor(depth / 3)} nested objects`, objects(Math.floor(depth / 3)));
      case "mixed":
        return fuzz(`${Math.floor(depth / 4)} nested arrays of objects`, mixed(Math.floor(depth / 4)));
      case "unbalanced":
        return fuzz(`${depth} unclosed arrays`, "[".repeat(depth));
      case "in-message":
        return fuzz(`${depth} nested arrays as message`, `{"type":"chat_message","message":${arrays(depth)},"client_id":"deep-m"}`, false, ErrorCode.invalid_frame);
      default:
        return fuzz(`${Math.floor(depth / 3)} nested objects before a client_id`, `{"type":"chat_message","x":${objects(Math.floor(depth / 3))},"client_id":"deep-c"}`, false, ErrorCode.invalid_frame);
    }
  });

/** Arbitrary JSON values (never a valid client event: those get no error). */
const jsonFrame = fc
  .jsonValue({ maxDepth: 6 })
  .filter((v) => !(isObject(v) && (v["type"] === "chat_message" || v["type"] === "read_messages")))
  .map((v) => fuzz("an arbitrary JSON value", JSON.stringify(v)));

/** Random text: arbitrary code points (incl. lone surrogates) and random bytes decoded as UTF-8. */
const textFrame = fc.oneof(
  fc.string({ unit: "binary", maxLength: 400 }).map((s) => fuzz("random text", s)),
  fc.uint8Array({ maxLength: 2000 }).map((b) => fuzz("random bytes as (valid UTF-8) text", new TextDecoder().decode(b))),
  fc
    .string({ unit: "binary", maxLength: 60 })
    .map((s) => `{"type":"chat_message"${s}`)
    .filter((s) => {
      try {
        JSON.parse(s);
        return false;
      } catch {
        return true;
      }
    })
    .map((s) => fuzz("a client event type followed by junk", s)),
);

/** Random bytes in binary frames, including a valid message in binary. */
const binaryFrame = fc.oneof(
  fc.uint8Array({ maxLength: 4000 }).map((b) => fuzz("random bytes as binary", b, true)),
  clientIdArb.map((cid) => fuzz("a valid chat_message in a binary frame", new TextEncoder().encode(JSON.stringify({ type: "chat_message", message: "bin", client_id: cid })), true)),
  fc.integer({ min: MAX_FRAME_BYTES + 1, max: HARD_LIMIT }).map((n) => fuzz("a large binary frame", new Uint8Array(n).fill(0x7b), true)),
);

/** Frames over CHAT_MAX_FRAME_BYTES but within the transport limit: frame_too_large. */
const oversizeFrame = fc.oneof(
  fc.tuple(fc.integer({ min: MAX_FRAME_BYTES + 1, max: HARD_LIMIT - 200 }), fc.option(clientIdArb, { nil: undefined })).map(([n, cid]) =>
    fuzz(`a ${n}-byte chat_message`, JSON.stringify({ type: "chat_message", message: "x".repeat(n), ...(cid === undefined ? {} : { client_id: cid }) })),
  ),
  fc.integer({ min: MAX_FRAME_BYTES + 1, max: HARD_LIMIT }).map((n) => fuzz(`${n} bytes of non-JSON`, "z".repeat(n))),
  fc.integer({ min: Math.ceil((MAX_FRAME_BYTES + 1) / 3), max: Math.floor(HARD_LIMIT / 3) - 10 }).map((n) =>
    fuzz(`a chat_message of ${n} three-byte characters`, JSON.stringify({ type: "chat_message", message: "\u4e2d".repeat(n), client_id: "wide" })),
  ),
);

/** Frames over 16 x CHAT_MAX_FRAME_BYTES: the connection is dropped (1006). */
const beyondTransportFrame = fc.oneof(
  fc.integer({ min: HARD_LIMIT + 1, max: HARD_LIMIT + 64 * 1024 }).map((n) => fuzz(`a ${n}-byte text frame`, JSON.stringify({ type: "chat_message", message: "h".repeat(n), client_id: "huge" }))),
  fc.integer({ min: HARD_LIMIT + 1, max: HARD_LIMIT + 64 * 1024 }).map((n) => fuzz(`a ${n}-byte binary frame`, new Uint8Array(n), true)),
);

const anyFrame = fc.oneof(
  { weight: 3, arbitrary: textFrame },
  { weight: 2, arbitrary: binaryFrame },
  { weight: 3, arbitrary: jsonFrame },
  { weight: 2, arbitrary: deepFrame },
  { weight: 2, arbitrary: hugeNumberFrame },
  { weight: 2, arbitrary: pollutionFrame },
  { weight: 2, arbitrary: extraFieldFrame },
  { weight: 4, arbitrary: wrongTypeFrame },
  { weight: 2, arbitrary: oversizeFrame },
  { weight: 1, arbitrary: beyondTransportFrame },
);

// ---------------------------------------------------------------------------------------------
// The cluster under test
// ---------------------------------------------------------------------------------------------

const PRESENCE = new Set(["online_user_list", "user_join", "user_leave"]);
const CHAT_MESSAGE_KEYS = ["date_added", "from_user", "id", "message", "multimedia_url", "room", "to_user", "type"];

function sendFuzz(c: TestClient, f: Fuzz): void {
  if (f.binary) c.ws.send(f.data, { binary: true });
  else c.ws.send(f.data as string);
}

function expectAlive(...processes: RunningProcess[]): void {
  for (const p of processes) {
    expect(p.child.exitCode, "process exit code").toBeNull();
    expect(p.child.signalCode, "process exit signal").toBeNull();
  }
}

/** Takes frames up to (and without) the sentinel's error; presence events are left out. */
async function framesUntilSentinel(c: TestClient, sentinel: string): Promise<Frame[]> {
  const got: Frame[] = [];
  for (;;) {
    const f = await c.next(undefined, 15000);
    if (f.type === "error" && f["client_id"] === sentinel) {
      expect(f["code"]).toBe(ErrorCode.unknown_type);
      return got;
    }
    if (!PRESENCE.has(f.type)) got.push(f);
  }
}

/** Sends a valid message without client_id and checks the exact shape of both users' copies. */
async function probe(a: TestClient, b: TestClient, alice: string, bob: string, text: string) {
  a.send({ type: "chat_message", message: text });
  const own = await a.next("chat_message", 10000);
  const theirs = await b.next("chat_message", 10000);
  for (const m of [own, theirs]) {
    expect(Object.keys(m).sort(), "a chat_message has exactly the documented keys (no client_id, nothing inherited)").toEqual(CHAT_MESSAGE_KEYS);
    expect(m).toEqual({
      type: "chat_message",
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      message: text,
      multimedia_url: null,
      date_added: expect.any(String),
      from_user: { username: alice },
      to_user: { username: bob },
      room: bob,
    });
    expect(Object.keys(m["from_user"] as object)).toEqual(["username"]);
    expect(Object.keys(m["to_user"] as object)).toEqual(["username"]);
  }
  expect(theirs).toEqual(own);
  return own;
}

async function cluster(label: string) {
  const prefix = freshPrefix(label);
  const [g, w] = await Promise.all([startGateway(prefix, { CHAT_MAX_FRAME_BYTES: String(MAX_FRAME_BYTES) }), startWorker(prefix)]);
  const alice = uniqueUser("alice");
  const bob = uniqueUser("bob");
  const aliceToken = await tokenFor(alice);
  const b = await connectReady(g.url, `/ws/${alice}/`, await tokenFor(bob));
  const a = await connectReady(g.url, `/ws/${bob}/`, aliceToken);
  return { g, w, alice, bob, aliceToken, a, b };
}

describe("frame fuzzing", () => {
  it(`answers ${NUM_RUNS} generated hostile frames with exactly one error each (or the documented drop), persisting nothing`, async () => {
    console.log(`fuzz-frames: seed ${SEED}, ${NUM_RUNS} runs (reproduce with FUZZ_SEED=${SEED})`);
    const { g, w, alice, bob, aliceToken, a: first, b } = await cluster("fuzz");
    let a = first;
    const baseline = await probe(a, b, alice, bob, "before the fuzz");

    let run = 0;
    let drops = 0;
    const codes = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(anyFrame, async (f) => {
        run++;
        const expected = expectationOf(f);
        sendFuzz(a, f);
        if (expected.drop) {
          const code = await Promise.race([a.closed, new Promise((r) => setTimeout(() => r("still open"), 10000))]);
          expect(code, "a frame over 16x CHAT_MAX_FRAME_BYTES drops the connection").toBe(CloseCode.dropped);
          expect(a.ofType("chat_message").filter((m) => m["client_id"] === "huge")).toEqual([]);
          expectAlive(g);
          drops++;
          try {
            a = await connectReady(g.url, `/ws/${bob}/`, aliceToken);
          } catch (err) {
            throw new Error(`reconnect after a dropped connection failed: ${String(err)}; gateway logs: ${JSON.stringify(g.logs.slice(-10))}`);
          }
          return;
        }
        const sentinel = `sentinel-${run}-${SEED}`;
        a.send({ type: "fuzz-sentinel", client_id: sentinel });
        const answer = await framesUntilSentinel(a, sentinel);
        expect(answer, "exactly one frame answers the fuzzed frame").toHaveLength(1);
        const err = answer[0]!;
        expect(err).toEqual({
          type: "error",
          code: expected.code,
          message: expect.any(String),
          ...(expected.clientId === undefined ? {} : { client_id: expected.clientId }),
        });
        expect(Object.keys(err).sort()).toEqual(expected.clientId === undefined ? ["code", "message", "type"] : ["client_id", "code", "message", "type"]);
        expect(String(err["message"]).length).toBeGreaterThan(0);
        codes.set(expected.code, (codes.get(expected.code) ?? 0) + 1);
        expect(a.closeCode, "the socket stays open after an error").toBeNull();
        expectAlive(g);
      }),
      { numRuns: NUM_RUNS, seed: SEED, endOnFailure: true },
    );
    console.log(`fuzz-frames: ${run} frames, ${drops} dropped connections, errors by code ${JSON.stringify(Object.fromEntries(codes))}`);
    // The mix really exercised the error paths, not just one of them.
    expect(codes.size).toBeGreaterThanOrEqual(5);

    // Still usable, and still producing messages of exactly the documented shape.
    const after = await probe(a, b, alice, bob, "after the fuzz");
    expect(a.schemaViolations).toEqual([]);
    expect(b.schemaViolations).toEqual([]);
    // Bob, in the same conversation, saw none of it: no error, no message but the two probes.
    expect(b.ofType("error")).toEqual([]);
    expect(b.ofType("chat_message").map((m) => m["id"])).toEqual([baseline["id"], after["id"]]);
    expect(b.closeCode).toBeNull();
    // Nothing of the fuzz was persisted: only the two probes.
    await waitFor(async () => {
      const rows = await messagesBetween(alice, bob);
      expect(rows.map((r) => [r.id, r.content, r.client_id])).toEqual([
        [baseline["id"], "before the fuzz", null],
        [after["id"], "after the fuzz", null],
      ]);
    }, 15000);
    expectAlive(g, w);
    expect(g.logs.filter((l) => l["level"] === "error" || l["level"] === "fatal"), "no error or fatal gateway logs").toEqual([]);
  }, 120_000);

  it("answers a text frame that is not valid UTF-8 with invalid_json, or closes it as docs/protocol.md documents", async () => {
    const { g, alice, bob, aliceToken, b } = await cluster("fuzz-utf8");
    const doc = readFileSync(join(REPO_ROOT, "docs/protocol.md"), "utf8");
    const closeCodes = doc.slice(doc.indexOf("### Close codes"), doc.indexOf("## Conversation notifications"));
    const invalid: [string, number[]][] = [
      ["a lone continuation byte", [0x7b, 0x80, 0x7d]],
      ["0xff", [0x22, 0xff, 0x22]],
      ["an overlong encoding of '/'", [0xc0, 0xaf]],
      ["an encoded surrogate", [0x22, 0xed, 0xa0, 0x80, 0x22]],
      ["a truncated sequence", [0x7b, 0x22, 0xe4, 0xb8]],
    ];
    for (const [what, bytes] of invalid) {
      const a = await connectReady(g.url, `/ws/${bob}/`, aliceToken);
      a.ws.send(Buffer.from(bytes), { binary: false });
      a.send({ type: "fuzz-sentinel", client_id: "after-utf8" });
      const outcome = await a.next("error", 10000).then(
        (e) => ({ error: e }),
        () => a.closed.then((code) => ({ closed: code })),
      );
      if ("error" in outcome) {
        expect(outcome.error, what).toMatchObject({ type: "error", code: ErrorCode.invalid_json });
        expect(a.closeCode, `${what}: the socket stays open`).toBeNull();
      } else {
        // A close is acceptable only if it is the documented one.
        expect([CloseCode.dropped, 1007], `${what}: close code`).toContain(outcome.closed);
        expect(closeCodes, `${what} closed the socket with ${outcome.closed}: docs/protocol.md's close codes must say that a text frame that is not UTF-8 closes it`).toMatch(/UTF-8/);
      }
      expectAlive(g);
    }
    await probe(await connectReady(g.url, `/ws/${bob}/`, aliceToken), b, alice, bob, "utf8 probe");
  }, 60_000);
});

describe("schema-valid messages with characters a database may not take", () => {
  // Accepted means stored (docs/protocol.md): once the sender has its chat_message echo, the
  // message is persisted, with the text it was echoed with, and it never blocks anyone else's.
  it.each([
    ["a NUL character in the text", { message: "nul\u0000inside" }],
    ["a NUL character in the client_id", { message: "nul id", client_id: "id\u0000nul" }],
    ["a lone surrogate in the text", { message: "lone \ud800 surrogate" }],
  ])("%s: refused with an error, or persisted exactly as echoed without blocking later messages", async (_what, fields) => {
    const { g, w, alice, bob, a, b } = await cluster("fuzz-db-chars");
    a.send({ type: "chat_message", client_id: "odd-1", ...fields });
    let f = await a.next(undefined, 10000);
    while (PRESENCE.has(f.type)) f = await a.next(undefined, 10000);
    // Either outcome is allowed, but it must be consistent with what gets stored.
    const accepted = f.type === "chat_message";
    if (!accepted) expect(f).toMatchObject({ type: "error", code: ErrorCode.invalid_frame });
    else expect(await b.next("chat_message")).toEqual(f);
    // A normal message afterwards, from another conversation of the same deployment too.
    a.send({ type: "chat_message", message: "after", client_id: "odd-2" });
    const after = await a.next("chat_message");
    const carol = uniqueUser("carol");
    const dave = uniqueUser("dave");
    const c = await connectReady(g.url, `/ws/${dave}/`, await tokenFor(carol));
    c.send({ type: "chat_message", message: "bystander", client_id: "odd-3" });
    await c.next("chat_message");
    // Another user's message, sent after it, is persisted (a poison message must not stall the stream)...
    await waitFor(async () => expect((await messagesBetween(carol, dave)).map((r) => r.content), "a bystander's message is persisted").toEqual(["bystander"]), 15000);
    // ...and this conversation holds exactly what was echoed.
    await waitFor(async () => {
      const rows = await messagesBetween(alice, bob);
      const expected = accepted ? [[f["id"], f["message"], f["client_id"]]] : [];
      expect(rows.map((r) => [r.id, r.content, r.client_id]), "Postgres holds exactly the text and client_id that were echoed").toEqual([...expected, [after["id"], "after", "odd-2"]]);
    }, 5000);
    expectAlive(g, w);
  }, 45_000);
});
