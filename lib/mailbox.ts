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

export interface MessageEntry {
  /** File offset of the first byte of the message. */
  offset: number;
  /** Stored bytes including the "." line. */
  length: number;
  /** RFC 1939 size: octets with CRLF line ends, without stuffing dots. */
  size: number;
  /** Stored with bare LF line ends (hand-written): convert when sending. */
  lf: boolean;
  /**
   * A hand-written message (bare LF line ends) that is not dot-stuffed: a line starting with
   * "." and then no second "." says so. Each of its "." lines is text, sent with a dot added
   * (RFC 1939 3); sent as stored, ".x" reached poplib as ".x" and fetchmail as "x"
   * (helper-58). Only with lf: smtpmail's records are CRLF, and a ".x" line in one came
   * from an SMTP client that did not stuff, which RFC 5321 4.5.2 reads as "x" (as LIST
   * counts it, and as an RFC 1939 client reads it as sent).
   */
  stuff: boolean;
  uid: string;
}

/** 53 bits from two independent 32-bit hashes of a stored message (without its "." line). */
/**
 * LFs with no CR before them (each one more octet on the wire); `prev` is the byte before
 * `bytes` (-1: none). A byte loop: a call per line made 50 MB of empty LF lines in a
 * hand-written file take 0.9 s to index (helper-20).
 */
export function countBareLfs(bytes: Uint8Array, prev: number): number {
  let n = 0;
  for (let i = 0; i < bytes.length; i++) if (bytes[i] === LF && (i === 0 ? prev : bytes[i - 1]) !== CR) n++;
  return n;
}

export function messageHash(content: Uint8Array): number {
  return Bun.hash.crc32(content) * 2 ** 21 + (Bun.hash.cityHash32(content) & 0x1fffff);
}

/** The crc32 part of a messageHash(). */
export const crcOfHash = (hash: number): number => Math.floor(hash / 2 ** 21);

const C1 = 0xcc9e2d51 | 0;
const C2 = 0x1b873593 | 0;
const rot = (v: number, s: number) => (v >>> s) | (v << (32 - s));
const bswap = (v: number) => ((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24);
const fetch32 = (b: Uint8Array, i: number) => b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24);
const mur = (x: number) => Math.imul(rot(Math.imul(x, C1), 17), C2);
const step5 = (h: number, s: number) => (Math.imul(rot(h, s), 5) + 0xe6546b64) | 0;

/**
 * messageHash() of a message fed a piece at a time, for one too large to hold: its length and
 * last 20 bytes given first (CityHash32 starts from them, then takes the bytes from the start
 * in 20-byte blocks), its crc32 carried from piece to piece (Bun.hash.crc32's seed). The same
 * number as messageHash() of the whole bytes: UIDs must not change.
 */
export class MessageHasher {
  private crc = 0;
  private h = 0;
  private g = 0;
  private f = 0;
  /** Bytes fed so far, and the 20-byte blocks CityHash32 still takes. */
  private fed = 0;
  private blocks: number;
  /** A block cut by the end of a piece (or the whole message when it is short). */
  private part: Buffer;
  private partLen = 0;

  constructor(
    private readonly length: number,
    tail: Uint8Array,
  ) {
    this.blocks = length > 24 ? Math.floor((length - 1) / 20) : 0;
    this.part = Buffer.allocUnsafe(length > 24 ? 20 : length);
    if (length <= 24) return;
    if (tail.length !== 20) throw new Error("MessageHasher: the last 20 bytes are needed");
    const n = length | 0;
    let h = n;
    let g = Math.imul(C1, n);
    let f = g;
    h = step5(h ^ mur(fetch32(tail, 16)), 19);
    h = step5(h ^ mur(fetch32(tail, 4)), 19);
    g = step5(g ^ mur(fetch32(tail, 12)), 19);
    g = step5(g ^ mur(fetch32(tail, 8)), 19);
    f = step5((f + mur(fetch32(tail, 0))) | 0, 19);
    this.h = h;
    this.g = g;
    this.f = f;
  }

