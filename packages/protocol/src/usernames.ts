/** Letters, digits and `@.+-_`, 1 to 150 characters: the usernames of the system this protocol comes from. */
export const USERNAME_PATTERN = /^[A-Za-z0-9@.+\-_]{1,150}$/;

/**
 * Names of endpoints, so never usernames: `notifications` (`/ws/notifications/`) and `groups` (the
 * group conversations' `/ws/groups/{id}/` and `/api/groups`).
 */
export const RESERVED_USERNAMES: ReadonlySet<string> = new Set(["notifications", "groups"]);

export function isValidUsername(value: unknown): value is string {
  return typeof value === "string" && USERNAME_PATTERN.test(value) && !RESERVED_USERNAMES.has(value);
}
