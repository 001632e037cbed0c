// Turns TCP chunks into protocol units. Chunks do not align with lines: one chunk may
// hold many pipelined commands, half a command, or the end of DATA followed by the next
// command. The reader is pull-based so the session decides, line by line, whether the
// bytes that follow are commands or message text.
import { isUtf8 } from "node:buffer";

/**
 * A command line without the spaces around it. Commands are ASCII words separated by SP
 * (RFC 5321 2.4 and 4.1.1, RFC 1939 3; a tab tolerated): JavaScript's \s and trim() would also
 * take a no-break space, an em space or a byte order mark for one ("MAIL FROM:<a@b>\u00a0SIZE=1"
 * had a SIZE parameter, "PASS pw\u00a0" matched "pw").
 */
export const trimSp = (s: string): string => s.replace(TRIM_SP, "");
// Not /[ \t]+$/: a regex retries that from every space of every run, so a 12 KB SASL line of
// " \t" pairs took 46-150 ms of the event loop (helper-57). With the lookbehind, a trailing
// run is tried from its first space only: 0.08 ms for that line. A loop over char codes was
// as fast, but popserver's peak RSS on the 1 GiB mailbox rose from 61 to 64 MiB with it, set
// during the RETR loop (4 runs each; likely JIT memory: with FTL off, 53-54 either way).
const TRIM_SP = /^[ \t]+|(?<![ \t])[ \t]+$/g;

/** The ">" closing the "<" at start, outside any quoted local part ("a>b"@x); -1 if none. */
export function closingAngle(s: string, start: number): number {
  let quoted = false;
  for (let i = start + 1; i < s.length; i++) {
    const c = s[i];
    if (quoted && c === "\\") i++;
    else if (c === '"') quoted = !quoted;
    else if (c === ">" && !quoted) return i;
  }
  return -1;
}

/** Stands for bytes that are not UTF-8 in decoded text: no UTF-8 decodes to it (a lone surrogate). */
export const UNDECODABLE = "\udfff";

/**
 * bytes[start, end) as UTF-8, where bytes that are not UTF-8 become UNDECODABLE rather than
 * U+FFFD: decoded as U+FFFD, a password with one such byte matched any other such byte, and
 * a real U+FFFD could not be told from one.
 */
export function decodeUtf8(bytes: Buffer, start = 0, end = bytes.length): string {
  const text = bytes.toString("utf8", start, end);
  return text.includes("\ufffd") && !isUtf8(bytes.subarray(start, end)) ? text.replaceAll("\ufffd", UNDECODABLE) : text;
}

/** A command line; `bareLf` when it ended with LF alone (a person at `nc`, not an MTA). */
export type LineEvent = { kind: "line"; text: string; bareLf: boolean } | { kind: "too-long" };

/** The message text of DATA, in wire form (dot-stuffed, CRLF line ends), without the final ".". */
export interface MessageEvent {
  kind: "message";
  bytes: Buffer;
  /** True when the text went over the size limit; its bytes were discarded as they came. */
  tooBig: boolean;
  /** True when all connections' unfinished messages together filled the shared budget. */
  noRoom: boolean;
  /** The text follows a bare LF: the DATA command ended with one (nextMessage's lfEnd). */
  lfStart?: boolean;
  /** Bytes still counted in the budget: give them back (DataBudget.release) once stored or refused. */
  charged: number;
  /** Bytes of message text that came for it, kept or dropped (memory it leaves behind). */
  received: number;
  /**
   * Spare bytes right after `bytes`, in the same memory and the message's alone (0 when
   * none): the stored record can be built there in place instead of copied whole again.
   */
  room?: number;
  /**
   * Counts more bytes against the budget for this message (a copy made of it), adding them
   * to `charged`; false, counting nothing, when they do not fit. Absent without a budget.
   */
  charge?: (bytes: number) => boolean;
}

/**
 * Memory for messages being received and not yet stored, shared by all connections. Each
 * message may be as large as the size limit, but many clients sending large messages at
 * once (or trickling them, or waiting on a locked mailbox) must not add up to more than
 * this: past it, a message is counted and dropped as it comes and answered with a temporary
 * failure, so the client tries again later.
 */