  update(piece: Uint8Array): this {
    if (this.fed + piece.length > this.length) throw new Error("MessageHasher: more bytes than the length given");
    this.crc = Bun.hash.crc32(piece, this.crc);
    this.fed += piece.length;
    if (this.length <= 24) {
      this.part.set(piece, this.partLen);
      this.partLen += piece.length;
      return this;
    }
    let p = 0;
    if (this.partLen) {
      const k = Math.min(20 - this.partLen, piece.length);
      this.part.set(piece.subarray(0, k), this.partLen);
      this.partLen += k;
      p = k;
      if (this.partLen < 20) return this;
      this.partLen = 0;
      if (this.blocks > 0) this.blocks20(this.part, 0, 1);
    }
    // Whole blocks straight from the piece, the rest kept for the next one.
    const whole = Math.min(this.blocks, Math.floor((piece.length - p) / 20));
    if (whole > 0) {
      this.blocks20(piece, p, whole);
      p += 20 * whole;
    }
    if (this.blocks > 0 && p < piece.length) {
      this.part.set(piece.subarray(p), 0);
      this.partLen = piece.length - p;
    }
    return this;
  }

  /**
   * CityHash32's loop over n blocks of s from p. Locals and a DataView: without the FTL tier
   * (as the servers run), reading the state from fields and the words byte by byte took
   * twice as long as Bun's own cityHash32.
   */
  private blocks20(s: Uint8Array, p: number, n: number): void {
    const v = new DataView(s.buffer, s.byteOffset, s.byteLength);
    let h = this.h;
    let g = this.g;
    let f = this.f;
    for (const end = p + 20 * n; p < end; p += 20) {
      const a0 = mur(v.getInt32(p, true));
      const a1 = v.getInt32(p + 4, true);
      const a2 = mur(v.getInt32(p + 8, true));
      const a3 = mur(v.getInt32(p + 12, true));
      const a4 = v.getInt32(p + 16, true);
      h = step5(h ^ a0, 18);
      f = Math.imul(rot((f + a1) | 0, 19), C1);
      g = step5((g + a2) | 0, 18);
      h = step5(h ^ ((a3 + a1) | 0), 19);
      g = Math.imul(bswap(g ^ a4), 5);
      h = bswap((h + Math.imul(a4, 5)) | 0);
      f = (f + a0) | 0;
      // CityHash's PERMUTE3(f, h, g).
      const t = f;
      f = g;
      g = h;
      h = t;
    }
    this.h = h;
    this.g = g;
    this.f = f;
    this.blocks -= n;
  }

  digest(): number {
    if (this.fed !== this.length) throw new Error(`MessageHasher: fed ${this.fed} bytes of ${this.length}`);
    if (this.length <= 24) return messageHash(this.part);
    let { h, g, f } = this;
    g = Math.imul(rot(Math.imul(rot(g, 11), C1), 17), C1);
    f = Math.imul(rot(Math.imul(rot(f, 11), C1), 17), C1);
    h = Math.imul(rot(step5((h + g) | 0, 19), 17), C1);
    h = Math.imul(rot(step5((h + f) | 0, 19), 17), C1);
    return this.crc * 2 ** 21 + ((h >>> 0) & 0x1fffff);
  }
}

/** Writes a non-negative integer below 2^53 in base 2-36 (as Number#toString does); returns the new pos. */
export function writeNumber(buf: Buffer, pos: number, n: number, radix = 10): number {
  if (n <= INT_MAX) return writeInt(buf, pos, n, radix, 0);
  // Two int32 halves: the digits above radix^k, then the k below it, zero-padded.
  const [split, width] = SPLITS[radix]!;
  const high = Math.floor(n / split);
  return writeInt(buf, writeInt(buf, pos, high, radix, 0), n - high * split, radix, width);
}

