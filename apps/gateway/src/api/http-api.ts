import { Transform, type Readable } from "node:stream";
import busboy from "busboy";
import { v7 as uuidv7 } from "uuid";
import {
  canReadUpload,
  decodeConversationCursor,
  encodeConversationCursor,
  insertUpload,
  listConversations,
  listMessages,
  messageById,
  updateMessageMedia,
  uploadById,
  isDatabaseUnavailable,
  type Db,
} from "@chat/db";
import { isValidUsername } from "@chat/protocol";
import type { Logger } from "@chat/log";
import { AuthError, extractToken, type TokenVerifier } from "../auth.js";
import { needsRefresh } from "../media/s3-storage.js";
import { IDENTIFIER_PATTERN, type MediaStorage } from "../media/storage.js";
import { devTokenHandler, type DevTokenSigning } from "./dev-token.js";
import { messageResource } from "./serialize.js";
import { ApiError, errorResponse, json, parseLimit, type ApiRequest, type ApiResponse } from "./types.js";

/** Retry-After of a 503 while Postgres is unreachable: about one reconnect attempt of the pool. */
const DB_RETRY_AFTER_SECONDS = 5;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface UploadPolicy {
  maxBytes: number;
  /** Allowed content types: exact (`application/pdf`) or a family (`image/*`). */
  contentTypes: readonly string[];
}

export interface HttpApiOptions {
  db: Db;
  verifier: TokenVerifier;
  storage: MediaStorage;
  upload: UploadPolicy;
  roomId: (a: string, b: string) => string;
  log: Logger;
  now?: () => Date;
  /** Development mode (config.development): turns on POST /api/dev/token. @default false */
  development?: boolean;
  /** How POST /api/dev/token signs (config.jwtSecret, jwtAudience, jwtIssuer); without it the endpoint stays off. */
  devTokenSigning?: DevTokenSigning;
}

const EXTENSIONS: Record<string, string> = {
  "image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp", "image/heic": "heic",
  "video/mp4": "mp4", "video/webm": "webm", "video/quicktime": "mov", "audio/mpeg": "mp3", "audio/ogg": "ogg",
  "audio/webm": "weba", "audio/wav": "wav", "application/pdf": "pdf", "text/plain": "txt",
};

function allowed(contentType: string, policy: UploadPolicy): boolean {
  return policy.contentTypes.some((t) => (t.endsWith("/*") ? contentType.startsWith(t.slice(0, -1)) : contentType === t));
}

/** Counts bytes through and fails past the limit, so an upload is refused while streaming. */
class ByteLimit extends Transform {
  bytes = 0;
  exceeded = false;
  constructor(private readonly max: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null, data?: Buffer) => void): void {
    this.bytes += chunk.length;
    if (this.bytes > this.max) {
      this.exceeded = true;
      return done(new ApiError(413, "file_too_large", `file is larger than ${this.max} bytes`));
    }
    done(null, chunk);
  }
}

/** The HTTP API of docs/openapi.yaml; handlers are transport-free and throw ApiError for refusals. */
export class HttpApi {
  private readonly now: () => Date;

  /** POST /api/dev/token (no bearer token: run it with handleAnonymous); 404 unless development. */
  readonly devToken: (req: ApiRequest) => Promise<ApiResponse>;

  constructor(private readonly o: HttpApiOptions) {
    this.now = o.now ?? (() => new Date());
    this.devToken = devTokenHandler(o.development ?? false, o.devTokenSigning);
  }

  /** Runs a handler with the caller's username; maps refusals and failures to responses. */
  async handle(req: ApiRequest, handler: (req: ApiRequest, username: string) => Promise<ApiResponse>): Promise<ApiResponse> {
    return this.handleAnonymous(req, async () => handler(req, await this.authenticate(req)));
  }

  /** Runs a handler that needs no token; maps refusals and failures to responses like handle. */
  async handleAnonymous(req: ApiRequest, handler: (req: ApiRequest) => Promise<ApiResponse>): Promise<ApiResponse> {
    try {
      return await handler(req);
    } catch (err) {
      if (err instanceof ApiError) return errorResponse(err);
      if (isDatabaseUnavailable(err)) {
        // Postgres is down or restarting: the client may retry (live chat keeps working meanwhile).
        this.o.log.warn({ err, method: req.method, path: req.path }, "api request failed: database unavailable");
        return { ...json(503, { error: "unavailable", message: "the database is unreachable; retry later" }), headers: { "retry-after": String(DB_RETRY_AFTER_SECONDS) } };
      }
      this.o.log.error({ err, method: req.method, path: req.path }, "api request failed");
      return json(500, { error: "internal", message: "internal error" });
    }
  }

