/**
 * What an upload is, decided from its first bytes only: the client's declared type and file name are
 * never trusted. Only types in this table are ever stored; markup (SVG, HTML, XML) is
 * none of them, so it can never be served back as a document of our origin.
 */
export interface SniffedType {
  /** The content type stored and served. */
  type: string;
  /** The extension of the stored identifier. */
  ext: string;
  /** Shown in the page (`Content-Disposition: inline`); everything else is served as an attachment. */
  inline: boolean;
}

/** Enough of the head for every rule below, and for telling text from binary. */
export const SNIFF_BYTES = 4096;

const PNG: SniffedType = { type: "image/png", ext: "png", inline: true };
const JPEG: SniffedType = { type: "image/jpeg", ext: "jpg", inline: true };
const GIF: SniffedType = { type: "image/gif", ext: "gif", inline: true };
const WEBP: SniffedType = { type: "image/webp", ext: "webp", inline: true };
const HEIC: SniffedType = { type: "image/heic", ext: "heic", inline: false };
const PDF: SniffedType = { type: "application/pdf", ext: "pdf", inline: false };
const MP4: SniffedType = { type: "video/mp4", ext: "mp4", inline: false };
const MOV: SniffedType = { type: "video/quicktime", ext: "mov", inline: false };
const M4A: SniffedType = { type: "audio/mp4", ext: "m4a", inline: false };
const WEBM: SniffedType = { type: "video/webm", ext: "webm", inline: false };
const OGG: SniffedType = { type: "audio/ogg", ext: "ogg", inline: false };
const WAV: SniffedType = { type: "audio/wav", ext: "wav", inline: false };
const MP3: SniffedType = { type: "audio/mpeg", ext: "mp3", inline: false };
const TEXT: SniffedType = { type: "text/plain", ext: "txt", inline: false };

/** Every type this gateway stores, by content type: what a stored row may say, and how it is served. */
export const SERVABLE_TYPES: ReadonlyMap<string, SniffedType> = new Map(
  [PNG, JPEG, GIF, WEBP, HEIC, PDF, MP4, MOV, M4A, WEBM, OGG, WAV, MP3, TEXT].map((t) => [t.type, t]),
);

const ascii = (head: Buffer, at: number, text: string) => head.length >= at + text.length && head.toString("latin1", at, at + text.length) === text;

/** The type of a file from its first bytes (up to SNIFF_BYTES, or the whole file if shorter); null: not one we store. */
export function sniff(head: Buffer): SniffedType | null {
  if (head.length >= 8 && head.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return PNG;
  if (head.length >= 3 && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return JPEG;
  if (ascii(head, 0, "GIF87a") || ascii(head, 0, "GIF89a")) return GIF;
  if (ascii(head, 0, "RIFF") && ascii(head, 8, "WEBP")) return WEBP;
  if (ascii(head, 0, "RIFF") && ascii(head, 8, "WAVE")) return WAV;
  if (ascii(head, 0, "%PDF-")) return PDF;
  if (ascii(head, 4, "ftyp")) {
    const brand = head.toString("latin1", 8, 12);
    if (["heic", "heix", "hevc", "heim", "heis", "mif1", "msf1"].includes(brand)) return HEIC;
    if (brand === "qt  ") return MOV;
    if (brand === "M4A " || brand === "M4B ") return M4A;
    return MP4;
  }
  if (head.length >= 4 && head.readUInt32BE(0) === 0x1a45dfa3) return WEBM;
  if (ascii(head, 0, "OggS")) return OGG;
  if (ascii(head, 0, "ID3") || (head.length >= 2 && head[0] === 0xff && [0xfb, 0xf3, 0xf2, 0xfa].includes(head[1]!))) return MP3;
  return isPlainText(head) ? TEXT : null;
}

/**
 * UTF-8 text with no control characters but tab, line feed, form feed and carriage return, that does
 * not open with markup (`<svg`, `<!doctype html>`, `<?xml`...: a document, not a note).
 */
function isPlainText(head: Buffer): boolean {
  if (head.length === 0) return false;
  let text: string;
  try {
    // A multi-byte character cut at the end of the head is not an error: drop up to 3 trailing bytes.
    text = decodeUtf8(head);
  } catch {
    return false;
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0008\u000b\u000e-\u001f\u007f]/.test(text)) return false;
  return !/^[\ufeff\s]*</.test(text);
}

function decodeUtf8(head: Buffer): string {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  for (let cut = 0; cut <= 3 && cut < head.length; cut++) {
    try {
      return decoder.decode(head.subarray(0, head.length - cut));
    } catch (err) {
      if (head.length < SNIFF_BYTES || cut === 3) throw err;
    }
  }
  throw new Error("not UTF-8");
}
