import { Ajv, type ValidateFunction, type ErrorObject } from "ajv";
import { ErrorCode } from "./codes.js";
import type { ClientFrame, ChatMessageFrame, ServerEvent } from "./events.js";
import { chatMessageFrameSchema, readMessagesFrameSchema, serverEventSchemas, typingFrameSchema } from "./schemas.js";

// validateSchema off: checking our own fixed schemas against the JSON Schema meta-schema compiled
// the meta-schema at every process start (about 40 ms of CPU); validate.test.ts checks them instead.
const ajv = new Ajv({ allErrors: false, strict: true, allowUnionTypes: true, validateSchema: false });
const validateChatMessage = ajv.compile<ChatMessageFrame>(chatMessageFrameSchema);
/** Frames that carry nothing but their type, by type. */
const typeOnlyFrames = new Map<string, ValidateFunction>([
  ["read_messages", ajv.compile(readMessagesFrameSchema)],
  ["typing", ajv.compile(typingFrameSchema)],
]);
// Compiled on first use: only tests and the load generator check server events, and compiling them
// at import cost every gateway start about 0.1 s of CPU.
let serverValidators: Map<string, ValidateFunction> | null = null;

/** A chat message after parsing: empty strings are gone, text is never undefined. */
export interface AcceptedChatMessage {
  type: "chat_message";
  message: string;
  multimedia_url?: string;
  file_identifier?: string;
  multimedia_url_expiration?: string;
  client_id?: string;
}

/** A parsed frame that carries nothing but its type. */
export type TypeOnlyFrame = { type: "read_messages" } | { type: "typing" };

export type ParsedClientFrame = AcceptedChatMessage | TypeOnlyFrame;

export type ParseResult =
  | { ok: true; frame: ParsedClientFrame }
  | { ok: false; code: ErrorCode; message: string; clientId?: string };

export interface FrameParserOptions {
  /** Longest `chat_message.message`, in characters (Unicode code points). */
  maxMessageLength: number;
}

function describe(errors: ErrorObject[] | null | undefined): string {
  const first = errors?.[0];
  if (!first) return "invalid frame";
  const where = first.instancePath === "" ? "frame" : first.instancePath.slice(1);
  if (first.keyword === "additionalProperties") {
    return `unknown field "${String(first.params["additionalProperty"])}"`;
  }
  return `${where} ${first.message ?? "is invalid"}`;
}

function codePointLength(text: string, stopAfter: number): number {
  // Fast path: UTF-16 length is an upper bound of the code point count.
  if (text.length <= stopAfter) return text.length;
  let n = 0;
  for (const _ of text) if (++n > stopAfter) break;
  return n;
}

const isWellFormed = (text: string): boolean => (text as unknown as { isWellFormed(): boolean }).isWellFormed();

function echoableClientId(value: unknown): string | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const id = (value as Record<string, unknown>)["client_id"];
  // Characters, as the schema's maxLength counts them (not UTF-16 units).
  return typeof id === "string" && id.length > 0 && codePointLength(id, 128) <= 128 ? id : undefined;
}

/** The client_id of a frame, if it is a JSON object with a usable one; for errors about frames that are otherwise refused. */
export function clientIdOf(text: string): string | undefined {
  try {
    return echoableClientId(JSON.parse(text));
  } catch {
    return undefined;
  }
}

/**
 * Builds the parser for client frames on a chat socket. Synchronous, never throws: every bad input
 * maps to an ErrorCode with a human-readable message.
 */
export function createFrameParser(options: FrameParserOptions): (text: string) => ParseResult {
  const { maxMessageLength } = options;
  return (text) => {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return { ok: false, code: ErrorCode.invalid_json, message: "frame is not valid JSON" };
    }
    const clientId = echoableClientId(value);
    const fail = (code: ErrorCode, message: string): ParseResult =>
      clientId === undefined ? { ok: false, code, message } : { ok: false, code, message, clientId };
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      return fail(ErrorCode.invalid_frame, "frame must be a JSON object");
    }
    const type = (value as Record<string, unknown>)["type"];
    const typeOnly = typeof type === "string" ? typeOnlyFrames.get(type) : undefined;
    if (typeOnly) {
      if (!typeOnly(value)) return fail(ErrorCode.invalid_frame, describe(typeOnly.errors));
      return { ok: true, frame: { type: type as TypeOnlyFrame["type"] } };
    }
    if (type !== "chat_message") {
      return fail(
        ErrorCode.unknown_type,
        typeof type === "string" ? `unknown frame type "${type.slice(0, 64)}"` : "frame has no string \"type\"",
      );
    }
    if (!validateChatMessage(value)) return fail(ErrorCode.invalid_frame, describe(validateChatMessage.errors));
    // Postgres text cannot hold NUL, and a lone surrogate would be stored as U+FFFD (and hash like
    // another client_id): refuse both here rather than accept what cannot be stored as sent.
    for (const field of ["message", "multimedia_url", "file_identifier", "client_id"] as const) {
      const text = value[field];
      if (text === undefined) continue;
      if (text.includes("\u0000")) return fail(ErrorCode.invalid_frame, `${field} must not contain NUL characters`);
      if (!isWellFormed(text)) return fail(ErrorCode.invalid_frame, `${field} is not well-formed Unicode (lone surrogate)`);
    }
    const message = value.message ?? "";
    const accepted: AcceptedChatMessage = { type: "chat_message", message };
    if (value.multimedia_url) accepted.multimedia_url = value.multimedia_url;
    if (value.file_identifier) accepted.file_identifier = value.file_identifier;
    if (value.multimedia_url_expiration) {
      const at = Date.parse(value.multimedia_url_expiration);
      if (Number.isNaN(at) || at < 0 || at > 253402300799999) {
        return fail(ErrorCode.invalid_frame, "multimedia_url_expiration is not an ISO 8601 date");
      }
      accepted.multimedia_url_expiration = new Date(at).toISOString();
    }
    if (value.client_id) accepted.client_id = value.client_id;
    if (message === "" && accepted.multimedia_url === undefined) {
      return fail(ErrorCode.empty_message, "a chat_message needs a message or a multimedia_url");
    }
    if (codePointLength(message, maxMessageLength) > maxMessageLength) {
      return fail(ErrorCode.message_too_long, `message is longer than ${maxMessageLength} characters`);
    }
    return { ok: true, frame: accepted };
  };
}

/** Checks a frame the server sent against its schema; for tests and load-generator checks. */
export function validateServerEvent(event: unknown): { ok: true } | { ok: false; message: string } {
  const type = (event as { type?: unknown } | null)?.type;
  serverValidators ??= new Map(Object.entries(serverEventSchemas).map(([type, schema]) => [type, ajv.compile(schema)]));
  const validate = typeof type === "string" ? serverValidators.get(type) : undefined;
  if (!validate) return { ok: false, message: `unknown server event type ${JSON.stringify(type)}` };
  return validate(event) ? { ok: true } : { ok: false, message: `${type}: ${describe(validate.errors)}` };
}

export type { ClientFrame, ServerEvent };