/**
 * n (an int32) in at least `width` digits. Integer arithmetic: Math.floor and % on doubles
 * cost ~275 ns a number, most of a LIST of 100,000 messages (28 of 29.5 ms; Dovecot's takes 19).
 */
function writeInt(buf: Buffer, pos: number, n: number, radix: number, width: number): number {
  let digits = 1;
  for (let x = n; x >= radix; x = (x / radix) | 0) digits++;
  if (digits < width) digits = width;
  for (let i = pos + digits - 1; i >= pos; i--) {
    buf[i] = DIGITS[n % radix]!;
    n = (n / radix) | 0;
  }
  return pos + digits;
}
const DIGITS = Buffer.from("0123456789abcdefghijklmnopqrstuvwxyz");
const INT_MAX = 0x7fffffff;
/** For each radix: its largest power under 2^31 and that power's number of digits. */
const SPLITS = Array.from({ length: 37 }, (_, radix) => {
  let split = 1;
  let width = 0;
  while (radix > 1 && split * radix <= INT_MAX) {
    split *= radix;
    width++;
  }
  return [split, width] as const;
});

const BLOCK_SHIFT = 12;
const BLOCK = 1 << BLOCK_SHIFT;
const BLOCK_MASK = BLOCK - 1;
/** A first block's first size: most mailboxes are small, and popserver keeps their indexes. */
const SMALLEST = 256;
/** Deleted messages without a copy left whose UIDs stay taken, per rewrite (the newest). */
const MAX_RETIRED = 1000;
/** How long the numbers of copies all deleted stay taken. */
const RETIRED_MS = 120_000;

/**
 * The numbers a repeated message's copies carry, in file order; copies after them count on
 * from next. `at`: when they were worked out.
 */
export interface FixedNumbers {
  kept: number[];
  next: number;
  at: number;
}

/**
 * The offsets, lengths and sizes of a mailbox's messages in typed arrays: 29 bytes a
 * message, so a POP3 session on 100,000 messages keeps an index of 3 MB, not objects.
 */
export class MessageIndex {
  private n = 0;
  /** Never goes down: blocks are found from it. */
  get count(): number {
    return this.n;
  }
  // In blocks of BLOCK entries: growing never copies what is there, and a finished index
  // holds at most one block of spare room. One array per field grown by doubling, then
  // trimmed by a copy, left up to 7 MB of freed arrays behind while 100,000 messages were
  // indexed, most of it still resident at the end (the 64 MiB target on a 1 GiB mailbox).
  private offsets: Float64Array[] = [];
  // Under 4 GiB: add() refuses a longer message (RETR and the rewrite would not cope either).
  private lengths: Uint32Array[] = [];
  private sizes: Float64Array[] = [];
  private hashes: Float64Array[] = [];
  /** Per message: 1 if lf, plus 2 if stuff (see MessageEntry). */
  private flags: Uint8Array[] = [];
  /** Occurrence number of each hash (only when some hash repeats, or numbers are fixed). */
  private dups: Uint32Array | null = null;
  /** Numbers of repeated messages carried over a rewrite (see renumbered()). */
  private fixed: ReadonlyMap<number, FixedNumbers> | null = null;
  /** Memory the fixed numbers hold (a Map entry and its object: ~154 bytes measured, plus the kept numbers). */
  private fixedBytes = 0;

  add(offset: number, length: number, size: number, lf: boolean, hash: number, stuff = false): void {
    if (length >= 2 ** 32) throw new Error("a message of 4 GiB or more");
    const i = this.n;
    const b = i >>> BLOCK_SHIFT;
    const j = i & BLOCK_MASK;
    if (b === this.offsets.length || j === this.offsets[b]!.length) this.resizeBlock(b, b > 0 ? BLOCK : Math.min(BLOCK, Math.max(SMALLEST, 2 * j)));
    this.offsets[b]![j] = offset;
    this.lengths[b]![j] = length;
    this.sizes[b]![j] = size;
    this.hashes[b]![j] = hash;
    this.flags[b]![j] = (lf ? 1 : 0) | (stuff ? 2 : 0);
    this.n = i + 1;
  }

