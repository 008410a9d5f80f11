import { BlockList, isIPv4, isIPv6 } from "node:net";
import { IDENTIFIER_PATTERN } from "../media/storage.js";

/** What a chat_message may point at: its uploads and where they are served from. */
export interface MediaReferences {
  /** Who uploaded the file, or null when there is no such upload. */
  uploaderOf(identifier: string): Promise<string | null>;
  /** Where the file is served from: a path of this gateway (`/chat-media/<id>`, maybe signed) or the object store's URL. */
  locationOf(identifier: string): Promise<string>;
}

/** The gateway's own media path, with an optional query (signed local URLs carry `?expires=…&sig=…`). */
const OWN_MEDIA_PATH = /^\/chat-media\/([^/?#]+)(?:\?[^#]*)?$/;

/** Addresses a link in a message must not point at: this host, its networks, link-local (cloud metadata), and the like. */
const NOT_PUBLIC = new BlockList();
for (const [net, bits] of [
  ["0.0.0.0", 8], ["10.0.0.0", 8], ["100.64.0.0", 10], ["127.0.0.0", 8], ["169.254.0.0", 16], ["172.16.0.0", 12],
  ["192.0.0.0", 24], ["192.168.0.0", 16], ["198.18.0.0", 15], ["224.0.0.0", 4], ["240.0.0.0", 4],
] as const) {
  NOT_PUBLIC.addSubnet(net, bits, "ipv4");
}
for (const [net, bits] of [["::", 128], ["::1", 128], ["fc00::", 7], ["fe80::", 10], ["ff00::", 8], ["64:ff9b::", 96]] as const) {
  NOT_PUBLIC.addSubnet(net, bits, "ipv6");
}

/** A checked multimedia_url: refused (with why), an external link, or one of this gateway's media paths. */
export type MediaUrl =
  /** `byAddress`: well-formed, refused only for where its host is (an upload's own storage may be there). */
  | { kind: "refused"; reason: string; byAddress?: true }
  | { kind: "external" }
  | { kind: "own"; identifier: string };

/**
 * Classifies a client's multimedia_url without I/O. Accepted: absolute http(s) URLs to a public host
 * name or address, without credentials, and this gateway's `/chat-media/<identifier>` paths. Refused:
 * every other scheme (javascript:, data:, file:, blob:…), relative or protocol-relative URLs,
 * loopback, private, link-local and other non-public addresses, and `localhost`.
 */
export function classifyMediaUrl(url: string): MediaUrl {
  if (url.startsWith("/") && !url.startsWith("//")) {
    const m = OWN_MEDIA_PATH.exec(url);
    if (!m || !IDENTIFIER_PATTERN.test(m[1]!)) return { kind: "refused", reason: "a relative multimedia_url must be /chat-media/<file_identifier>" };
    return { kind: "own", identifier: m[1]! };
  }
  // WHATWG parsing also takes "https:host" and leading blanks; only the plain form is accepted.
  if (!/^https?:\/\/[^/]/i.test(url)) return { kind: "refused", reason: "multimedia_url must be an http(s) URL or a /chat-media/ path" };
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return { kind: "refused", reason: "multimedia_url is not a valid URL" };
  }
  if (parsed.username !== "" || parsed.password !== "") return { kind: "refused", reason: "multimedia_url must not carry credentials" };
  // The parser has normalized every IPv4 spelling (2130706433, 0x7f.1) to dotted form.
  const host = parsed.hostname.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  if (host === "localhost" || host.endsWith(".localhost") || host.endsWith(".localhost.")) {
    return { kind: "refused", reason: "multimedia_url must not point at this host", byAddress: true };
  }
  if ((isIPv4(host) && NOT_PUBLIC.check(host, "ipv4")) || (isIPv6(host) && NOT_PUBLIC.check(host, "ipv6"))) {
    return { kind: "refused", reason: "multimedia_url must not point at a loopback, private or link-local address", byAddress: true };
  }
  return { kind: "external" };
}

/** Whether two URLs name the same resource: same origin and path (a query is a signature, not a place). */
export function sameLocation(a: string, b: string): boolean {
  const base = "http://gateway.invalid";
  try {
    const x = new URL(a, base);
    const y = new URL(b, base);
    return x.origin === y.origin && x.pathname === y.pathname;
  } catch {
    return false;
  }
}

/**
 * Why `sender` may not send this media reference, or null when it may. A message may reference
 * only its sender's own upload, and then only at that upload's own location; a `/chat-media/` path
 * is such a reference too.
 */
export async function mediaRefusal(
  media: MediaReferences,
  sender: string,
  url: string | undefined,
  fileIdentifier: string | undefined,
): Promise<string | null> {
  if (url === undefined) return fileIdentifier === undefined ? null : "a file_identifier needs the file's multimedia_url";
  const kind = classifyMediaUrl(url);
  if (fileIdentifier === undefined) {
    if (kind.kind === "refused") return kind.reason;
    if (kind.kind === "external") return null;
    return (await media.uploaderOf(kind.identifier)) === sender ? null : "multimedia_url is not a file you uploaded";
  }
  if (!IDENTIFIER_PATTERN.test(fileIdentifier)) return "file_identifier is not one the upload endpoint returned";
  if ((await media.uploaderOf(fileIdentifier)) !== sender) return "file_identifier is not a file you uploaded";
  // The storage's own location (an object store may sit on a private address: that is its place, not a link).
  if (!sameLocation(url, await media.locationOf(fileIdentifier))) return "multimedia_url is not the location of file_identifier";
  return kind.kind === "refused" && !kind.byAddress ? kind.reason : null;
}
