// The mymailbox file format. Each message is stored as its lines, CRLF-terminated and
// dot-stuffed exactly as SMTP carried them (RFC 5321 4.5.2), followed by a line holding
// only ".". Keeping the stuffed form makes the "." separator unambiguous and lets POP3
// RETR send a stored record as it is. Hand-written mailboxes with bare LF line ends (as in
// the assignment) are read as well; their messages are converted to CRLF when sent.

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
export const TERMINATOR = Buffer.from(".\r\n");

const pad = (n: number) => String(n).padStart(2, "0");

/** The assignment's added line: "Received: <date> : <hour> : <minute>". */
export function receivedLine(d: Date): string {
  return `Received: ${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} : ${pad(d.getHours())} : ${pad(d.getMinutes())}`;
}

/**
 * Writes src[from, to) and CRLF into out at o; returns where the next line goes (also when
 * out is too short, so callers can tell: Buffer writes past the end are dropped silently).
 * Short lines byte by byte: a call per line cost more than copying the bytes.
 */
function putLine(src: Buffer, from: number, to: number, out: Buffer, o: number): number {
  if (to - from > 64) src.copy(out, o, from, to);
  else for (let k = from; k < to; k++) out[o + k - from] = src[k]!;
  o += to - from;
  out[o++] = CR;
  out[o++] = LF;
  return o;
}

/**
 * Bare LF line ends become CRLF, as Postfix's "normalize" mode does. Whether the client
 * dot-stuffed the lines after a bare LF, the bytes do not say for sure: Python's smtplib
 * (given bytes) stuffs after every LF, curl only after CRLF. A message with a line after a bare
 * LF that starts with a single "." (".x", ".") was not stuffed there, so every such line is
 * stuffed here; when all of them start with "..", the client stuffed them and they are kept
 * as sent (an unstuffing client whose only such lines start with ".." loses a dot on them,
 * where Postfix would take the dot off every one).
 * Byte loops into one buffer of the exact size, counted first: with a call and two buffers
 * per line, a 10 MB message of empty bare-LF lines held the event loop for 17 s; sized by
 * the worst case it took twice the memory it needed.
 */
export function normalizeLineEnds(wire: Buffer, lfStart = false): Buffer {
  const m = measure(wire, lfStart);
  return m.size === wire.length ? wire : normalizedCopy(wire, m, 0);
}

/** wire normalized into a new buffer of m.size bytes with room spare bytes after them. */
function normalizedCopy(wire: Buffer, m: Measured, room: number): Buffer {
  const out = Buffer.allocUnsafe(m.size + room);
  return checkedCopy(out, m.size === wire.length ? wire.copy(out) : normalize(wire, out, m), m.size);
}

function checkedCopy(out: Buffer, written: number, size: number): Buffer {
  // Writes past the end of a Buffer are dropped without a word: never store a cut message.
  if (written !== size) throw new Error(`normalizeLineEnds: wrote ${written} bytes, counted ${size}`);
  return out.subarray(0, size);
}

/**
 * The length of normalizeLineEnds(wire) (wire.length when it has no bare LF), whether it
 * stuffs dots after bare LFs, and whether the first line comes after one.
 */
interface Measured {
  size: number;
  stuff: boolean;
  lfStart: boolean;
}

/**
 * `lfStart`: the text's first line follows a bare LF, the one that ended the DATA command
 * (a person at `nc`); its dot is judged as those of the other lines after a bare LF.
 */
function measure(wire: Buffer, lfStart: boolean): Measured {
  if (!needsPass(wire, lfStart)) return { size: wire.length, stuff: false, lfStart };
  const state = normalizing(lfStart);
  normalizeLines(wire, null, state, wire.length, false);
  return measured(state, lfStart);
}

function needsPass(wire: Buffer, lfStart: boolean, from = 0, to = wire.length): boolean {
  return (lfStart && from === 0 && wire[0] === DOT) || hasBareLf(wire, from, to);
}

/** The count of a pass that did not stuff after bare LFs, and whether it should have. */
function measured(state: Normalizing, lfStart: boolean): Measured {
  return { size: state.o + (state.unstuffed ? state.lfDots : 0), stuff: state.unstuffed, lfStart };
}

/** Whether an LF in wire[from, to) has no CR before it. */
function hasBareLf(wire: Buffer, from = 0, to = wire.length): boolean {
  for (let i = nextLf(wire, from); i >= 0 && i < to; i = nextLf(wire, i + 1)) if (i === 0 || wire[i - 1] !== CR) return true;
  return false;
}

/**
 * The next LF at or after from, or -1. The first 32 bytes are looked at one by one, the rest
 * with indexOf's vector scan: a call per line took 800 ms on 10 MB of empty lines, a byte
 * loop 166 ms on 10 MB of 80-character ones.
 */