  /** Memory held by the arrays. */
  get bytes(): number {
    let n = (this.dups?.byteLength ?? 0) + this.fixedBytes;
    for (const o of this.offsets) n += o.length * 29;
    return n;
  }

  /** A new index of a's messages then b's, as they are (b's offsets already count from the file's start). */
  static joined(a: MessageIndex, b: MessageIndex): MessageIndex {
    const j = new MessageIndex();
    for (let i = 0; i < a.count; i++) j.addFrom(a, i, a.offset(i));
    for (let i = 0; i < b.count; i++) j.addFrom(b, i, b.offset(i));
    j.fixed = a.fixed;
    j.fixedBytes = a.fixedBytes;
    return j.trim().finish();
  }

  /** Block b at `capacity` entries, new or keeping what it holds. */
  private resizeBlock(b: number, capacity: number): void {
    const to = <T extends Float64Array | Uint32Array | Uint8Array>(blocks: T[], make: new (n: number) => T): void => {
      const old = blocks[b];
      const fresh = new make(capacity);
      if (old) fresh.set(old.subarray(0, Math.min(old.length, capacity)));
      blocks[b] = fresh;
    };
    to(this.offsets, Float64Array);
    to(this.lengths, Uint32Array);
    to(this.sizes, Float64Array);
    to(this.hashes, Float64Array);
    to(this.flags, Uint8Array);
  }

  /** Lets go of the last block's spare room, when that is worth a copy. */
  trim(): this {
    const b = this.offsets.length - 1;
    const used = this.count - b * BLOCK;
    if (b >= 0 && this.offsets[b]!.length - used >= 1024) this.resizeBlock(b, Math.max(SMALLEST, used));
    return this;
  }

  /** Adds b's messages after these (b's offsets already count from the file's start). */
  extend(b: MessageIndex): this {
    for (let i = 0; i < b.count; i++) this.addFrom(b, i, b.offset(i));
    // A few new messages must not leave a kept index with a block of room it never uses.
    return this.trim().finish();
  }

  /** The last message's stored bytes go on `bytes` further (its "." line got its newline). */
  lengthenLast(bytes: number): void {
    const i = this.n - 1;
    this.lengths[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]! += bytes;
  }

  /** Adds another index's message i, placed at `offset`. */
  addFrom(other: MessageIndex, i: number, offset: number): void {
    this.add(offset, other.length(i), other.size(i), other.lf(i), other.hash(i), other.stuff(i));
  }

  /**
   * Numbers repeated hashes in file order, so UIDs stay unique within the mailbox; a hash
   * with fixed numbers takes them instead (its k-th copy the k-th kept number, the copies
   * after those next, next + 1, ...).
   */
  finish(): this {
    const sorted = new Float64Array(this.count);
    for (let b = 0; b < this.hashes.length; b++) sorted.set(this.hashes[b]!.subarray(0, Math.min(BLOCK, this.count - b * BLOCK)), b * BLOCK);
    sorted.sort();
    const repeated = new Set<number>();
    for (let i = 1; i < sorted.length; i++) if (sorted[i] === sorted[i - 1]) repeated.add(sorted[i]!);
    this.dups = null;
    if (!repeated.size && !this.fixed?.size) return this;
    this.dups = new Uint32Array(this.count);
    const seen = new Map<number, number>();
    for (let i = 0; i < this.count; i++) {
      const h = this.hash(i);
      const f = this.fixed?.get(h);
      if (!f && !repeated.has(h)) continue;
      const k = seen.get(h) ?? 0;
      seen.set(h, k + 1);
      this.dups[i] = !f ? k + 1 : k < f.kept.length ? f.kept[k]! : f.next + k - f.kept.length;
    }
    return this;
  }

