// Indexing a mailbox file, and the indexes popserver keeps between sessions.
//
// Indexing reads and hashes every byte (the hash is the UID): 0.6 s for 1 GiB here. A
// mailbox only ever grows between POP3 sessions (smtpmail appends; popserver's own rewrite
// at QUIT replaces the file and tells the cache what it wrote), so a login that finds the
// same file indexes only the bytes appended since. "Same file" is the same device, inode
// and birth time (an inode number alone is reused), at least as long, and still holding the
// last indexed message byte for byte; anything else is indexed from scratch.
import type { Stats } from "node:fs";
import { readAt, readAtSync } from "./fsio.ts";
import { MailboxScanner, MessageIndex } from "./mailbox.ts";

const CHUNK = 1 << 20;
const GC_EVERY = 128 << 20;
const EMPTY = Buffer.alloc(0);
const LF = 0x0a;

/**
 * Index a mailbox region [from, to) in chunks. One buffer is reused: the unfinished
 * message at its end moves to the front, so memory stays at about a chunk plus a message.
 */
export async function scanFile(fd: number, from: number, to: number): Promise<MailboxScanner> {
  const scanner = new MailboxScanner(from);
  // Sized to the region when that is small (the tail since the last login, one message).
  let buf = Buffer.allocUnsafe(Math.min(2 * CHUNK, to - from));
  let have = 0; // unconsumed bytes at the front of buf
  let base = from; // file offset of buf[0]
  for (let pos = from; pos < to; ) {
    const want = Math.min(CHUNK, to - pos);
    if (have + want > buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(buf.length * 2, have + want)); // a message larger than the buffer
      buf.copy(bigger, 0, 0, have);
      buf = bigger;
    }
    const bytesRead = (await readAt(fd, pos, want, buf, have)).length;
    if (bytesRead === 0) break;
    pos += bytesRead;
    have += bytesRead;
    const used = scanner.scan(buf.subarray(0, have), base, pos >= to);
    // Each message indexed leaves a little garbage; on a huge mailbox, collecting it as we
    // go keeps the peak footprint near the live size (a few ms per 128 MiB scanned).
    if ((pos - from) % GC_EVERY < CHUNK && pos - from >= GC_EVERY) Bun.gc(true);
    buf.copyWithin(0, used, have);
    have -= used;
    base += used;
  }
  if (to - from >= GC_EVERY) {
    buf = EMPTY; // not kept alive through the collection
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
}

export class IndexCache {
  private readonly entries = new Map<string, Entry>();
  private held = 0;
  /** Logins that indexed only the appended bytes, and those that indexed the whole file. */
  readonly stats = { hits: 0, misses: 0 };

  /** At most this many messages are kept, over all mailboxes (about 33 bytes each). */
  constructor(private readonly maxMessages = 500_000) {}

  /** The index of the mailbox open at fd (st is its fstat), from the cache where it can be. */
  async index(path: string, fd: number, st: Stats): Promise<Indexed> {
    const hit = this.entries.get(path);
    this.drop(path);
    let found: Indexed;
    if (hit && hit.dev === st.dev && hit.ino === st.ino && hit.birth === st.birthtimeMs && st.size >= hit.validEnd && (await lastStillThere(fd, hit))) {
      this.stats.hits++;
      const tail = await scanFile(fd, hit.validEnd, st.size);
      const added = tail.finish();
      if (added.count === 0) found = { index: hit.index, validEnd: tail.validEnd };
      else {
        // A new index: sessions still holding the old one must keep seeing what they saw.
        found = { index: MessageIndex.joined(hit.index, added), validEnd: tail.validEnd };
      }
    } else {
      this.stats.misses++;
      const scanner = await scanFile(fd, 0, st.size);
      found = { index: scanner.finish(), validEnd: scanner.validEnd };
    }
    this.remember(path, st, found);
    return found;
  }

  /** Records what a file holds (popserver's rewrite knows that without reading it back). */
  remember(path: string, st: Stats, found: Indexed): void {
    this.drop(path);
    if (found.index.count === 0 || found.index.count > this.maxMessages) return;
    // The least recently used go first: a Map iterates in insertion order.
    for (const p of this.entries.keys()) {
      if (this.held + found.index.count <= this.maxMessages) break;
      this.drop(p);
    }
    this.entries.set(path, { ...found, dev: st.dev, ino: st.ino, birth: st.birthtimeMs });
    this.held += found.index.count;
  }

  drop(path: string): void {
    const e = this.entries.get(path);
    if (!e) return;
    this.entries.delete(path);
    this.held -= e.index.count;
  }

  get size(): number {
    return this.entries.size;
  }
}

/**
 * The last indexed message is still where it was, byte for byte (by its hash), and ends with
 * a newline: a hand-written file's final "." without one would change meaning once appended to.
 */
async function lastStillThere(fd: number, e: Entry): Promise<boolean> {
  const last = e.index.count - 1;
  const at = e.index.offset(last);
  const end = at + e.index.length(last);
  if (end !== e.validEnd || readAtSync(fd, end - 1, 1)[0] !== LF) return false;
  const again = (await scanFile(fd, at, end)).finish();
  return again.count === 1 && again.offset(0) === at && again.length(0) === e.index.length(last) && again.hash(0) === e.index.hash(last);
}