function nextLf(wire: Buffer, from: number): number {
  const near = Math.min(wire.length, from + 32);
  for (let i = from; i < near; i++) if (wire[i] === LF) return i;
  return near === wire.length ? -1 : wire.indexOf(LF, near);
}

interface Normalizing {
  /** Where the next line starts in wire, and the bytes written (or counted) so far. */
  start: number;
  o: number;
  afterBareLf: boolean;
  /** Lines after a bare LF that start with ".", and whether one of them starts with a single ".". */
  lfDots: number;
  unstuffed: boolean;
}

const normalizing = (lfStart: boolean): Normalizing => ({ start: 0, o: 0, afterBareLf: lfStart, lfDots: 0, unstuffed: false });

/** Writes wire with CRLF line ends into out, as measured; returns the length. */
function normalize(wire: Buffer, out: Buffer, m: Measured): number {
  const state = normalizing(m.lfStart);
  normalizeLines(wire, out, state, wire.length, m.stuff);
  return state.o;
}

/**
 * normalize() of the lines that start before `until`, from where `state` says; resumable.
 * `stuff`: add a dot to the lines after a bare LF that start with "." (see normalizeLineEnds).
 */
function normalizeLines(wire: Buffer, out: Buffer | null, state: Normalizing, until: number, stuff: boolean): void {
  let { start, o, afterBareLf, lfDots, unstuffed } = state;
  while (start < wire.length && start < until) {
    const lf = nextLf(wire, start);
    // The end of the buffer ends an unfinished last line.
    const last = lf < 0;
    const i = last ? wire.length : lf;
    const crlf = !last && i > start && wire[i - 1] === CR;
    const end = crlf ? i - 1 : i;
    // A lone "." ended by a bare LF ("<CRLF>.<LF>", a smuggling attempt) must not become
    // a "." line in the file, where it would end the message: stuff it as well.
    const loneDot = !last && !crlf && end - start === 1;
    if (wire[start] === DOT && afterBareLf) {
      lfDots++;
      if (end - start < 2 || wire[start + 1] !== DOT) unstuffed = true;
    }
    if (wire[start] === DOT && ((afterBareLf && stuff) || (loneDot && !afterBareLf))) {
      if (out) out[o] = DOT;
      o++;
    }
    o = out ? putLine(wire, start, end, out, o) : o + end - start + 2;
    afterBareLf = !crlf;
    start = i + 1;
  }
  Object.assign(state, { start, o, afterBareLf, lfDots, unstuffed });
}

/** Bytes of a message converted between two turns of the event loop (buildRecordYielding). */
const YIELD_EVERY = 256 * 1024;
const aTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * measure() (without out) or normalize() of a large message, a slice at a time with a turn of
 * the event loop after each; returns the state at the end.
 */
async function normalizeYielding(wire: Buffer, out: Buffer | null, stuff: boolean, lfStart: boolean): Promise<Normalizing> {
  const state = normalizing(lfStart);
  for (let until = YIELD_EVERY; ; until += YIELD_EVERY) {
    normalizeLines(wire, out, state, until, stuff);
    if (state.start >= wire.length) return state;
    await aTurn();
  }
}

const HEADER_LINE = /^[\x21-\x39\x3b-\x7e]+:/;
// Whitespace before the colon is RFC 5322's obsolete syntax (4.5.8), still sent: such a line is
// a header in a block that has a strict one too, or that ends at a blank line ("Hi :)" opening
// a message without a header is text).
const OBS_HEADER_LINE = /^[\x21-\x39\x3b-\x7e]+[ \t]+:/;
const MAX_HEADER_SCAN = 256 * 1024;

/** Whether a line after a header field would be read as part of the header block (a field, or a folded line). */
export function continuesHeader(line: string): boolean {
  return line[0] === " " || line[0] === "\t" || HEADER_LINE.test(line) || OBS_HEADER_LINE.test(line);
}

/**
 * The header block of a message: it ends at the first empty line, or at the first line
 * that is neither a header field nor a folded continuation (the assignment's own layout has
 * no empty line before the body). Also where the Received line goes: right after the
 * Subject header (and its folded lines), as the assignment's layout has it; without a
 * Subject, at the end of the header block. `cut`: the block goes on past the 256 KiB looked at;
 * then `end` may fall inside a folded field, and `receivedAt` is the start of that field.
 */
