import { randomUUID } from "node:crypto";
import type { Readable } from "node:stream";
import busboy from "busboy";
import { v7 as uuidv7 } from "uuid";
import {
  canReadUpload,
  decodeConversationCursor,
  groupNames,
  groupRole,
  encodeConversationCursor,
  insertUpload,
  listConversations,
  readPositions,
  messageById,
  reserveUploadBytes,
  settleUploadReservation,
  updateMessageMedia,
  uploadById,
  isDatabaseUnavailable,
  type Db,
  type DbClient,
} from "@chat/db";
import { groupIdOf, isGroupConversation } from "@chat/bus";
import { isValidUsername } from "@chat/protocol";
import type { Logger } from "@chat/log";
import { AuthError, extractToken, type TokenVerifier } from "../auth.js";
import type { MediaUrlSigner } from "../media/signed-url.js";
import { SERVABLE_TYPES } from "../media/sniff.js";
import { contentDisposition, IDENTIFIER_PATTERN, needsRefresh, REFRESH_MARGIN_MS, type MediaStorage } from "../media/storage.js";
import { UploadGuard, UploadTooLargeError } from "../media/upload-guard.js";
import { devTokenHandler, type DevTokenSigning } from "./dev-token.js";
import { GroupsApi, type GroupsApiOptions } from "./groups-api.js";
import { historyPage } from "./history-page.js";
import { messageResource } from "./serialize.js";
import { ApiError, errorResponse, json, parseLimit, type ApiRequest, type ApiResponse } from "./types.js";

/** Retry-After of a 503 while Postgres is unreachable: about one reconnect attempt of the pool. */
const DB_RETRY_AFTER_SECONDS = 5;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface UploadPolicy {
  maxBytes: number;
  /** Allowed content types, matched against the sniffed type: exact (`application/pdf`) or a family (`image/*`). */
  contentTypes: readonly string[];
  /** Bytes one user may upload per hour, across the cluster; 0: no quota. */
  quotaBytesPerHour: number;
}

/** Multipart framing around the file: a body declared larger than the limit plus this is refused unread. */
const MULTIPART_SLACK = 64 * 1024;

/**
 * Headers of every media response: the browser never second-guesses the type, and
 * whatever the file is, it runs no script and loads nothing, even when opened as a document.
 */
const MEDIA_HEADERS = {
  "x-content-type-options": "nosniff",
  "content-security-policy": "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'",
  "cross-origin-resource-policy": "same-origin",
  "referrer-policy": "no-referrer",
} as const;

export interface HttpApiOptions {
  db: Db;
  /** The same database, for what needs a transaction of its own (group changes). */
  client: DbClient;
  /** CHAT_GROUP_MAX_MEMBERS, and how a committed group change is announced. */
  groups: Pick<GroupsApiOptions, "maxMembers" | "announce">;
  verifier: TokenVerifier;
  storage: MediaStorage;
  /** Signs and checks the /chat-media/ URLs of local storage. */
  signer: MediaUrlSigner;
  upload: UploadPolicy;
  roomId: (a: string, b: string) => string;
  /** Who of these users is online now. */
  online: (usernames: readonly string[]) => Promise<Set<string>>;
  log: Logger;
  now?: () => Date;
  /** Development mode (config.development): turns on POST /api/dev/token. @default false */
  development?: boolean;
  /** How POST /api/dev/token signs (config.jwtSecret, jwtAudience, jwtIssuer); without it the endpoint stays off. */
  devTokenSigning?: DevTokenSigning;
}

function allowed(contentType: string, policy: UploadPolicy): boolean {
  return policy.contentTypes.some((t) => (t.endsWith("/*") ? contentType.startsWith(t.slice(0, -1)) : contentType === t));
}

/** The HTTP API of docs/openapi.yaml; handlers are transport-free and throw ApiError for refusals. */
export class HttpApi {
  private readonly now: () => Date;

  /** POST /api/dev/token (no bearer token: run it with handleAnonymous); 404 unless development. */
  readonly devToken: (req: ApiRequest) => Promise<ApiResponse>;
  /** /api/groups and below. */
  readonly groups: GroupsApi;

