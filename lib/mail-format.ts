// Pure functions for the mail the user types and the mail the client lists and shows.
import { closingAngle, trimSp } from "./lines.ts";
import { continuesHeader } from "./mailbox.ts";

export type ComposedMail =
  | { ok: true; from: string; to: string; subject: string; body: string[] }
  | { ok: false; reason: string };

export const MAX_SUBJECT_LENGTH = 50;

/** X@Y with non-empty X and Y; no spaces, no second "@", nothing that could break `MAIL FROM:<...>`. */
export function isAddress(text: string): boolean {
  return /^[^\s@<>()\[\],;:"\\\x00-\x1f\x7f]+@[^\s@<>()\[\],;:"\\\x00-\x1f\x7f]+$/.test(text);
}

function field(line: string | undefined, name: string): string | null {
  if (line === undefined) return null;
  // "Wherever a space character is shown, one or more spaces can be there."
  const m = new RegExp(`^${name}:(?:[ \\t]+(.*))?$`, "i").exec(line);
  return m ? trimSp(m[1] ?? "") : null;
}

/**
 * Check the mail as typed (the lines before the final "." line): From, To, Subject in that order,
 * addresses of the form X@Y, a subject of at most 50 characters, then any number of body lines.
 */
export function parseComposedMail(lines: string[]): ComposedMail {
  // "From:alice@x" reads as From but lacks the space the format shows: said so, not just "must be From:".
  const missing = (line: string | undefined, name: string, which: string, rest: string) => {
    const spaced = new RegExp(`^${name}:\\S`, "i").test(line ?? "") ? `, with one or more spaces after "${name}:"` : "";
    return { ok: false as const, reason: `the ${which} line must be ${name}: ${rest}${spaced}` };
  };
  const from = field(lines[0], "From");
  if (from === null) return missing(lines[0], "From", "first", "<user>@<domain>");
  if (!isAddress(from)) return { ok: false, reason: "From must be of the form X@Y" };
  const to = field(lines[1], "To");
  if (to === null) return missing(lines[1], "To", "second", "<user>@<domain>");
  if (!isAddress(to)) return { ok: false, reason: "To must be of the form X@Y" };
  const subject = field(lines[2], "Subject");
  if (subject === null) return missing(lines[2], "Subject", "third", "<subject>");
  if (characters(subject) > MAX_SUBJECT_LENGTH) {
    return { ok: false, reason: `the subject must be at most ${MAX_SUBJECT_LENGTH} characters` };
  }
  return { ok: true, from, to, subject, body: lines.slice(3) };
}

const graphemes = new Intl.Segmenter();
/** Characters as a reader counts them: "é" typed as e + a combining accent is one, an emoji with its modifiers too. */
function characters(text: string): number {
  let n = 0;
  for (const _ of graphemes.segment(text)) n++;
  return n;
}

/**
 * The text handed to SMTP DATA: the lines as typed, each ended by CRLF. The assignment's layout
 * has no empty line after Subject, so a first body line that reads as a header would be taken
 * for one (RFC 5322): "Agenda: budget" as a field, "  indented" as the Subject folded onto it,
 * and the Received line stored after it. Only then an empty line goes between them.
 */
export function composeMessage(lines: string[]): string {
  const typed = lines.length > 3 && continuesHeader(lines[3]!) ? [...lines.slice(0, 3), "", ...lines.slice(3)] : lines;
  return typed.map((l) => l + "\r\n").join("");
}

export interface MailHeaders {
  from: string;
  to: string;
  subject: string;
  date: string;
  /** The assignment's "Received: <date> : <hour> : <minute>" value, if present. */
  received: string;
}

/**
 * The first From, To, Subject, Date and assignment-style Received of a retrieved message.
 * The assignment's format has no blank line after the headers, so the header block ends at a
 * blank line or at the first line that is not a header (or a folded continuation).
 */
export function parseHeaders(message: string): MailHeaders {
  const found = new Map<string, string>();
  const received: string[] = [];
  let current: { name: string; value: string } | null = null;
  const commit = () => {
    if (!current) return;
    const value = current.value.trim();
    if (current.name === "received") received.push(value);
    else if (!found.has(current.name)) found.set(current.name, value);
    current = null;
  };
  for (const line of message.split(/\r?\n/)) {
    if (line === "") break;
    if (/^[ \t]/.test(line) && current) {
      (current as { value: string }).value += " " + line.trim();
      continue;
    }
    const m = /^([!-9;-~]+)[ \t]*:(.*)$/.exec(line);
    if (!m) break;
    commit();
    current = { name: m[1]!.toLowerCase(), value: m[2]! };
  }
  commit();
  return {
    from: found.get("from") ?? "",
    to: found.get("to") ?? "",
    subject: found.get("subject") ?? "",
    date: found.get("date") ?? "",
    received: received.find((r) => assignmentReceived(r) !== null) ?? "",
  };
}

