// Indexing a mailbox file, and the indexes popserver keeps between sessions.
//
// Indexing reads and hashes every byte (the hash is the UID): 0.5-0.7 s for 1 GiB here. A
// mailbox only ever grows between POP3 sessions (smtpmail appends; popserver's own rewrite
// at QUIT replaces the file and tells the cache what it wrote), so a login that finds the
// same file indexes only the bytes appended since. "Same file" is the same device, inode
// and birth time (an inode number alone is reused), at least as long, every indexed message
// still ending in its "." line where it did, and the last one unchanged byte for byte (one
// small read per message). A file not written at all since it was indexed (same size and
// mtime, and that mtime a second older than the indexing, so a later write within the
// clock's granularity cannot share it) is taken as it is, without a read.
//
// What this cannot see: a program that rewrites the file in place (same inode) keeping every
// message end and the last message, but changing bytes between them. smtpmail and popserver
// never do that; they append, or rename a new file over the old one.
import type { Stats } from "node:fs";
import { fstatSync, readSync } from "node:fs";
import { readAt, readAtSync } from "./fsio.ts";
import { countBareLfs, MailboxScanner, MessageHasher, MessageIndex } from "./mailbox.ts";

// 512 KiB rather than 1 MiB: the first login on 1 GiB peaked ~2 MiB lower (60.4 against
// 62.2-62.9 MiB), and took no longer (354-377 ms).
const CHUNK = 512 << 10;
const GC_EVERY = 128 << 20;
const EMPTY = Buffer.alloc(0);
const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const WINDOW = 64 * 1024;
/** Less free room than this in the scan buffer, and a message is read again through a buffer of its own. */
const MIN_ROOM = 64 * 1024;

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

/** A mailbox's messages, and the offset just past the last complete one. */
export interface Indexed {
  index: MessageIndex;
  validEnd: number;
}

interface Entry extends Indexed {
  dev: number;
  ino: number;
  birth: number;
  /** The file's size and mtime when it was indexed. */
  size: number;
  mtime: number;
  /** The mtime was a second old then: a later write cannot have left it unchanged. */
  settled: boolean;
  /** Handed to a session that has not given it back: it must not change under that session. */
  leased: boolean;
  /** Only the index's fixed numbers hold (see index()): the file is indexed again, and they go onto that. */
  numbersOnly: boolean;
}

export class IndexCache {
  private readonly entries = new Map<string, Entry>();
  private held = 0;
  /** Logins that indexed only the appended bytes, and those that indexed the whole file. */
  readonly stats = { hits: 0, misses: 0 };

  /** Memory held by the kept indexes stays under this. */
  constructor(private readonly maxBytes = 32 << 20) {}

  /** The index of the mailbox open at fd (st is its fstat), from the cache where it can be. */
  async index(path: string, fd: number, st: Stats): Promise<Indexed> {
    const kept = this.entries.get(path);
    this.drop(path);
    const same = kept && kept.dev === st.dev && !kept.index.lapsed() && kept.ino === st.ino && kept.birth === st.birthtimeMs ? kept : null;
    const hit = same && !same.numbersOnly ? same : null;
    let found: Indexed | null = null;
    if (hit) {
      if (hit.settled && st.size === hit.size && st.mtimeMs === hit.mtime) found = hit;
      else if (st.size >= hit.validEnd && (await stillThere(fd, hit))) {
        const tail = await scanFile(fd, hit.validEnd, st.size);
        const added = tail.finish();
        // Grown in place, unless a session still holds it (it must keep seeing what it saw):
        // a copy would briefly hold the index twice (3 MB for 100,000 messages).
        const index = !added.count ? hit.index : hit.leased ? MessageIndex.joined(hit.index, added) : hit.index.extend(added);
        found = { index, validEnd: tail.validEnd };
      }
    }
    if (found) {
      this.stats.hits++;
      // As after a full index of a huge mailbox: what the check and the last session left
      // behind goes now, so the session starts near the live size.
      if (st.size >= GC_EVERY) Bun.gc(true);
    } else {
      this.stats.misses++;
      const scanner = await scanFile(fd, 0, st.size);
      // Kept from session to session: without the room it grew into.
      const index = scanner.finish().trim();
      // The same file, changed by hand or last indexed by a login that was not kept: its
      // copies keep the numbers the last rewrite gave them (counted afresh, a deleted copy's
      // UID would come back).
      if (same?.index.hasFixed) index.renumber(same.index.numbers);
      found = { index, validEnd: scanner.validEnd };
    }
    // A torn tail that smtpmail set aside while we read it, appending new records in its
    // place, may have been indexed from a mix of old and new bytes: good enough for this
    // session (which has always had that risk), not kept for the next ones. smtpmail cuts
    // only a file that did not end at a message boundary.
    const now = fstatSync(fd);
    if (now.size >= st.size && (now.mtimeMs === st.mtimeMs || found.validEnd === st.size)) {
      this.remember(path, st, found);
      const kept = this.entries.get(path);
      if (kept) kept.leased = true;
    } else if (found.index.hasFixed) {
      // Only the index is in doubt, not the numbers: nothing else would carry them to the
      // next login when this session deletes nothing (under steady SMTP load, most logins).
      this.remember(path, st, { index: new MessageIndex().renumber(found.index.numbers), validEnd: 0 }, true);
    }
    return { index: found.index, validEnd: found.validEnd };
  }

