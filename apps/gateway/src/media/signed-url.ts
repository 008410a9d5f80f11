import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Short-lived signed URLs of local media (`/chat-media/<identifier>?expires=<unix s>&sig=<HMAC>`), the
 * local counterpart of S3's presigned URLs: a link a user opens or shares carries no bearer token,
 * only the right to fetch one file until it expires. Every gateway derives the same key
 * from the token secret, separated from token signing by its own label.
 */
export class MediaUrlSigner {
  private readonly key: Buffer;

  constructor(
    secret: string,
    /** Lifetime of a signed URL, in seconds. */
    readonly ttlSeconds: number,
    private readonly now: () => Date = () => new Date(),
  ) {
    this.key = createHmac("sha256", secret).update("chat-cluster media URL v1").digest();
  }

  private signature(identifier: string, expires: number): Buffer {
    return createHmac("sha256", this.key).update(`${identifier}\n${expires}`).digest();
  }

  /** A URL for `identifier` that works until the returned time. */
  sign(identifier: string): { url: string; expiresAt: Date } {
    const expires = Math.floor(this.now().getTime() / 1000) + this.ttlSeconds;
    const sig = this.signature(identifier, expires).toString("base64url");
    return { url: `/chat-media/${identifier}?expires=${expires}&sig=${sig}`, expiresAt: new Date(expires * 1000) };
  }

  /** Checks the `expires` and `sig` of a request for `identifier`: why it is refused, or null when it is good until at least `until`. */
  check(identifier: string, query: URLSearchParams, until: Date = this.now()): "bad_signature" | "url_expired" | null {
    const expiresRaw = query.get("expires") ?? "";
    const sig = query.get("sig") ?? "";
    if (!/^\d{1,12}$/.test(expiresRaw) || !/^[A-Za-z0-9_-]{43}$/.test(sig)) return "bad_signature";
    const expires = Number(expiresRaw);
    const given = Buffer.from(sig, "base64url");
    const expected = this.signature(identifier, expires);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return "bad_signature";
    return expires * 1000 > until.getTime() ? null : "url_expired";
  }

  /** Whether a stored URL is a signed URL of `identifier` still good at `until` (check-url). */
  isFresh(url: string | null, identifier: string, until: Date): boolean {
    if (!url) return false;
    let parsed: URL;
    try {
      parsed = new URL(url, "http://gateway.invalid");
    } catch {
      return false;
    }
    return parsed.pathname === `/chat-media/${identifier}` && this.check(identifier, parsed.searchParams, until) === null;
  }
}