  /**
   * This index (of a mailbox's snapshot) less the `deleted` messages: the numbers the repeated
   * ones must keep in the rewritten file, where counting copies afresh would shift them (the
   * second of two identical messages would take the first's UID once that is deleted) and
   * give a deleted copy's UID to the next identical one (RFC 1939 7: a client that keeps mail
   * on the server skips it as seen). Also a message deleted without a copy left, among the
   * last MAX_RETIRED deleted: mail delivered again byte for byte comes within the minute of
   * its Received line. Null when nothing needs fixing.
   */
  renumbered(deleted: ReadonlySet<number>, now = Date.now()): Map<number, FixedNumbers> | null {
    const number = (i: number) => this.dups?.[i] ?? 0;
    // Deleted messages without a copy count from this one on (the newest MAX_RETIRED).
    let singlesFrom = 0;
    for (let i = this.count - 1, seen = 0; i >= 0; i--) {
      if (deleted.has(i) && number(i) === 0 && ++seen > MAX_RETIRED) {
        singlesFrom = i + 1;
        break;
      }
    }
    const out = new Map<number, FixedNumbers>();
    for (let i = 0; i < this.count; i++) {
      const n = Math.max(1, number(i));
      if (number(i) === 0 && !(deleted.has(i) && i >= singlesFrom)) continue;
      const h = this.hash(i);
      let f = out.get(h);
      if (!f) out.set(h, (f = { kept: [], next: this.fixed?.get(h)?.next ?? 1, at: now }));
      if (!deleted.has(i)) f.kept.push(n);
      f.next = Math.max(f.next, n + 1);
    }
    // Numbers of copies all gone stay taken while an identical copy can still come: within the
    // minute of its Received line, so for RETIRED_MS.
    for (const [h, f] of this.fixed ?? []) if (!out.has(h) && now - f.at < RETIRED_MS) out.set(h, f);
    // What counting afresh would give anyway needs no fixing.
    for (const [h, f] of out) if (f.next === f.kept.length + 1 && f.kept.every((n, k) => n === k + 1)) out.delete(h);
    return out.size ? out : null;
  }

  /** The numbers renumber() gave, for another index of the same file. */
  get numbers(): ReadonlyMap<number, FixedNumbers> | null {
    return this.fixed;
  }

  /** Whether some numbers are fixed (an empty index can hold them: the UIDs of deleted copies). */
  get hasFixed(): boolean {
    return !!this.fixed?.size;
  }

  /** Kept empty only for numbers of deleted copies, all of which may be given out again by now. */
  lapsed(now = Date.now()): boolean {
    if (this.count) return false;
    for (const f of this.fixed?.values() ?? []) if (f.kept.length || now - f.at < RETIRED_MS) return false;
    return true;
  }

  /** Takes the numbers renumbered() gave for this, the rewritten file's index. */
  renumber(fixed: ReadonlyMap<number, FixedNumbers> | null): this {
    this.fixed = fixed;
    this.fixedBytes = 0;
    for (const f of fixed?.values() ?? []) this.fixedBytes += 160 + 8 * f.kept.length;
    return this.finish();
  }

  offset(i: number): number {
    return this.offsets[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]!;
  }
  length(i: number): number {
    return this.lengths[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]!;
  }
  size(i: number): number {
    return this.sizes[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]!;
  }
  lf(i: number): boolean {
    return (this.flags[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]! & 1) !== 0;
  }
  stuff(i: number): boolean {
    return (this.flags[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]! & 2) !== 0;
  }
  hash(i: number): number {
    return this.hashes[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]!;
  }
  uid(i: number): string {
    const base = this.hash(i).toString(36);
    const n = this.dups?.[i] ?? 0;
    return n > 1 ? `${base}-${n}` : base;
  }
  /**
   * uid(i) written into buf at pos; returns the new pos. UIDL of 100,000 messages would
   * otherwise leave 100,000 strings (5 MB) for the collector.
   */
  writeUid(i: number, buf: Buffer, pos: number): number {
    pos = writeNumber(buf, pos, this.hash(i), 36);
    const n = this.dups?.[i] ?? 0;
    if (n > 1) {
      buf[pos++] = 0x2d;
      pos = writeNumber(buf, pos, n);
    }
    return pos;
  }
  entry(i: number): MessageEntry {
    return { offset: this.offset(i), length: this.length(i), size: this.size(i), lf: this.lf(i), stuff: this.stuff(i), uid: this.uid(i) };
  }
}