const pad2 = (n: number | string) => String(n).padStart(2, "0");

/** "2026-12-01 : 04 : 27" (or another date word) -> normalised "date : HH : MM", else null. */
function assignmentReceived(value: string): string | null {
  const m = /^([^\s:;]+)\s*:\s*(\d{1,2})\s*:\s*(\d{1,2})$/.exec(value.trim());
  return m ? `${m[1]} : ${pad2(m[2]!)} : ${pad2(m[3]!)}` : null;
}

const MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/** An RFC 5322 date as "YYYY-MM-DD : HH : MM", in the time zone it was written in. */
export function formatDateHeader(value: string): string {
  const m = /(\d{1,2})\s+([A-Za-z]{3})[a-z]*\s+(\d{2,4})\s+(\d{1,2}):(\d{2})/.exec(value);
  if (m) {
    const month = MONTHS.indexOf(m[2]!.toLowerCase());
    if (month >= 0) {
      let year = Number(m[3]);
      if (m[3]!.length <= 2) year += year < 50 ? 2000 : 1900; // RFC 5322 4.3 obsolete years
      return `${year}-${pad2(month + 1)}-${pad2(m[1]!)} : ${pad2(m[4]!)} : ${m[5]}`;
    }
  }
  const t = Date.parse(value);
  if (Number.isNaN(t)) return "";
  const d = new Date(t);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} : ${pad2(d.getHours())} : ${pad2(d.getMinutes())}`;
}

/**
 * The address of the first mailbox in a From header value (RFC 5322 3.4): "Al <al@x>" ->
 * "al@x", a bare address as it is. A "<...>" inside a quoted display name or a comment is
 * not the address: `"Bank <help@bank.example>" <eve@evil.example>` is eve's mail.
 */
export function senderAddress(from: string): string {
  let bare = "";
  let quoted = false;
  let depth = 0; // comment nesting
  // Once a "<" finds no ">" after it, no later one will: each looked would scan to the end
  // again (a From of 100 KB of "<" held the list 6 s, helper-86).
  let unclosed = false;
  for (let i = 0; i < from.length; i++) {
    const c = from[i]!;
    if (c === "\\" && (quoted || depth > 0)) {
      if (depth === 0) bare += c + (from[i + 1] ?? "");
      i++;
    } else if (depth > 0) {
      if (c === "(") depth++;
      else if (c === ")") depth--;
    } else if (c === '"') {
      quoted = !quoted;
      bare += c;
    } else if (quoted) bare += c;
    else if (c === "(") depth++;
    else if (c === "<" && !unclosed) {
      const end = closingAngle(from, i);
      if (end > 0) return from.slice(i + 1, end).trim();
      unclosed = true;
      bare += c;
    } else if (c === ",") break;
    else bare += c;
  }
  // Unbalanced quotes or parentheses: not a header we can read; the first "<...>" then.
  if (quoted || depth > 0) return /<([^<>]*)>/.exec(from)?.[1]?.trim() ?? from.trim();
  return bare.trim().replace(/\s+/g, " ");
}

const ENCODED_WORD = /=\?([^?\s*]+)(?:\*[^?\s]*)?\?([BbQq])\?([^?\s]*)\?=/g;

/**
 * A header value with its RFC 2047 encoded-words ("=?utf-8?B?...?=", as mail readers send a
 * non-ASCII Subject) decoded; whitespace between two encoded-words goes (6.2). A word in a
 * charset the runtime does not know, or not well formed, stays as it is.
 */
export function decodeEncodedWords(value: string): string {
  if (!value.includes("=?")) return value;
  const decoded = value.replace(ENCODED_WORD, (word, charset: string, encoding: string, text: string) => {
    let decoder: TextDecoder;
    try {
      decoder = new TextDecoder(charset.toLowerCase() as ConstructorParameters<typeof TextDecoder>[0]);
    } catch {
      return word;
    }
    if (encoding.toUpperCase() === "B") {
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return word;
      return "\x00" + decoder.decode(Buffer.from(text, "base64")) + "\x00";
    }
    const bytes = text.replace(/_/g, " ").replace(/=([0-9A-Fa-f]{2})|=/g, (m, hex?: string) => (hex ? String.fromCharCode(parseInt(hex, 16)) : m));
    return "\x00" + decoder.decode(Buffer.from(bytes, "latin1")) + "\x00";
  });
  // \x00 marks where a decoded word starts and ends (a NUL cannot be in a header line).
  return decoded.replace(/\x00[ \t]+\x00/g, "").replace(/\x00/g, "");
}

/** When the mail was received, for the list: our Received line, else the Date header, else "". */
export function receivedWhen(headers: MailHeaders): string {
  return (headers.received && assignmentReceived(headers.received)) || (headers.date && formatDateHeader(headers.date)) || "";
}

/**
 * Control characters in mail must not drive the user's terminal (escape sequences), nor may
 * bidirectional overrides and isolates reorder the rest of a list row.
 */
export function sanitizeForTerminal(text: string): string {
  return text.replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g, (c) => {
    const code = c.charCodeAt(0);
    if (c === "\r") return "";
    return code < 0x80 ? `^${String.fromCharCode(code ^ 0x40)}` : "?";
  });
}

export interface ListRow {
  no: number;
  from: string;
  when: string;
  subject: string;
}

/** Terminal columns a string takes: CJK and emoji take two, combining marks none. */
const columnsOf = (s: string): number => Bun.stringWidth(s);

/** text on one line, in at most `width` columns: cut between graphemes, with "..." when cut. */
function fit(text: string, width: number): string {
  // One line per mail: a decoded Subject (RFC 2047) can hold a line break or a tab, and
  // could otherwise draw a made-up row into the list.
  const line = sanitizeForTerminal(text.replace(/[\t\r\n\u2028\u2029]/g, " "));
  // Printable ASCII is a column a character: no need to look for graphemes.
  if (/^[\x20-\x7e]*$/.test(line)) return line.length <= width ? line : line.slice(0, width - 3) + "...";
  if (columnsOf(line) <= width) return line;
  let out = "";
  let used = 0;
  for (const { segment } of graphemes.segment(line)) {
    const w = columnsOf(segment);
    if (used + w > width - 3) break;
    out += segment;
    used += w;
  }
  return out + "...";
}

/** The columns of the widest cell (a loop: Math.max(...cells) overflows the stack past ~500,000). */
function widest(title: string, cells: string[]): number {
  let w = columnsOf(title);
  for (const c of cells) w = Math.max(w, columnsOf(c));
  return w;
}

/**
 * Column caps without a terminal width (a pipe), and the least a subject gets in a narrow one.
 * A sender is cut only where it must be: the longest an address can be, or the room a terminal
 * leaves; a narrow terminal gives it up to SENDER_MAX columns before the subject goes under its
 * least.
 */
const SENDER_LONGEST = 254;
const SENDER_MAX = 40;
const WHEN_MAX = 24;
const SUBJECT_MAX = 60;
const SUBJECT_MIN = 12;

/**
 * The mail list: a heading, then one aligned line per mail. `columns`: the terminal's width;
 * the subject then takes the room left (the sender gives some up in a narrow terminal), and
 * no line reaches the last column, where terminals wrap.
 */
export function formatMailList(rows: ListRow[], columns?: number): string[] {
  // A terminal that does not know its size says 0 (a pty nobody sized yet).
  if (!columns || columns < 0) columns = undefined;
  const heading = ["Sl. No.", "Sender", "Received", "Subject"];
  const noWidth = widest(heading[0]!, rows.map((r) => String(r.no)));
  const whens = rows.map((r) => fit(r.when, WHEN_MAX));
  const whenWidth = widest(heading[2]!, whens);
  // Columns before the subject other than the sender's: the number, the date and three gaps.
  const fixed = noWidth + whenWidth + 3 * 2;
  // A mail without a From or a Subject header says so, as mail readers do, rather than
  // leaving a blank the user has to guess at.
  let senders = rows.map((r) => fit(r.from || "(no sender)", SENDER_LONGEST));
  if (columns !== undefined) {
    // Room for the sender and the subject together.
    const room = columns - 1 - fixed;
    const subjectNeed = widest(heading[3]!, rows.map((r) => fit(r.subject || "(no subject)", Math.max(SUBJECT_MIN, room))));
    const senderCap = Math.max(heading[1]!.length, Math.max(Math.min(SENDER_MAX, room - SUBJECT_MIN), room - subjectNeed));
    if (widest(heading[1]!, senders) > senderCap) senders = rows.map((r) => fit(r.from || "(no sender)", senderCap));
  }
  const senderWidth = widest(heading[1]!, senders);
  const subjectCap = columns === undefined ? SUBJECT_MAX : Math.max(SUBJECT_MIN, columns - 1 - fixed - senderWidth);
  const table = [heading].concat(rows.map((r, i) => [String(r.no), senders[i]!, whens[i]!, fit(r.subject || "(no subject)", subjectCap)]));
  const widths = [noWidth, senderWidth, whenWidth];
  const pad = (cell: string, c: number) => {
    if (c === 3) return cell;
    const spaces = " ".repeat(widths[c]! - columnsOf(cell));
    return c === 0 ? spaces + cell : cell + spaces;
  };
  return table.map((row) => row.map(pad).join("  ").trimEnd());
}