export function scanHeader(msg: Buffer): { end: number; receivedAt: number; from: boolean; rcpt: boolean; cut: boolean } {
  let pos = 0;
  let field = 0; // where the last unfolded header line starts
  let afterSubject = -1;
  let inSubject = false;
  let from = false;
  let rcpt = false;
  let strict = false;
  let blank = false;
  let cut = false;
  while (pos < msg.length) {
    if (pos >= MAX_HEADER_SCAN) {
      cut = true;
      break;
    }
    const nl = msg.indexOf(LF, pos);
    if (nl < 0) break;
    const line = msg.toString("latin1", pos, Math.min(nl, pos + 200));
    if (line === "\r" || line === "") {
      blank = true;
      break;
    }
    const folded = line[0] === " " || line[0] === "\t";
    // A first line that starts with a space continues no header: the message has none.
    if (folded && pos === 0) break;
    if (!folded) {
      field = pos;
      if (HEADER_LINE.test(line)) strict = true;
      else if (!OBS_HEADER_LINE.test(line)) break;
      inSubject = /^subject[ \t]*:/i.test(line);
      from ||= /^from[ \t]*:/i.test(line);
      rcpt ||= /^(to|cc|bcc)[ \t]*:/i.test(line);
    }
    pos = nl + 1;
    if (inSubject) afterSubject = pos;
  }
  if (!strict && !blank) return { end: 0, receivedAt: 0, from: false, rcpt: false, cut };
  // Cut inside a folded field, a line inserted at the cut would take its remaining lines for
  // its own (helper-57: 4000 folded lines of 78 characters).
  const receivedAt = afterSubject >= 0 && !(cut && inSubject) ? afterSubject : cut ? field : pos;
  return { end: pos, receivedAt, from, rcpt, cut };
}

/** Who a message came from and went to, as MAIL FROM and RCPT TO gave them. */
export interface Envelope {
  /** "" for the null sender (<>). */
  sender: string;
  recipients: string[];
}

/**
 * The From: and To: lines a message without them is given from its envelope, as Postfix's
 * cleanup adds them, so every stored mail has the assignment's From and To: the sender (or
 * MAILER-DAEMON for <>), the one recipient, or "undisclosed-recipients:;" for several (the
 * record is shared by all, and naming them would show Bcc recipients to each other).
 */
function envelopeLines(wire: Buffer, envelope: Envelope | undefined): string {
  if (!envelope) return "";
  const { from, rcpt, cut } = scanHeader(wire);
  // A header block longer than we look at may have them further down.
  if (cut) return "";
  const to = envelope.recipients.length === 1 ? envelope.recipients[0]! : "undisclosed-recipients:;";
  return (from ? "" : `From: ${envelope.sender || "MAILER-DAEMON"}\r\n`) + (rcpt ? "" : `To: ${to}\r\n`);
}

/** Thrown by buildRecord when the memory budget refuses the copy it has to make. */
export class NoRoomForRecord extends Error {
  override name = "NoRoomForRecord";
}

/** How a message came, for buildRecord. */
export interface RecordOptions {
  /** Spare bytes after wire, its own: the record is built there when they are enough. */
  room?: number;
  /** Asked for the bytes of a copy first (the DATA memory budget); false: NoRoomForRecord. */
  charge?: (bytes: number) => boolean;
  /** MAIL FROM and RCPT TO: From and To for a message without them. */
  envelope?: Envelope;
  /** The DATA command ended with a bare LF (see measure). */
  lfStart?: boolean;
}

/**
 * The bytes appended to mymailbox for one message received by SMTP: in place after wire
 * when the room allows, else a copy.
 */
export function buildRecord(wire: Buffer, received: string, opt: RecordOptions = {}): Buffer {
  const { room = 0, charge = () => true, envelope, lfStart = false } = opt;
  const m = measure(wire, lfStart);
  const top = envelopeLines(wire, envelope);
  const extra = copyRoom(wire, m.size, received, top, room, charge);
  return withReceived(extra < 0 ? wire : normalizedCopy(wire, m, extra), received, top);
}

/**
 * buildRecord() that gives the event loop a turn every 256 KiB of a message over 256 KiB: the
 * line ends of 10 MB of bare-LF lines took 100-190 ms to convert, other sessions waiting.
 */
export async function buildRecordYielding(wire: Buffer, received: string, opt: RecordOptions = {}): Promise<Buffer> {
  if (wire.length <= YIELD_EVERY) return buildRecord(wire, received, opt);
  const { room = 0, charge = () => true, envelope, lfStart = false } = opt;
  const top = envelopeLines(wire, envelope);
  let bare = false;
  for (let from = 0; from < wire.length && !bare; from += YIELD_EVERY) {
    bare = needsPass(wire, lfStart, from, from + YIELD_EVERY);
    if (!bare) await aTurn();
  }
  const { size, stuff } = bare ? measured(await normalizeYielding(wire, null, false, lfStart), lfStart) : { size: wire.length, stuff: false };
  const extra = copyRoom(wire, size, received, top, room, charge);
  if (extra < 0) return withReceived(wire, received, top);
  const out = Buffer.allocUnsafe(size + extra);
  const written = size === wire.length ? wire.copy(out) : (await normalizeYielding(wire, out, stuff, lfStart)).o;
  return withReceived(checkedCopy(out, written, size), received, top);
}