const LF_DOT = Buffer.from("\n.");
// UIDs hash the whole stored message (at several GB/s, so even a 1 GiB mailbox hashes in
// well under a second). Identical messages get a counter, so UIDs stay unique.

/**
 * Incremental scanner of a mailbox file. Feed it consecutive chunks of the file; it reports
 * each complete message and keeps only the bytes of the message in progress. An unfinished
 * message at the end (a crash mid-append) is never reported.
 */
export class MailboxScanner {
  readonly index = new MessageIndex();
  /** Offset just past the last complete message: everything before it is well-formed. */
  validEnd = 0;
  private carry: Buffer = Buffer.alloc(0);
  private carryOffset = 0;
  private finished = false;
  /**
   * The record the last scan() could not finish: its file offset, where its search stopped,
   * the stuffing dots counted so far, and its kind (null: its first line is unfinished).
   * `counted`: its first bytes were let go (release()) with its first line unfinished, their
   * stuffing dot counted then.
   */
  private pending: { start: number; from: number; stuffed: number; lone: boolean; lf: boolean | null; counted: boolean } | null = null;
  /**
   * A message found complete whose first bytes were let go (see release()): its offsets, and
   * what its search counted. The caller reads [start, dotLine) of the file again for its hash
   * and bare LFs and passes them to settle() before the next scan().
   */
  unsettled: { start: number; dotLine: number; termEnd: number; stuffed: number; lone: boolean; lf: boolean } | null = null;

  /** The index as objects (for tests and small mailboxes). */
  get messages(): MessageEntry[] {
    if (!this.finished) this.finish();
    return Array.from({ length: this.index.count }, (_, i) => this.index.entry(i));
  }

  /** Call after the last chunk: settles UIDs of repeated messages. */
  finish(): MessageIndex {
    this.index.finish();
    this.finished = true;
    return this.index;
  }

  constructor(startOffset = 0) {
    this.carryOffset = startOffset;
    this.validEnd = startOffset;
  }

  /** Convenience for callers without their own buffer: keeps the unfinished part itself. */
  push(chunk: Buffer, atEof = false): void {
    const buf = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
    const used = this.scan(buf, this.carryOffset, atEof);
    this.carry = Buffer.from(buf.subarray(used));
    this.carryOffset += used;
  }

