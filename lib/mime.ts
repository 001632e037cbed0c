// A retrieved mail made readable in the terminal. Mail from other programs often comes in
// MIME (RFC 2045-2047): a body in base64 or quoted-printable, in a charset of its own, split
// into parts, with non-ASCII header words encoded. Shown as stored, a Python or swaks mail
// with one accented letter was a screen of base64 (helper-85). The header lines are kept,
// encoded words decoded; the body is decoded; attachments are one line each; a mail inside
// (forwarded, or returned in a bounce) is shown the same way. A mail without MIME (the
// assignment's own, mailclient's) comes back as it came, but for encoded words in its header.
import { decodeEncodedWords } from "./mail-format.ts";

/** Nesting of multiparts followed; deeper ones are shown as attachments. */
const MAX_DEPTH = 8;

interface Entity {
  /** The header lines, unfolded, as [lower-case name, value]. */
  fields: Array<[string, string]>;
  body: string;
}

/** The mail (lines ending in "\n") as it should be read. */
export function readableMail(mail: string, depth = 0): string {
  const { entity: top, headerEnd, bodyStart } = splitEntity(mail);
  const type = contentType(top);
  const encoding = field(top, "content-transfer-encoding")?.toLowerCase().trim();
  const mime = type.type.startsWith("multipart/") || type.type.startsWith("message/") || encoding === "base64" || encoding === "quoted-printable";
  const header = decodeHeader(mail.slice(0, headerEnd));
  if (!mime) return header + mail.slice(headerEnd);
  return header + mail.slice(headerEnd, bodyStart) + render(top, depth);
}

/**
 * Header lines with their encoded words decoded. A field holding one is unfolded first: the
 * white space between two encoded words goes, folds included (RFC 2047 6.2; Python folds a
 * long Subject between two). A line break decoded from a word is a space: `=0A` made a line
 * of its own that read as another header field ("From: ceo@bank", helper-90).
 */
function decodeHeader(block: string): string {
  if (!block.includes("=?")) return block;
  return block.replace(/^[^ \t\n][^\n]*(?:\n[ \t][^\n]*)*/gm, (f) => (f.includes("=?") ? decodeEncodedWords(f.replace(/\n(?=[ \t])/g, "")).replace(/[\r\n]/g, " ") : f));
}

/** The text of an entity: a text body decoded, a multipart's parts, anything else as a line. */
function render(e: Entity, depth: number): string {
  const type = contentType(e);
  if (type.type.startsWith("multipart/") && type.params.boundary && depth < MAX_DEPTH) {
    const parts = splitParts(e.body, type.params.boundary);
    if (parts === null) return e.body;
    if (type.type === "multipart/alternative") {
      // The plainest version the sender gave, as mail readers pick for a text screen.
      const plain = parts.find((p) => contentType(p).type === "text/plain") ?? parts[0];
      return plain ? render(plain, depth + 1) : "";
    }
    return parts.map((p) => render(p, depth + 1)).join("\n");
  }
  // Forwarded as an attachment, or returned in a bounce: a mail of its own, read the same way.
  if ((type.type === "message/rfc822" || type.type === "message/global") && depth < MAX_DEPTH) return ensureNewline(readableMail(decodeText(e), depth + 1));
  // A bounce's delivery report and the like are text (RFC 3464, 8098).
  if (type.type.startsWith("message/")) return ensureNewline(decodeText(e));
  const disposition = field(e, "content-disposition") ?? "";
  const filename = extended(parameters(disposition), "filename") ?? extended(type.params, "name");
  if (type.type.startsWith("text/") && !/^\s*attachment/i.test(disposition)) return ensureNewline(decodeText(e, type.params.charset));
  const bytes = decodeBytes(e);
  const size = bytes ? bytes.length : Buffer.byteLength(e.body);
  // One line whatever the name decodes to (a %0A or =0A in it made a line of its own).
  const name = filename ? ` ${decodeEncodedWords(filename).replace(/[\r\n]/g, " ")}` : "";
  return `[attachment${name}: ${type.type}, ${size} bytes]\n`;
}

/**
 * An entity's header fields and body. The header ends at an empty line, or, in the
 * assignment's format (no empty line), at the first line that is not a header field.
 * headerEnd is where the header lines end, bodyStart past the empty line if there is one.
 */
function splitEntity(text: string): { entity: Entity; headerEnd: number; bodyStart: number } {
  const fields: Array<[string, string]> = [];
  let at = 0;
  while (at < text.length) {
    const nl = text.indexOf("\n", at);
    const end = nl < 0 ? text.length : nl;
    const line = text.slice(at, end);
    if (line === "") return { entity: { fields, body: text.slice(end + 1) }, headerEnd: at, bodyStart: Math.min(end + 1, text.length) };
    if (/^[ \t]/.test(line) && fields.length) fields[fields.length - 1]![1] += " " + line.trim();
    else {
      const m = /^([!-9;-~]+)[ \t]*:(.*)$/.exec(line);
      if (!m) break;
      fields.push([m[1]!.toLowerCase(), m[2]!.trim()]);
    }
    at = end + 1;
  }
  at = Math.min(at, text.length);
  return { entity: { fields, body: text.slice(at) }, headerEnd: at, bodyStart: at };
}

