// Indexing a mailbox file: MailboxScanner finds the complete messages in consecutive chunks
// of it, and scanFile feeds it a region of the file with memory bounded by the chunk size.
import { readAt } from "./fsio.ts";
import { messageHash, MessageHasher } from "./message-hash.ts";
import { MessageIndex, type MessageEntry } from "./message-index.ts";

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const LF_DOT = Buffer.from("\n.");

// 512 KiB rather than 1 MiB: the first login on 1 GiB peaked ~2 MiB lower (60.4 against
// 62.2-62.9 MiB), and took no longer (354-377 ms).
const CHUNK = 512 << 10;
/** A full scan of this much or more collects garbage as it goes, and once more at the end. */
export const GC_EVERY = 128 << 20;
const EMPTY = Buffer.alloc(0);
/** Less free room than this in the scan buffer, and a message is read again through a buffer of its own. */
const MIN_ROOM = 64 * 1024;

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
 * Indexes the scanner's unsettled message, reading its bytes again into room: false when
 * the file no longer holds them all (it is then left out, as a torn tail is).
 */
async function settle(fd: number, scanner: MailboxScanner, room: Buffer): Promise<boolean> {
  const u = scanner.unsettled!;
  const length = u.dotLine - u.start;
  // Still the "." line the scan found (a file cut and written again between the two reads
  // would give a hash of other bytes, helper-72): else left out, as a torn tail is.
  const end = await readAt(fd, u.dotLine - 1, u.termEnd - u.dotLine + 1, room);
  if (!isDotLine(end)) {
    scanner.abandon();
    return false;
  }
  const tail = length > 24 ? await readAt(fd, u.dotLine - 20, 20, room) : EMPTY;
  if (length > 24 && tail.length < 20) {
    scanner.abandon();
    return false;
  }
  const hasher = new MessageHasher(length, tail);
  let bare = 0;
  let prev = -1;
  for (let at = u.start; at < u.dotLine; ) {
    const piece = await readAt(fd, at, Math.min(room.length, u.dotLine - at), room);
    if (piece.length === 0) {
      scanner.abandon();
      return false;
    }
    hasher.update(piece);
    if (u.lf) bare += countBareLfs(piece, prev);
    prev = piece[piece.length - 1]!;
    at += piece.length;
  }
  scanner.settle(hasher.digest(), bare);
  return true;
}

/** "\n." then CRLF, LF or nothing (a final "." without its newline). */
function isDotLine(b: Buffer): boolean {
  if (b.length < 2 || b[0] !== LF || b[1] !== DOT) return false;
  return b.length === 2 || (b.length === 3 && b[2] === LF) || (b.length === 4 && b[2] === CR && b[3] === LF);
}

/**
 * Index a mailbox region [from, to) in chunks. One buffer of two chunks is reused: the
 * unfinished message at its end moves to the front, and when that leaves no room for the
 * next chunk, the bytes of it already searched go (the scanner keeps where its search
 * stopped); such a message is hashed once its end is found, from the file read again into
 * the buffer's free room. Memory stays at three chunks whatever the messages: grown to hold
 * the largest one, the buffer made a login to one 10 MB message cost 18 MiB, 50 such
 * logins at once 883-901 MiB.
 * The next chunk is read (on the thread pool) while this one is scanned: done one after
 * the other, reading 1 GiB took 270-320 ms and scanning it 370-450 ms here.
 */
export async function scanFile(fd: number, from: number, to: number): Promise<MailboxScanner> {
  const scanner = new MailboxScanner(from);
  // Sized to the region when that is small (the tail since the last login, one message).
  let buf = Buffer.allocUnsafe(Math.min(2 * CHUNK, to - from));
  // A region of more than one chunk reads the next chunk into `stage` during each scan.
  let stage: Buffer | null = to - from > CHUNK ? Buffer.allocUnsafe(CHUNK) : null;
  let next: Promise<Buffer> | null = null; // the read of the chunk at `pos`, if started early
  let have = 0; // unconsumed bytes at the front of buf
  let base = from; // file offset of buf[0]
  try {
    for (let pos = from; pos < to; ) {
      const want = Math.min(CHUNK, to - pos);
      if (have + want > buf.length) {
        // A message longer than a chunk: what its search has gone past goes.
        const gone = scanner.release(buf.subarray(0, have), base);
        buf.copyWithin(0, gone, have);
        have -= gone;
        base += gone;
      }
      if (have + want > buf.length) {
        // Not reached (release() leaves a few bytes); kept rather than reading past the end.
        const bigger = Buffer.allocUnsafe(Math.max(buf.length * 2, have + want)); // a message larger than the buffer
        buf.copy(bigger, 0, 0, have);
        buf = bigger;
      }
      let bytesRead: number;
      if (stage) {
        const chunk = await (next ?? readAt(fd, pos, want, stage));
        next = null;
        bytesRead = chunk.copy(buf, have);
      } else bytesRead = (await readAt(fd, pos, want, buf, have)).length;
      if (bytesRead === 0) break;
      pos += bytesRead;
      have += bytesRead;
      // The stage is free again: the next chunk is read while this one is scanned.
      if (stage && pos < to) next = readAt(fd, pos, Math.min(CHUNK, to - pos), stage);
      let used = scanner.scan(buf.subarray(0, have), base, pos >= to);
      while (scanner.unsettled) {
        // The free part of buf for the reads (about a chunk: the message's searched bytes went).
        const room = buf.length - have >= MIN_ROOM ? buf.subarray(have) : Buffer.allocUnsafe(CHUNK);
        if (!(await settle(fd, scanner, room))) return scanner; // the file was cut meanwhile
        used += scanner.scan(buf.subarray(used, have), base + used, pos >= to);
      }
      // Each message indexed leaves a little garbage; on a huge mailbox, collecting it as we
      // go keeps the peak footprint near the live size (a few ms per 128 MiB scanned).
      if ((pos - from) % GC_EVERY < CHUNK && pos - from >= GC_EVERY) Bun.gc(true);
      buf.copyWithin(0, used, have);
      have -= used;
      base += used;
    }
  } finally {
    // Never leave a read landing after we are gone (the caller may close fd).
    await next?.catch(() => {});
  }
  if (to - from >= GC_EVERY) {
    buf = stage = EMPTY; // not kept alive through the collection
    Bun.gc(true); // once more for the last stretch
  }
  return scanner;
}