export class DataBudget {
  held = 0;
  constructor(readonly limit: number) {}

  /**
   * Counts bytes if they fit under the limit, or if the caller's `own` bytes are all that is
   * held: a message alone must get through whole (its stored copy included), or one near
   * the limit in size would be refused for ever.
   */
  take(bytes: number, own = -1): boolean {
    if (this.held + bytes > this.limit && this.held !== own) return false;
    this.held += bytes;
    return true;
  }

  release(bytes: number): void {
    this.held -= bytes;
  }
}

const END_OF_DATA = Buffer.from("\r\n.\r\n");
// For a bare-LF client (lfEnd): a "." line after a bare LF, ended by LF or by CRLF (pasted text).
const LF_ENDS_OF_DATA = [Buffer.from("\n.\n"), Buffer.from("\n.\r\n")];

/** Where the first end of DATA in buf starts, its length, and how many of its bytes (the line end) belong to the message. */
function endOfData(buf: Buffer, lfEnd: boolean): { at: number; length: number; keep: number } | null {
  const crlf = buf.indexOf(END_OF_DATA);
  let found = crlf >= 0 ? { at: crlf, length: END_OF_DATA.length, keep: 2 } : null;
  if (!lfEnd) return found;
  for (const end of LF_ENDS_OF_DATA) {
    const at = buf.indexOf(end);
    if (at >= 0 && (!found || at < found.at)) found = { at, length: end.length, keep: 1 };
  }
  return found;
}
// Shared, never written to: an idle connection's reader allocates nothing of its own.
const EMPTY = Buffer.alloc(0);
/** Message parts smaller than this are copied into BLOCK-sized blocks rather than kept as views. */
const COALESCE_BELOW = 16 * 1024;
const BLOCK = 64 * 1024;
/** A message kept past this many bytes grows in memory of its own (Parts.add); below, most come in one chunk. */
const GROW_FROM = 1 << 20;
/** The grown memory is extended this much at a time (each extension is made in place, zero-filled). */
const GROW_STEP = 256 * 1024;
const CRLF = Buffer.from("\r\n");
const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const CRLF_DOT = Buffer.from("\r\n.");

/**
 * Lines of DATA that start with "." in bytes whose preceding two bytes were b1 b2 (-1: the
 * start of the message). Each carries a stuffing dot that RFC 1870 leaves out of the size.
 */
export function dotLines(bytes: Uint8Array, b1 = -1, b2 = -1): number {
  let n = 0;
  if (bytes[0] === DOT && (b2 === -1 || (b1 === CR && b2 === LF))) n++;
  else if (b2 === CR && bytes[0] === LF && bytes[1] === DOT) n++;
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = buf.indexOf(CRLF_DOT); i >= 0; i = buf.indexOf(CRLF_DOT, i + 3)) n++;
  return n;
}

/**
 * Pieces of a byte stream kept for later: large ones as they are (views of the runtime's
 * chunks, no copy), small ones copied into shared 64 KiB blocks. Kept as views, tiny TCP
 * segments held a few hundred bytes each: a message sent in 1-byte segments took 781 MiB for
 * 8 clients (helper-20), and commands trickled while the server waited ~500 bytes a byte
 * (helper-22).
 */
class Parts {
  readonly list: Buffer[] = [];
  private block: Buffer | null = null;
  private blockLen = 0;
  /** Bytes in list and block. */
  size = 0;
  /** Where a large message grows in place (see add), and its bytes so far. */
  private grown: ArrayBuffer | null = null;
  private grownLen = 0;

  /**
   * `most`: the most bytes these parts may come to (0: no bound known). A message with a
   * bound, once past GROW_FROM, is copied part by part into memory of its own that grows in
   * place: kept as the runtime's chunks and joined at the end, it was in memory twice over
   * at that moment (10 MB messages from 20 sessions peaked 100-150 MiB higher).
   */
  constructor(private most = 0) {}

