import { v7 as uuidv7 } from "uuid";
import {
  GroupRefusedError,
  addGroupMember,
  createGroup,
  groupConversation,
  groupFor,
  groupReadPositions,
  groupRole,
  removeGroupMember,
  renameGroup,
  type ChangeContext,
  type DbClient,
  type GroupChange,
} from "@chat/db";
import { isValidUsername } from "@chat/protocol";
import type { Logger } from "@chat/log";
import { GROUP_ID_PATTERN } from "../routes.js";
import { historyPage } from "./history-page.js";
import { groupResource } from "./serialize.js";
import { ApiError, json, readBody, type ApiRequest, type ApiResponse } from "./types.js";

/** The largest JSON body a group request may have: a name and up to 10,000 usernames of 150 characters. */
const MAX_JSON_BODY_BYTES = 2 * 1024 * 1024;
/** Longest group name, in characters. */
const MAX_NAME_LENGTH = 100;

export interface GroupsApiOptions {
  client: DbClient;
  /** CHAT_GROUP_MAX_MEMBERS. */
  maxMembers: number;
  /** Tells the group's sockets (and a removed member's) about a committed change; runs while its locks are held. */
  announce: (change: GroupChange) => Promise<void>;
  log: Logger;
  now?: () => Date;
}

/** A JSON object body of at most MAX_JSON_BODY_BYTES; a clear 4xx for anything else. */
async function readJsonObject(req: ApiRequest): Promise<Record<string, unknown>> {
  let value: unknown;
  try {
    value = JSON.parse(await readBody(req.body, MAX_JSON_BODY_BYTES, Number(req.headers["content-length"] ?? "0")));
  } catch (err) {
    if (err instanceof ApiError) throw err;
    throw new ApiError(400, "bad_body", "the body is not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new ApiError(400, "bad_body", "send a JSON object");
  return value as Record<string, unknown>;
}

/** A group name: 1 to 100 characters once trimmed, no control characters. */
function parseName(value: unknown): string {
  if (typeof value !== "string") throw new ApiError(400, "bad_name", "name must be a string");
  const name = value.trim();
  // eslint-disable-next-line no-control-regex
  if (name.length === 0 || [...name].length > MAX_NAME_LENGTH || /[\u0000-\u001f\u007f]/.test(name)) {
    throw new ApiError(400, "bad_name", `name must have 1 to ${MAX_NAME_LENGTH} characters and no control characters`);
  }
  return name;
}

function parseUsername(value: unknown, field: string): string {
  if (!isValidUsername(value)) throw new ApiError(400, "bad_username", `${field} must be a username`);
  return value;
}

/** The group routes of docs/openapi.yaml. Everything about a group is for its members only: anyone else gets 404. */
export class GroupsApi {
  private readonly now: () => Date;

  constructor(private readonly o: GroupsApiOptions) {
    this.now = o.now ?? (() => new Date());
  }

  private groupId(req: ApiRequest): string {
    const id = req.params["id"] ?? "";
    // Not a group id is "no such group" like any other: the path's shape tells nothing either.
    if (!GROUP_ID_PATTERN.test(id)) throw new ApiError(404, "not_found", "no such group");
    return id;
  }

  private context(groupId: string, actor: string): ChangeContext {
    return { client: this.o.client, groupId, actor, eventId: uuidv7(), now: this.now(), maxMembers: this.o.maxMembers, afterCommit: this.announce };
  }

  /** A change is committed whatever its announcement does: a failed one is logged, and clients catch up from the history. */
  private readonly announce = async (change: GroupChange): Promise<void> => {
    try {
      await this.o.announce(change);
    } catch (err) {
      this.o.log.warn({ err, group: change.group.id, event: change.event?.event.kind }, "group change committed but not announced");
    }
  };

  /** Runs a membership change, mapping its refusals to API errors. */
  private async run(change: () => Promise<GroupChange>): Promise<GroupChange> {
    try {
      return await change();
    } catch (err) {
      if (!(err instanceof GroupRefusedError)) throw err;
      const status = { not_found: 404, not_a_member: 404, forbidden: 403, group_full: 409 }[err.code];
      throw new ApiError(status, err.code, err.message);
    }
  }

  /** POST /api/groups */
  create = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const body = await readJsonObject(req);
    const name = parseName(body["name"]);
    const raw = body["members"] ?? [];
    if (!Array.isArray(raw)) throw new ApiError(400, "bad_members", "members must be an array of usernames");
    if (raw.length > this.o.maxMembers) throw new ApiError(409, "group_full", `a group has at most ${this.o.maxMembers} members`);
    const members = raw.map((m, i) => parseUsername(m, `members[${i}]`));
    const groupId = uuidv7();
    const change = await this.run(() => createGroup(this.context(groupId, username), name, members));
    this.o.log.info({ group: groupId, user: username, members: change.group.members.length }, "group created");
    return json(201, groupResource(change.group));
  };

  /** GET /api/groups/{id} */
  get = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const group = await groupFor(this.o.client, this.groupId(req), username);
    if (!group) throw new ApiError(404, "not_found", "no such group");
    return json(200, groupResource(group));
  };

  /** PATCH /api/groups/{id} (admins) */
  rename = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const groupId = this.groupId(req);
    // Members only, before the body is read: a stranger learns nothing from a 400 either.
    if ((await groupRole(this.o.client, groupId, username)) === null) throw new ApiError(404, "not_found", "no such group");
    const name = parseName((await readJsonObject(req))["name"]);
    const change = await this.run(() => renameGroup(this.context(groupId, username), name));
    return json(200, groupResource(change.group));
  };

  /** POST /api/groups/{id}/members (admins) */
  addMember = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const groupId = this.groupId(req);
    if ((await groupRole(this.o.client, groupId, username)) === null) throw new ApiError(404, "not_found", "no such group");
    const member = parseUsername((await readJsonObject(req))["username"], "username");
    const change = await this.run(() => addGroupMember(this.context(groupId, username), member));
    if (change.event) this.o.log.info({ group: groupId, user: username, added: member }, "group member added");
    return json(200, groupResource(change.group));
  };

  /** DELETE /api/groups/{id}/members/{username} (admins, or anyone for themselves) */
  removeMember = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const groupId = this.groupId(req);
    const member = req.params["username"] ?? "";
    if (!isValidUsername(member)) {
      if ((await groupRole(this.o.client, groupId, username)) === null) throw new ApiError(404, "not_found", "no such group");
      throw new ApiError(400, "bad_username", "invalid username in path");
    }
    const change = await this.run(() => removeGroupMember(this.context(groupId, username), member));
    this.o.log.info({ group: groupId, user: username, removed: member }, member === username ? "group member left" : "group member removed");
    return json(200, groupResource(change.group));
  };

  /** GET /api/groups/{id}/messages: pages exactly like /api/rooms/{username}/messages. */
  messages = async (req: ApiRequest, username: string): Promise<ApiResponse> => {
    const groupId = this.groupId(req);
    if ((await groupRole(this.o.client, groupId, username)) === null) throw new ApiError(404, "not_found", "no such group");
    const conversation = groupConversation(groupId);
    return historyPage(this.o.client.db, conversation, req, groupReadPositions(this.o.client.db, conversation));
  };
}