  constructor(private readonly o: HttpApiOptions) {
    this.now = o.now ?? (() => new Date());
    this.devToken = devTokenHandler(o.development ?? false, o.devTokenSigning);
    this.groups = new GroupsApi({ client: o.client, ...o.groups, log: o.log, now: this.now });
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

  /** The largest request body an upload may declare; the transport answers 413 to more before reading. */
  get maxUploadBodyBytes(): number {
    return this.o.upload.maxBytes + MULTIPART_SLACK;
  }

  private async authenticate(req: ApiRequest, headerOnly = false): Promise<string> {
    try {
      return await this.o.verifier.verify(extractToken(headerOnly ? "" : req.query.toString(), req.headers["authorization"] ?? ""));
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
    const partners = page.filter((r) => !isGroupConversation(r.otherUsername)).map((r) => r.otherUsername);
    const groups = page.flatMap((r) => groupIdOf(r.otherUsername) ?? []);
    const [online, names] = await Promise.all([this.o.online(partners), groupNames(this.o.client, groups)]);
    return json(200, {
      conversations: page.map((r) => {
        const last_message = r.lastMessage ? messageResource(r.lastMessage) : null;
        const id = groupIdOf(r.otherUsername);
        if (id !== null) {
          return { kind: "group", id, name: names.get(id) ?? "", other_user: null, last_message, unread_count: r.unreadCount };
        }
        return {
          kind: "direct",
          id: this.o.roomId(username, r.otherUsername),
          name: this.o.roomId(username, r.otherUsername),
          other_user: { username: r.otherUsername },
          last_message,
          unread_count: r.unreadCount,
          online: online.has(r.otherUsername),
        };
      }),
      next_cursor: rows.length > limit ? encodeConversationCursor(page.at(-1)!) : null,
    });
  };

  /** GET /api/rooms/{username}/messages */
  messages = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const other = this.other(req, username);
    return historyPage(this.o.db, this.o.roomId(username, other), req, readPositions(this.o.db, username, other));
  };

  private async participantMessage(req: ApiRequest, username: string) {
    const id = req.query.get("message_id") ?? "";
    if (!UUID.test(id)) throw new ApiError(400, "invalid_message_id", "message_id (a message id) is required");
    const row = await messageById(this.o.db, id);
    const group = row === undefined ? null : groupIdOf(row.toUser);
    const participant =
      row !== undefined && (group !== null ? (await groupRole(this.o.client, group, username)) !== null : row.fromUser === username || row.toUser === username);
    if (!row || !participant) throw new ApiError(404, "message_not_found", "no such message in your conversations");
    return row;
  }

  /** GET /api/rooms/check-url/?message_id= */
  checkUrl = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const row = await this.participantMessage(req, username);
    const expiresAt = row.multimediaUrlExpiration ? new Date(row.multimediaUrlExpiration) : null;
    const now = this.now();
    let refresh = false;
    if (row.fileIdentifier !== null && IDENTIFIER_PATTERN.test(row.fileIdentifier)) {
      refresh =
        this.o.storage.kind === "s3"
          ? needsRefresh(expiresAt, now)
          : // Local media is only reachable through a signed URL: one that is not (an older message), or expires soon, is renewed.
            !this.o.signer.isFresh(row.multimediaUrl, row.fileIdentifier, new Date(now.getTime() + REFRESH_MARGIN_MS));
    }
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

  /**
   * GET /chat-media/{identifier} (local storage only; run with handleAnonymous). A signed URL
   * (`?expires=&sig=`) is enough by itself; otherwise a participant's bearer token, in the
   * Authorization header only: a token in a URL would end up in histories, logs and shared links.
   */
  media = async (req: ApiRequest): Promise<ApiResponse> => {
    const identifier = req.params["identifier"] ?? "";
    const notFound = new ApiError(404, "not_found", "no such file");
    if (!IDENTIFIER_PATTERN.test(identifier) || !this.o.storage.open) throw notFound;
    if (req.query.has("sig") || req.query.has("expires")) {
      const refused = this.o.signer.check(identifier, req.query);
      if (refused === "url_expired") throw new ApiError(403, refused, "this media URL has expired; get a new one from /api/rooms/refresh-url/");
      if (refused) throw new ApiError(403, refused, "this media URL is not valid");
    } else {
      if (req.query.has("token")) throw new ApiError(401, "token_in_url", "media URLs are signed; send a bearer token in the Authorization header, never in the URL");
      const username = await this.authenticate(req, true);
      const upload = await uploadById(this.o.db, identifier);
      if (!upload || !(await canReadUpload(this.o.db, identifier, upload.uploader, username))) throw notFound;
    }
    const upload = await uploadById(this.o.db, identifier);
    if (!upload) throw notFound;
    const file = await this.o.storage.open(identifier);
    if (!file) throw notFound;
    // A row stored before uploads were sniffed may say anything (image/svg+xml): only a type we sniff
    // is served as itself, anything else as opaque bytes, and only safe rasters inline.
    const type = SERVABLE_TYPES.get(upload.contentType);
    return {
      status: 200,
      headers: { ...MEDIA_HEADERS, "content-disposition": contentDisposition(identifier, type) },
      stream: { readable: file.readable, size: file.size, contentType: type?.type ?? "application/octet-stream" },
    };
  };

  /**
   * POST /api/rooms/upload (multipart/form-data, file field `myFile`). The type is sniffed from the
   * bytes; the upload's size is reserved against the user's hourly quota before anything is stored
   * and settled to what was stored (nothing, when it failed).
   */
  upload = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const policy = this.o.upload;
    const declared = Number(req.headers["content-length"] ?? "0");
    // The transport refuses these before reading (and before authenticating); kept for other callers.
    if (declared > this.maxUploadBodyBytes) throw new ApiError(413, "file_too_large", `file is larger than ${policy.maxBytes} bytes`);
    if (!req.body || !(req.headers["content-type"] ?? "").startsWith("multipart/form-data")) {
      throw new ApiError(400, "bad_upload", "send multipart/form-data with the file in field myFile");
    }
    let reservation: string | null = null;
    if (policy.quotaBytesPerHour > 0) {
      // The file is at most the body, and at most the limit: a body of unknown length reserves the limit.
      const bytes = declared > 0 ? Math.min(declared, policy.maxBytes) : policy.maxBytes;
      reservation = randomUUID();
      const reserved = await reserveUploadBytes(this.o.db, { id: reservation, username, bytes, budget: policy.quotaBytesPerHour, windowSeconds: 3600 });
      if (!reserved) {
        this.o.log.info({ username, bytes, quota: policy.quotaBytesPerHour }, "upload refused: quota exceeded");
        throw new ApiError(429, "upload_quota_exceeded", `upload quota of ${policy.quotaBytesPerHour} bytes per hour exceeded; try again later`);
      }
    }
    let stored = 0;
    try {
      const result = await this.receiveFile(req.body, req.headers, username);
      stored = result.size;
      const { url, expiresAt } = await this.o.storage.locate(result.identifier);
      return json(200, { file_location: url, file_identifier: result.identifier, expiration_time: expiresAt?.toISOString() ?? null });
    } finally {
      if (reservation) {
        await settleUploadReservation(this.o.db, reservation, stored).catch((err: unknown) =>
          this.o.log.warn({ err, username, reservation }, "upload reservation not settled; it lapses after an hour"),
        );
      }
    }
  };