  add(part: Buffer, asView = part.length >= COALESCE_BELOW): void {
    if (this.most > 0 && (this.grown || this.size + part.length > GROW_FROM)) {
      if (this.grow(part)) return;
      // Past the bound (never, as LineReader uses it): kept as parts from here on, in order.
      this.seal();
      this.most = 0;
    }
    this.size += part.length;
    if (asView) {
      this.seal();
      this.list.push(part);
      return;
    }
    if (this.block && this.blockLen + part.length > this.block.length) this.seal();
    this.block ??= Buffer.allocUnsafe(BLOCK);
    this.blockLen += part.copy(this.block, this.blockLen);
  }

  /** Copies part in after what is there; false (nothing done) past the bound, which a caller never lets happen. */
  private grow(part: Buffer): boolean {
    if (!this.grown) {
      const before = this.seal().splice(0);
      if (before.reduce((n, b) => n + b.length, part.length) > this.most) {
        this.list.push(...before);
        return false;
      }
      // Virtual memory only, up to the bound: pages are used as they are written.
      try {
        this.grown = new ArrayBuffer(0, { maxByteLength: this.most });
      } catch {
        // No address space that large (ulimit -v, a huge --max-size): kept as parts.
        this.list.push(...before);
        return false;
      }
      this.size = 0;
      for (const b of before) this.grow(b);
    }
    const ab = this.grown;
    const need = this.grownLen + part.length;
    if (need > ab.maxByteLength) return false;
    try {
      if (need > ab.byteLength) ab.resize(Math.min(ab.maxByteLength, need + GROW_STEP - (need % GROW_STEP)));
    } catch {
      return false; // no memory for more (strict overcommit, a cgroup limit): kept as parts
    }
    part.copy(new Uint8Array(ab, this.grownLen, part.length));
    this.grownLen = need;
    return true;
  }

  /**
   * The message grown in place, less its last `drop` bytes, with `room` spare bytes after
   * it; null when it was not grown.
   */
  grownMessage(drop: number, room: number): Buffer | null {
    const ab = this.grown;
    if (!ab) return null;
    const size = Math.max(0, this.grownLen - drop);
    if (size + room > ab.maxByteLength) return null;
    try {
      ab.resize(size + room);
    } catch {
      return null;
    }
    return Buffer.from(ab, 0, size);
  }

  get empty(): boolean {
    return this.list.length === 0 && this.block === null && this.grown === null;
  }

  /** All parts so far, the block being filled included (copied to its size when mostly empty). */
  seal(): Buffer[] {
    if (this.grown) {
      // Only when a caller wants the parts after all: the grown bytes as the first one.
      this.list.unshift(Buffer.from(this.grown, 0, this.grownLen));
      this.size += this.grownLen;
      this.grown = null;
      this.grownLen = 0;
    }
    if (this.block && this.blockLen > 0) {
      const used = this.block.subarray(0, this.blockLen);
      this.list.push(this.blockLen < BLOCK / 2 ? Buffer.from(used) : used);
    }
    this.block = null;
    this.blockLen = 0;
    return this.list;
  }
}

export class LineReader {
  private pending: Buffer = EMPTY;
  /** Chunks that came while `pending` waited, joined when read (see push); null: none. */
  private later: Parts | null = null;
  private laterBytes = 0;
  private discardingLongLine = false;
  // DATA state: chunks kept so far and the last bytes seen, so "\r\n.\r\n" split across
  // chunks is still found. The CRLF that ended the DATA command counts as the start.
  private data: Parts | null = null;
  private dataSize = 0;
  /** Stuffing dots counted so far; may include the final "." when it came in a chunk of its own. */
  private dataDots = 0;
  /** The last two bytes of the message so far (-1: none yet). */
  private dataB1 = -1;
  private dataB2 = -1;
  private dataTail: Buffer = CRLF;
  private dataTooBig = false;
  private dataNoRoom = false;
  /** Bytes of `data` counted in the budget. */
  private dataHeld = 0;
  private budget: DataBudget | null = null;
  // Over this, DATA bytes are counted and dropped instead of kept.
  private maxDataSize = Infinity;

  /**
   * Takes the chunk as it is, without a copy: Bun gives each socket data event memory of its
   * own and never reuses it (tests/lines.test.ts checks that on real sockets, plain and TLS).
   */
  push(chunk: Uint8Array): void {
    const view = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (!this.pending.length) this.pending = view;
    else {
      // Joined only when read: a client trickling tiny segments while the session waits
      // would otherwise make every segment copy everything before it.
      this.laterBytes += view.length;
      (this.later ??= new Parts()).add(view);
    }
  }