  /**
   * Indexes the complete messages in buf, whose first byte is at file offset `base` and
   * starts a record (or is in the unfinished one, past the bytes release() let go). Returns
   * how many bytes were consumed; the rest must be passed again, followed by more of the
   * file. With `unsettled` set on return, settle() comes first.
   */
  scan(buf: Buffer, base: number, atEof: boolean): number {
    if (this.unsettled) throw new Error("MailboxScanner: settle() the last message first");
    // The record left unfinished starts before buf when its searched bytes were let go.
    let start = this.pending && this.pending.start < base ? this.pending.start - base : 0;
    while (start < buf.length) {
      // A record left unfinished by the last call: its search goes on where it stopped, so
      // a huge unterminated record costs one pass, not one per chunk.
      const resume = this.pending?.start === base + start ? this.pending : null;
      this.pending = null;
      let dotLine = -1;
      let termEnd = -1;
      let stuffed = resume?.stuffed ?? 0;
      let lone = resume?.lone ?? false; // a line with a single leading "." (see MessageEntry.stuff)
      let lf = resume?.lf ?? null;
      const counted = resume?.counted ?? false;
      // The search starts over only when the first line was just found (at its LF: none before).
      let search = resume?.lf != null ? resume.from - base : start;
      if (lf === null) {
        const firstLf = buf.indexOf(LF, resume ? resume.from - base : start);
        if (firstLf < 0) {
          this.pending = { start: base + start, from: base + buf.length, stuffed, lone, lf: null, counted };
          break;
        }
        search = firstLf;
        if (!counted && buf[start] === DOT && firstLf <= start + 2 && (firstLf === start + 1 || buf[start + 1] === CR)) {
          // A "." line right at the start: an empty record (the assignment's leading ".").
          start = firstLf + 1;
          this.validEnd = base + start;
          continue;
        }
        lf = !(firstLf > start && buf[firstLf - 1] === CR);
        if (!counted && buf[start] === DOT) {
          stuffed++;
          lone = buf[start + 1] !== DOT;
        }
      }
      // The end is the first line holding only ".", whatever its line ends. Our own records
      // have CRLF lines only, so theirs is "\r\n.\r\n"; a hand-written one may mix them (a
      // saved CRLF mail closed by `echo .`), and smtpmail appends after any "." line, so
      // the scan must end there too (helper-23: it did not, and the next delivery was glued
      // on). Lines starting with "." before it carry a stuffing dot each.
      for (;;) {
        const i = buf.indexOf(LF_DOT, search);
        // Not enough bytes to tell: look again from this "\n." (or from a last "\n").
        const stop = i < 0 ? Math.max(search, buf.length - 1) : i + 2 >= buf.length || (buf[i + 2] === CR && i + 3 >= buf.length) ? i : -1;
        if (stop >= 0) {
          this.pending = { start: base + start, from: base + stop, stuffed, lone, lf, counted };
          break;
        }
        const next = buf[i + 2];
        if (next === LF) termEnd = i + 3;
        else if (next === CR && buf[i + 3] === LF) termEnd = i + 4;
        if (termEnd >= 0) {
          dotLine = i + 1;
          // A bare LF around the "." line: sent converted, as an LF record is.
          if (next === LF || i === start || buf[i - 1] !== CR) lf = true;
          break;
        }
        // A stuffed line after a bare LF, too: sent raw, a strict client would read its dot
        // mid-line and keep it, one octet more than LIST says (helper-25). Other bare LFs go
        // as they are stored; finding every one would cost a pass over each message.
        if (i === start || buf[i - 1] !== CR) lf = true;
        stuffed++;
        if (next !== DOT) lone = true;
        search = i + 1;
      }
      if (termEnd < 0) break;
      if (start < 0) {
        // Its first bytes are gone: hashed from the file by the caller, then settle().
        this.unsettled = { start: base + start, dotLine: base + dotLine, termEnd: base + termEnd, stuffed, lone, lf };
        return termEnd;
      }
      this.addMessage(buf, base, start, dotLine, termEnd, stuffed, lf, lf && lone);
      start = termEnd;
      this.validEnd = base + start;
    }
    // A final "." without a newline, at the very end of a hand-written file. Only after a
    // bare LF: our own records end "\r\n.\r\n", so "\r\n." at the end is an interrupted
    // append (possibly cut inside a stuffed line), not a complete message. A "." alone where
    // a record begins may be the first byte of an append whose first line starts with ".":
    // left for later, not taken as an empty record.
    if (atEof && buf.length - start >= 2 && buf[buf.length - 1] === DOT && buf[buf.length - 2] === LF && buf[buf.length - 3] !== CR) {
      const p = this.pending;
      if (start < 0) {
        // Its first bytes are gone: its search counted its dots up to this last "\n." (as
        // the count below does), and the caller hashes it from the file.
        if (p?.start !== base + start || p.lf === null) return 0;
        this.pending = null;
        this.unsettled = { start: p.start, dotLine: base + buf.length - 1, termEnd: base + buf.length, stuffed: p.stuffed, lone: p.lone, lf: true };
        return buf.length;
      }
      const dotLine = buf.length - 1;
      const content = buf.subarray(start, dotLine);
      let stuffed = 0;
      let lone = false;
      const dotted = (at: number) => {
        stuffed++;
        if (content[at + 1] !== DOT) lone = true;
      };
      if (content[0] === DOT) dotted(0);
      for (let j = content.indexOf(LF_DOT); j >= 0; j = content.indexOf(LF_DOT, j + 2)) dotted(j + 1);
      this.addMessage(buf, base, start, dotLine, buf.length, stuffed, true, lone);
      start = buf.length;
      this.validEnd = base + start;
    }
    return Math.max(start, 0);
  }