  /** A session is done with an index it got from index(). */
  giveBack(path: string, index: MessageIndex): void {
    const e = this.entries.get(path);
    if (e?.index === index) e.leased = false;
  }

  /** Records what a file holds (popserver's rewrite knows that without reading it back). */
  remember(path: string, st: Stats, found: Indexed, numbersOnly = false): void {
    this.drop(path);
    const bytes = found.index.bytes;
    // Without a birth time a reused inode number could pass for the same file.
    if ((found.index.count === 0 && !found.index.hasFixed) || bytes > this.maxBytes || !st.birthtimeMs) return;
    // The least recently used go first: a Map iterates in insertion order.
    for (const p of this.entries.keys()) {
      if (this.held + bytes <= this.maxBytes) break;
      this.drop(p);
    }
    const settled = Date.now() - st.mtimeMs > 1000;
    this.entries.set(path, { index: found.index, validEnd: found.validEnd, dev: st.dev, ino: st.ino, birth: st.birthtimeMs, size: st.size, mtime: st.mtimeMs, settled, leased: false, numbersOnly });
    this.held += bytes;
  }

  drop(path: string): void {
    const e = this.entries.get(path);
    if (!e) return;
    this.entries.delete(path);
    this.held -= e.index.bytes;
  }

  /** Mailboxes kept, and the bytes their indexes hold. */
  get size(): number {
    return this.entries.size;
  }
  get bytes(): number {
    return this.held;
  }
}

/**
 * Every indexed message still ends in its "." line where it did, and the last one is
 * unchanged byte for byte (by its hash) and ends with a newline: a hand-written file's final
 * "." without one would change meaning once appended to.
 */
async function stillThere(fd: number, e: Entry): Promise<boolean> {
  // Kept empty for its fixed numbers: nothing to check but that nothing was before the appends.
  if (e.index.count === 0) return e.validEnd === 0;
  const last = e.index.count - 1;
  const at = e.index.offset(last);
  const end = at + e.index.length(last);
  if (end !== e.validEnd || readAtSync(fd, end - 1, 1)[0] !== LF) return false;
  if (!(await endsInPlace(fd, e.index, last))) return false;
  const again = (await scanFile(fd, at, end)).finish();
  return again.count === 1 && again.offset(0) === at && again.length(0) === e.index.length(last) && again.hash(0) === e.index.hash(last);
}

/**
 * Whether messages [0, count) of the index all still end in their "." line where they did:
 * each one's last 4 bytes, read through a 64 KiB window (small messages share reads: 10,000
 * of 2.4 KiB take 370 reads; large ones cost a window each).
 */
async function endsInPlace(fd: number, index: MessageIndex, count: number): Promise<boolean> {
  if (count === 0) return true;
  const limit = index.offset(count - 1) + index.length(count - 1);
  const win = Buffer.allocUnsafe(WINDOW);
  let winStart = 0;
  let winLen = 0;
  let reads = 0;
  for (let i = 0; i < count; i++) {
    const to = index.offset(i) + index.length(i);
    if (to < 3) return false;
    if (to - 4 < winStart || to > winStart + winLen) {
      winStart = Math.max(0, to - 4);
      winLen = readSync(fd, win, 0, Math.min(WINDOW, limit - winStart), winStart);
      if (winLen < to - winStart) return false;
      // Let other sessions in now and then (1 GiB of 10 KiB messages: about 0.2 s).
      if (++reads % 256 === 0) await new Promise((r) => setImmediate(r));
    }
    if (!dotLineEndsAt(win, to - winStart, false)) return false;
  }
  return true;
}

/** Whether b's bytes before end finish a "." line: "\n.\r\n" or "\n.\n", or where bare is allowed "\n.". */
export function dotLineEndsAt(b: Uint8Array, end: number, bare: boolean): boolean {
  if (b[end - 1] === LF) return b[end - 2] === DOT ? b[end - 3] === LF : b[end - 2] === CR && b[end - 3] === DOT && b[end - 4] === LF;
  return bare && b[end - 1] === DOT && b[end - 2] === LF;
}