  get buffered(): number {
    return this.pending.length + this.laterBytes;
  }

  private join(): void {
    if (!this.later) return;
    this.pending = Buffer.concat([this.pending, ...this.later.seal()]);
    this.later = null;
    this.laterBytes = 0;
  }

  /** Next command line (CRLF or bare LF terminated, terminator removed), or null if incomplete. */
  nextLine(maxLength: number): LineEvent | null {
    this.join();
    for (;;) {
      const nl = this.pending.indexOf(LF);
      if (this.discardingLongLine) {
        if (nl < 0) {
          this.pending = EMPTY;
          return null;
        }
        this.pending = this.pending.subarray(nl + 1);
        this.discardingLongLine = false;
        continue;
      }
      if (nl < 0) {
        if (this.pending.length > maxLength) {
          this.pending = EMPTY;
          this.discardingLongLine = true;
          return { kind: "too-long" };
        }
        return null;
      }
      const end = nl > 0 && this.pending[nl - 1] === CR ? nl - 1 : nl;
      if (nl + 1 > maxLength) {
        this.pending = this.pending.subarray(nl + 1);
        return { kind: "too-long" };
      }
      const text = decodeUtf8(this.pending, 0, end);
      this.pending = this.pending.subarray(nl + 1);
      return { kind: "line", text, bareLf: end === nl };
    }
  }

  /**
   * Message text after DATA, up to CRLF "." CRLF only: a bare LF before or after the dot
   * never ends it (SMTP smuggling). Bytes after the end stay for nextLine().
   * `lfEnd`: a "." line after a bare LF ends it too (LF "." LF or LF "." CRLF), for a client
   * whose DATA command itself ended with a bare LF (plain `nc`): an MTA relaying smuggled
   * text sends its commands with CRLF.
   */
  nextMessage(maxSize: number, budget: DataBudget | null = null, reserve = 0, lfEnd = false): MessageEvent | null {
    this.join();
    this.maxDataSize = maxSize;
    this.budget = budget;
    const p = this.pending;
    if (p.length === 0) return null;
    // After an LF-ended DATA the text starts after a bare LF, where a dot is not counted as
    // stuffing (mailbox.ts's measure() decides those per message; the limit takes them as content).
    if (lfEnd && this.dataSize === 0 && this.dataB2 === -1) {
      this.dataB1 = 0;
      this.dataB2 = LF;
    }
    let contentEnd = -1; // in p; may be negative: the end lies inside kept chunks
    let after = -1;
    // Whether the end's "." was counted as a stuffing dot when it was kept (see below):
    // dotLines counts a dot after CRLF (or at the start), not after a bare LF.
    let endDotCounted = true;
    const head = Buffer.concat([this.dataTail, p.subarray(0, 4)]);
    const h = endOfData(head, lfEnd);
    if (h && h.at < this.dataTail.length) {
      contentEnd = h.at + h.keep - this.dataTail.length;
      after = h.at + h.length - this.dataTail.length;
      endDotCounted = h.length === END_OF_DATA.length || (h.at > 0 && head[h.at - 1] === CR);
    } else {
      const i = endOfData(p, lfEnd);
      if (i) {
        contentEnd = i.at + i.keep;
        after = i.at + i.length;
      }
    }
    if (after < 0) {
      this.keepData(p);
      this.dataTail = Buffer.from(Buffer.concat([this.dataTail, p.subarray(Math.max(0, p.length - 4))]).subarray(-4));
      this.pending = EMPTY;
      return null;
    }
    let bytes: Buffer;
    let room = 0;
    const dropped = () => this.dataTooBig || this.dataNoRoom;
    const sealed = () => this.data?.seal() ?? [];
    // Joined into memory with `reserve` spare bytes after the message.
    const joined = (drop: number) => {
      const chunks = sealed();
      const size = chunks.reduce((n, c) => n + c.length, 0) - drop;
      const all = Buffer.allocUnsafe(Math.max(0, size) + reserve);
      let at = 0;
      for (const c of chunks) at += c.copy(all, at, 0, Math.min(c.length, all.length - reserve - at));
      room = reserve;
      return all.subarray(0, Math.max(0, size));
    };
    // A large message already in memory of its own, with the room after it.
    const grown = (drop: number) => {
      const b = this.data?.grownMessage(drop, reserve) ?? null;
      if (b) room = reserve;
      return b;
    };
    if (contentEnd >= 0) {
      this.keepData(p.subarray(0, contentEnd));
      // Most messages arrive in one chunk: a view of the runtime's chunk, shared with
      // `pending`, so it gets no room (buildRecord copies it).
      const chunks = dropped() ? [] : (grown(0) ?? sealed());
      bytes = dropped() ? Buffer.alloc(0) : Array.isArray(chunks) ? (chunks.length === 1 ? chunks[0]! : joined(0)) : chunks;
    } else {
      bytes = dropped() ? Buffer.alloc(0) : (grown(-contentEnd) ?? joined(-contentEnd));
      this.dataSize += contentEnd;
    }
    // The size RFC 1870 means: without stuffing dots, which were counted as the parts came
    // (not counted again here: 10 MB of ".." lines took 53 ms). When the end's "." came in a
    // part before its CRLF (contentEnd < 0), that "." was counted too.
    const size = this.dataSize - this.dataDots + (contentEnd < 0 && endDotCounted ? 1 : 0);
    const tooBig = this.dataTooBig || size > maxSize;
    const noRoom = this.dataNoRoom && !tooBig;
    this.pending = p.subarray(after);
    // The message keeps its share of the budget until the caller is done with it.
    const charged = this.dataHeld;
    const received = this.dataSize;
    this.data = null;
    this.dataHeld = 0;
    this.dataSize = 0;
    this.dataDots = 0;
    this.dataB1 = this.dataB2 = -1;
    this.dataTail = CRLF;
    this.dataTooBig = false;
    this.dataNoRoom = false;
    if (tooBig || noRoom) return { kind: "message", bytes: Buffer.alloc(0), tooBig, noRoom, charged, received, room: 0 };
    const event: MessageEvent = { kind: "message", bytes, tooBig, noRoom, charged, received, room, lfStart: lfEnd };
    if (budget) event.charge = (n) => budget.take(n, event.charged) && ((event.charged += n), true);
    return event;
  }