/** -1 when the record can be built where wire is; otherwise the spare bytes its copy needs, charged first. */
function copyRoom(wire: Buffer, size: number, received: string, top: string, room: number, charge: (bytes: number) => boolean): number {
  // Room for the added lines, the Received line (with a blank line after it when there is no header) and the "." line.
  const extra = Buffer.byteLength(top) + Buffer.byteLength(received) + 4 + TERMINATOR.length;
  if (size === wire.length && room >= extra) return -1;
  if (!charge(size + extra)) throw new NoRoomForRecord("no memory left for the record");
  return extra;
}

/**
 * The record: msg (with room after it) with `top` (header lines) inserted at its start, the
 * Received line in place, and the "." line.
 */
function withReceived(msg: Buffer, received: string, top = ""): Buffer {
  const { end, receivedAt: at } = scanHeader(msg);
  // A message with no header lines at all: the Received line becomes its header, and a
  // blank line keeps the first body line from reading as a header too.
  const bare = end === 0 && msg[0] !== CR && msg[0] !== LF && msg.length > 0;
  const line = Buffer.from(received + (bare ? "\r\n\r\n" : "\r\n"));
  const head = Buffer.from(top);
  const added = head.length + line.length;
  // Not copied whole once more: a large message is moved along in its own memory.
  const out = Buffer.from(msg.buffer, msg.byteOffset, msg.length + added + TERMINATOR.length);
  out.copyWithin(at + added, at, msg.length);
  if (head.length) out.copyWithin(head.length, 0, at);
  head.copy(out, 0);
  line.copy(out, at + head.length);
  TERMINATOR.copy(out, msg.length + added);
  return out;
}

/** Spare bytes after a gathered message that let buildRecord work in place: the Received line and the "." line. */
export const RECORD_ROOM = 64;

/**
 * The wire form of a stored message for a POP3 multi-line response, including the final
 * ".\r\n". Messages we stored are already in that form; hand-written ones get CRLF, and
 * (`stuff`) a dot before each line that starts with one.
 */
export function toWire(stored: Buffer, lf: boolean, stuff = false): Buffer {
  if (!lf) return stored;
  // One buffer sized up front and a byte loop, as in normalizeLineEnds: a buffer per line
  // made a hand-written message of millions of short lines take seconds.
  let lfs = 0;
  for (let i = 0; i < stored.length; i++) if (stored[i] === LF) lfs++;
  // Room for a dot on every line (stuff), the "." line aside.
  const out = Buffer.allocUnsafe(stored.length + (stuff ? 2 : 1) * lfs + 3);
  const dotLine = stored.lastIndexOf(LF, stored.length - (stored[stored.length - 1] === LF ? 2 : 1)) + 1;
  let o = 0;
  let start = 0;
  for (let i = 0; i <= stored.length; i++) {
    const last = i === stored.length;
    if (!last && stored[i] !== LF) continue;
    if (last && start === i) break;
    const end = !last && i > start && stored[i - 1] === CR ? i - 1 : i;
    if (stuff && stored[start] === DOT && start < dotLine) out[o++] = DOT;
    o = putLine(stored, start, end, out, o);
    start = i + 1;
  }
  if (o > out.length) throw new Error(`toWire: output overflow (${o} > ${out.length})`);
  return out.subarray(0, o);
}

/**
 * toWire(stored, true, stuff) a piece at a time, for a message too large to convert at once,
 * without its "." line: each bare LF becomes CRLF (`prev`: the byte before this piece, -1 at
 * the start), a line starting with "." gets another (`stuff`), and the last piece (`last`)
 * gets CRLF after an unended final line.
 */
export function lfPieceToWire(piece: Buffer, prev: number, last: boolean, stuff = false): Buffer {
  let extra = 0;
  for (let i = 0; i < piece.length; i++) {
    const before = i === 0 ? prev : piece[i - 1];
    if (piece[i] === LF && before !== CR) extra++;
    else if (stuff && piece[i] === DOT && (before === LF || before === -1)) extra++;
  }
  const tail = last && piece.length > 0 && piece[piece.length - 1] !== LF ? 2 : 0;
  if (extra === 0 && tail === 0) return piece;
  const out = Buffer.allocUnsafe(piece.length + extra + tail);
  let o = 0;
  for (let i = 0; i < piece.length; i++) {
    const c = piece[i]!;
    const before = i === 0 ? prev : piece[i - 1];
    if (c === LF && before !== CR) out[o++] = CR;
    else if (stuff && c === DOT && (before === LF || before === -1)) out[o++] = DOT;
    out[o++] = c;
  }
  if (tail) {
    out[o++] = CR;
    out[o++] = LF;
  }
  return out;
}