  /**
   * How many bytes at the front of buf (the bytes last passed to scan(), less those it
   * consumed: buf[0] is at file offset base) the caller may let go and not pass again: those
   * of the unfinished record that its search has gone past, all but the few it looks back
   * at. Memory then stays bounded by what the caller reads at a time, not by the longest
   * message; a message whose start went is hashed from the file (see unsettled).
   */
  release(buf: Buffer, base: number): number {
    const p = this.pending;
    if (!p || p.start > base) return 0;
    // Bytes before `from` that the search looks back at: the byte before a "\n." (a CR or not),
    // and before a final ".": a few more, to spare.
    const n = p.from - base - 4;
    if (n < 4) return 0;
    if (p.lf === null && !p.counted) {
      // Its first line goes on past n (no LF before `from`): not an empty "." record, and its
      // stuffing dot is counted now, while the bytes are here.
      if (buf[0] === DOT) {
        p.stuffed++;
        p.lone = buf[1] !== DOT;
      }
      p.counted = true;
    }
    return n;
  }

  /** Indexes the unsettled message, given its messageHash() and its bare LFs (an LF with no CR before it, one at its first byte too). */
  settle(hash: number, bareLfs: number): void {
    const u = this.unsettled;
    if (!u) throw new Error("MailboxScanner: nothing to settle");
    this.unsettled = null;
    this.put(u.start, u.dotLine, u.termEnd, u.stuffed, u.lf, u.lf && u.lone, u.lf ? bareLfs : 0, hash);
    this.validEnd = u.termEnd;
  }

  /** The unsettled message could not be read again (the file was cut): not indexed; scan no more. */
  abandon(): void {
    this.unsettled = null;
  }

  /** lf: the message has bare LF line ends (seen on its first line or around its "." line); stuff: see MessageEntry. */
  private addMessage(buf: Buffer, base: number, start: number, dotLine: number, termEnd: number, stuffed: number, lf: boolean, stuff: boolean): void {
    // One view per message and no BigInt: indexing 100,000 messages must not leave
    // megabytes of garbage behind.
    const content = buf.subarray(start, dotLine);
    this.put(base + start, base + dotLine, base + termEnd, stuffed, lf, stuff, lf ? countBareLfs(content, -1) : 0, messageHash(content));
  }

  /** One message into the index: its size on the wire is its stored text less stuffing dots (none added for `stuff`), each bare LF one octet more. */
  private put(start: number, dotLine: number, termEnd: number, stuffed: number, lf: boolean, stuff: boolean, bareLfs: number, hash: number): void {
    this.index.add(start, termEnd - start, dotLine - start - (stuff ? 0 : stuffed) + bareLfs, lf, hash, stuff);
  }
}

/** Scans a whole in-memory mailbox (tests, small files). */
export function scanBuffer(data: Buffer): MailboxScanner {
  const s = new MailboxScanner();
  s.push(data, true);
  s.finish();
  return s;
}

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

/** Removes dot-stuffing from a wire-form message (without its final "." line). */
export function unstuff(wire: Buffer): Buffer {
  const out: Buffer[] = [];
  let start = 0;
  if (wire[0] === DOT) start = 1;
  let from = start;
  for (let i = wire.indexOf("\n.", from); i >= 0; i = wire.indexOf("\n.", from)) {
    out.push(wire.subarray(start, i + 1));
    start = i + 2;
    from = start;
  }
  out.push(wire.subarray(start));
  return Buffer.concat(out);
}