  /** Lets go of an unfinished message's bytes (also when the connection closes mid-DATA). */
  dropData(): void {
    this.data = null;
    this.budget?.release(this.dataHeld);
    this.dataHeld = 0;
  }

  private keepData(part: Buffer): void {
    if (part.length === 0) return;
    this.dataDots += dotLines(part, this.dataB1, this.dataB2);
    this.dataB1 = part.length >= 2 ? part[part.length - 2]! : this.dataB2;
    this.dataB2 = part[part.length - 1]!;
    this.dataSize += part.length;
    if (this.dataTooBig || this.dataNoRoom) return;
    // Up to ".\r" of the end may be in already (the "." counted as a stuffing dot): the
    // exact size is checked once the end is found.
    if (this.dataSize - this.dataDots > this.maxDataSize + 2) {
      this.dataTooBig = true;
      this.dropData();
      return;
    }
    if (this.budget) {
      // Alone in the budget, a message within --max-size always fits, dot-stuffing and all
      // (1 MB of ".." lines is 1.1 MB on the wire: it got 452 for ever under a 1 MB budget).
      if (!this.budget.take(part.length, this.dataHeld)) {
        this.dataNoRoom = true;
        this.dropData();
        return;
      }
      this.dataHeld += part.length;
    }
    // The first part is kept as it is whatever its size: most messages arrive in one chunk.
    // Bound of what is kept, stuffing dots and all (each stuffed "." line is at least 4
    // bytes of which 3 count), and room for the record's added lines.
    const data = (this.data ??= new Parts(Number.isFinite(this.maxDataSize) ? Math.ceil(((this.maxDataSize + 8) * 4) / 3) + 4096 : 0));
    data.add(part, part.length >= COALESCE_BELOW || data.empty);
  }
}