  /**
   * Reads the multipart body, sniffs the file, stores it and records it. Settles exactly once, after
   * everything it opened is released, whatever happens: refusal, a storage failure, or the client going
   * away mid-body (the transport destroys `body` with an error).
   */
  private receiveFile(body: Readable, headers: Record<string, string>, username: string): Promise<{ identifier: string; size: number }> {
    const policy = this.o.upload;
    return new Promise((resolve, reject) => {
      // The client may have gone away while we authenticated or reserved.
      if (body.destroyed) return reject(new ApiError(400, "bad_upload", "upload interrupted"));
      let parser: busboy.Busboy;
      try {
        parser = busboy({ headers, limits: { files: 1, fileSize: policy.maxBytes + 1, fields: 10, parts: 20 } });
      } catch (cause) {
        return reject(new ApiError(400, "bad_upload", "malformed multipart request", { cause }));
      }
      let failure: unknown = null;
      let guard: UploadGuard | null = null;
      let saving: Promise<void> | null = null;
      const fail = (err: unknown) => {
        if (failure) return;
        failure = err;
        body.unpipe(parser);
        // Ends the file stream with an error, so the storage pipeline closes its file.
        parser.destroy();
        guard?.destroy(err instanceof Error ? err : new Error(String(err)));
        // With storage under way, its settlement rejects (after removing the partial file).
        if (!saving) reject(err);
      };
      parser.on("file", (field, file, info) => {
        if (field !== "myFile" || saving || failure) return void file.resume();
        const g = new UploadGuard(policy.maxBytes);
        guard = g;
        // Its errors reach us through `sniffed` or storage.save; this keeps one emitted before the
        // storage attached its own handlers from being an uncaught exception.
        g.on("error", () => {});
        file.on("limit", () => g.destroy(new UploadTooLargeError(policy.maxBytes)));
        file.on("error", (err: Error) => g.destroy(err));
        file.pipe(g);
        let identifier: string | null = null;
        saving = (async () => {
          const type = await g.sniffed;
          if (!type || !allowed(type.type, policy)) {
            this.o.log.info({ username, declared: info.mimeType, sniffed: type?.type ?? null }, "upload refused: type");
            throw new ApiError(415, "unsupported_media_type", type ? `files of type ${type.type} are not allowed` : "this kind of file is not accepted (allowed: common images, video, audio, PDF and plain text; never SVG or HTML)");
          }
          identifier = `${uuidv7()}.${type.ext}`;
          const size = await this.o.storage.save(identifier, type, g);
          await insertUpload(this.o.db, { identifier, uploader: username, contentType: type.type, sizeBytes: size, storage: this.o.storage.kind });
          resolve({ identifier, size });
        })().catch(async (err: unknown) => {
          // Not stored: stop reading it (the rest of the body is discarded), and delete what was written.
          file.unpipe(g);
          file.resume();
          g.destroy();
          if (identifier) {
            const id = identifier;
            await this.o.storage.remove(id).catch((cause: unknown) => this.o.log.warn({ err: cause, identifier: id }, "partial upload not removed; the media sweep will"));
          }
          const reason = failure ?? err;
          if (reason instanceof UploadTooLargeError) return reject(new ApiError(413, reason.code, reason.message, { cause: reason }));
          reject(reason);
        });
      });
      parser.on("error", (cause: unknown) => fail(new ApiError(400, "bad_upload", "malformed multipart request", { cause })));
      parser.on("close", () => {
        if (!saving) fail(new ApiError(400, "bad_upload", "no file in field myFile"));
      });
      body.on("error", (cause) => fail(cause instanceof ApiError ? cause : new ApiError(400, "bad_upload", "upload interrupted", { cause })));
      body.pipe(parser);
    });
  }
}
