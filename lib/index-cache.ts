// The indexes popserver keeps between sessions; a file is indexed by mailbox-scanner.ts.
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
import { readAtSync } from "./fsio.ts";
import { GC_EVERY, scanFile } from "./mailbox-scanner.ts";
import { MessageIndex } from "./message-index.ts";

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const WINDOW = 64 * 1024;

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