function field(e: Entity, name: string): string | undefined {
  return e.fields.find(([n]) => n === name)?.[1];
}

/** RFC 2045 5.1; no Content-Type is text/plain (5.2). */
function contentType(e: Entity): { type: string; params: Record<string, string> } {
  const value = field(e, "content-type") ?? "text/plain";
  const type = /^\s*([^\s;/]+\/[^\s;]+)/.exec(value)?.[1]?.toLowerCase() ?? "text/plain";
  return { type, params: parameters(value) };
}

/** The `name=value` / `name="value"` parameters after the first ";", names in lower case. */
function parameters(value: string): Record<string, string> {
  const params: Record<string, string> = {};
  const re = /;\s*([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]*))/g;
  for (let m; (m = re.exec(value)); ) params[m[1]!.toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : m[3]!;
  return params;
}

/**
 * A parameter in RFC 2231's form where it has one (`filename*=utf-8''d%C3%A4t%C3%A4.bin`, in
 * sections `filename*0*=`, `filename*1=`... when long), as Python and Thunderbird send
 * non-ASCII file names; else the plain parameter.
 */
function extended(params: Record<string, string>, name: string): string | undefined {
  const sections: Array<[string, boolean]> = [];
  if (params[`${name}*`] !== undefined) sections.push([params[`${name}*`]!, true]);
  else
    for (let i = 0; ; i++) {
      const encoded = params[`${name}*${i}*`];
      const plain = params[`${name}*${i}`];
      if (encoded === undefined && plain === undefined) break;
      sections.push(encoded !== undefined ? [encoded, true] : [plain!, false]);
    }
  if (!sections.length) return params[name];
  let charset = "us-ascii";
  const head = /^([^']*)'[^']*'(.*)$/.exec(sections[0]![0]);
  if (sections[0]![1] && head) {
    charset = head[1] || charset;
    sections[0]![0] = head[2]!;
  }
  const bytes = Buffer.concat(
    sections.map(([v, encoded]) => (encoded ? Buffer.from(v.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))), "latin1") : Buffer.from(v))),
  );
  try {
    return new TextDecoder(charset.toLowerCase() as ConstructorParameters<typeof TextDecoder>[0]).decode(bytes);
  } catch {
    return params[name];
  }
}

/** The parts between "--boundary" lines (RFC 2046 5.1.1), or null when there are none. */
function splitParts(body: string, boundary: string): Entity[] | null {
  const parts: string[] = [];
  let current: string[] | null = null;
  for (const line of body.split("\n")) {
    const trimmed = line.trimEnd();
    if (trimmed === `--${boundary}` || trimmed === `--${boundary}--`) {
      if (current) parts.push(current.join("\n"));
      if (trimmed.endsWith("--") && trimmed.length === boundary.length + 4) {
        current = null;
        break;
      }
      current = [];
    } else current?.push(line);
  }
  if (current) parts.push(current.join("\n"));
  return parts.length ? parts.map((p) => splitEntity(p).entity) : null;
}

/** The entity's body bytes with its transfer encoding undone; null when it has none to undo or it is malformed. */
function decodeBytes(e: Entity): Buffer | null {
  const encoding = field(e, "content-transfer-encoding")?.toLowerCase().trim();
  if (encoding === "base64") {
    const clean = e.body.replace(/[\s]/g, "");
    return /^[A-Za-z0-9+/]*={0,2}$/.test(clean) ? Buffer.from(clean, "base64") : null;
  }
  if (encoding === "quoted-printable") {
    // Soft line breaks ("=" at a line's end) join lines; "=XX" is a byte; a lone "=" stays.
    const src = Buffer.from(e.body.replace(/=[ \t]*\n/g, ""), "utf8");
    const out = Buffer.allocUnsafe(src.length);
    let n = 0;
    for (let i = 0; i < src.length; i++) {
      const hi = src[i] === 0x3d ? hexValue(src[i + 1]) : -1;
      const lo = hi >= 0 ? hexValue(src[i + 2]) : -1;
      if (lo >= 0) {
        out[n++] = hi * 16 + lo;
        i += 2;
      } else out[n++] = src[i]!;
    }
    return out.subarray(0, n);
  }
  return null;
}

/** A text body in its charset; one the runtime does not know, or a malformed encoding, as it came. */
function decodeText(e: Entity, charset = "utf-8"): string {
  const bytes = decodeBytes(e);
  if (!bytes) return e.body;
  try {
    return new TextDecoder(charset.toLowerCase() as ConstructorParameters<typeof TextDecoder>[0]).decode(bytes).replace(/\r\n/g, "\n");
  } catch {
    return e.body;
  }
}

function hexValue(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

const ensureNewline = (s: string) => (s === "" || s.endsWith("\n") ? s : s + "\n");