  private async authenticate(req: ApiRequest): Promise<string> {
    try {
      return await this.o.verifier.verify(extractToken(req.query.toString(), req.headers["authorization"] ?? ""));
    } catch (err) {
      if (err instanceof AuthError) throw new ApiError(401, err.code, err.message);
      throw err;
    }
  }

  private other(req: ApiRequest, username: string): string {
    const other = req.params["username"] ?? "";
    if (!isValidUsername(other)) throw new ApiError(400, "bad_username", "invalid username in path");
    if (other === username) throw new ApiError(400, "bad_username", "a conversation needs two different users");
    return other;
  }

  /** GET /api/conversations */
  conversations = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const limit = parseLimit(req.query, 20, 100);
    const rawCursor = req.query.get("cursor");
    const after = rawCursor ? decodeConversationCursor(rawCursor) : undefined;
    if (after === null) throw new ApiError(400, "invalid_cursor", "cursor is not one this API returned");
    const rows = await listConversations(this.o.db, username, { limit: limit + 1, after });
    const page = rows.slice(0, limit);
    return json(200, {
      conversations: page.map((r) => ({
        id: this.o.roomId(username, r.otherUsername),
        name: this.o.roomId(username, r.otherUsername),
        other_user: { username: r.otherUsername },
        last_message: r.lastMessage ? messageResource(r.lastMessage) : null,
        unread_count: r.unreadCount,
      })),
      next_cursor: rows.length > limit ? encodeConversationCursor(page.at(-1)!) : null,
    });
  };

  /** GET /api/rooms/{username}/messages */
  messages = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const other = this.other(req, username);
    const roomId = this.o.roomId(username, other);
    const limit = parseLimit(req.query, 50, 200);
    const before = req.query.get("before");
    const after = req.query.get("after");
    if (before && after) throw new ApiError(400, "invalid_cursor", "give before or after, not both");
    const pivotId = before || after;
    let pivot: bigint | undefined;
    if (pivotId) {
      if (!UUID.test(pivotId)) throw new ApiError(400, "invalid_cursor", `${before ? "before" : "after"} must be a message id`);
      const row = await messageById(this.o.db, pivotId);
      // Another conversation's message is "not found" here: its existence is not ours to reveal.
      if (!row || row.roomId !== roomId) throw new ApiError(404, "cursor_not_found", "no such message in this conversation");
      pivot = row.streamPosition;
    }
    const rows = await listMessages(this.o.db, roomId, {
      limit: limit + 1,
      before: before ? pivot : undefined,
      after: after ? pivot : undefined,
    });
    const page = rows.slice(0, limit);
    return json(200, { messages: page.map(messageResource), next_cursor: rows.length > limit ? page.at(-1)!.id : null });
  };

  private async participantMessage(req: ApiRequest, username: string) {
    const id = req.query.get("message_id") ?? "";
    if (!UUID.test(id)) throw new ApiError(400, "invalid_message_id", "message_id (a message id) is required");
    const row = await messageById(this.o.db, id);
    if (!row || (row.fromUser !== username && row.toUser !== username)) {
      throw new ApiError(404, "message_not_found", "no such message in your conversations");
    }
    return row;
  }

  /** GET /api/rooms/check-url/?message_id= */
  checkUrl = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const row = await this.participantMessage(req, username);
    const expiresAt = row.multimediaUrlExpiration ? new Date(row.multimediaUrlExpiration) : null;
    const refresh = this.o.storage.kind === "s3" && row.fileIdentifier !== null && needsRefresh(expiresAt, this.now());
    return json(200, { refresh_url: refresh });
  };

  /** GET /api/rooms/refresh-url/?message_id= */
  refreshUrl = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const row = await this.participantMessage(req, username);
    if (!row.fileIdentifier || !IDENTIFIER_PATTERN.test(row.fileIdentifier)) {
      throw new ApiError(404, "no_media", "this message has no uploaded file");
    }
    // Only the sender's own upload: a message naming someone else's file (accepted before the gateway
    // checked references) must not get that file's URL written into the history.
    const upload = await uploadById(this.o.db, row.fileIdentifier);
    if (!upload || upload.uploader !== row.fromUser) {
      this.o.log.warn({ messageId: row.id, fileIdentifier: row.fileIdentifier, user: username }, "refresh refused: the file is not the sender's upload");
      throw new ApiError(404, "no_media", "this message has no uploaded file of its sender");
    }
    const { url, expiresAt } = await this.o.storage.locate(row.fileIdentifier);
    await updateMessageMedia(this.o.db, row.id, url, expiresAt?.toISOString() ?? null);
    return json(200, { file_location: url });
  };

  /** GET /chat-media/{identifier} (local storage only) */
  media = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const identifier = req.params["identifier"] ?? "";
    const notFound = new ApiError(404, "not_found", "no such file");
    if (!IDENTIFIER_PATTERN.test(identifier) || !this.o.storage.open) throw notFound;
    const upload = await uploadById(this.o.db, identifier);
    if (!upload || !(await canReadUpload(this.o.db, identifier, upload.uploader, username))) throw notFound;
    const file = await this.o.storage.open(identifier);
    if (!file) throw notFound;
    return { status: 200, stream: { readable: file.readable, size: file.size, contentType: upload.contentType } };
  };

  /** POST /api/rooms/upload (multipart/form-data, file field `myFile`) */
  upload = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const policy = this.o.upload;
    const declared = Number(req.headers["content-length"] ?? "0");
    // Multipart framing adds a little; a body far over the limit is refused before reading it.
    if (declared > policy.maxBytes + 64 * 1024) throw new ApiError(413, "file_too_large", `file is larger than ${policy.maxBytes} bytes`);
    if (!req.body || !(req.headers["content-type"] ?? "").startsWith("multipart/form-data")) {
      throw new ApiError(400, "bad_upload", "send multipart/form-data with the file in field myFile");
    }
    const result = await this.receiveFile(req.body, req.headers, username);
    const { url, expiresAt } = await this.o.storage.locate(result.identifier);
    return json(200, { file_location: url, file_identifier: result.identifier, expiration_time: expiresAt?.toISOString() ?? null });
  };

  private receiveFile(body: Readable, headers: Record<string, string>, username: string): Promise<{ identifier: string }> {
    const policy = this.o.upload;
    return new Promise((resolve, reject) => {
      let parser: busboy.Busboy;
      try {
        parser = busboy({ headers, limits: { files: 1, fileSize: policy.maxBytes + 1, fields: 10, parts: 20 } });
      } catch (cause) {
        return reject(new ApiError(400, "bad_upload", "malformed multipart request", { cause }));
      }
      let saving: Promise<void> | null = null;
      parser.on("file", (field, file, info) => {
        if (field !== "myFile" || saving) return void file.resume();
        const contentType = info.mimeType.toLowerCase();
        if (!allowed(contentType, policy)) {
          file.resume();
          return reject(new ApiError(415, "unsupported_media_type", `content type ${contentType} is not allowed`));
        }
        const identifier = `${uuidv7()}.${EXTENSIONS[contentType] ?? "bin"}`;
        const limit = new ByteLimit(policy.maxBytes);
        // Its errors reach us through storage.save's rejection; this keeps one emitted before the
        // storage attached its own handlers from being an uncaught exception.
        limit.on("error", () => {});
        file.on("limit", () => limit.destroy(new ApiError(413, "file_too_large", `file is larger than ${policy.maxBytes} bytes`)));
        saving = this.o.storage
          .save(identifier, contentType, file.pipe(limit))
          .then((size) => insertUpload(this.o.db, { identifier, uploader: username, contentType, sizeBytes: size, storage: this.o.storage.kind }))
          .then(
            () => resolve({ identifier }),
            async (err: unknown) => {
              await this.o.storage.remove(identifier).catch(() => {});
              file.resume();
              reject(limit.exceeded || err instanceof ApiError ? (err instanceof ApiError ? err : new ApiError(413, "file_too_large", "file too large")) : err);
            },
          );
      });
      parser.on("error", (cause: unknown) => reject(new ApiError(400, "bad_upload", "malformed multipart request", { cause })));
      parser.on("close", () => {
        if (!saving) reject(new ApiError(400, "bad_upload", "no file in field myFile"));
      });
      body.on("error", (cause) => reject(new ApiError(400, "bad_upload", "upload interrupted", { cause })));
      body.pipe(parser);
    });
  }
}
