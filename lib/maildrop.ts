// A user's mailbox as a POP3 session sees it: the messages present at login, indexed by
// offset (never held in memory), read straight from the file, and the rewrite at QUIT.
//
// Why this is safe beside a live smtpmail: SMTP only ever appends, so the bytes of the
// snapshot taken at login never change while we hold the POP3 lock. The rewrite copies the
// kept messages to a temp file without blocking SMTP, then takes the short write lock only
// to copy what was appended since login and rename the temp file over mymailbox.
import { fstatSync } from "node:fs";
import { readdir, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { acquireLock, tryLock, type Lock } from "./lock.ts";
import { MailboxScanner, MessageIndex, scanHeader, toWire } from "./mailbox.ts";
import type { FileRange } from "./server.ts";
import { closeFd, datasync, openFd, readAt, readAtSync, syncDir, writeAll } from "./fsio.ts";
import { mailboxPath, popLockPath, writeLockPath } from "./paths.ts";

const CHUNK = 1 << 20;
const STREAM_CHUNK = 256 * 1024;
const SYNC_READ_MAX = 128 * 1024;
const GC_EVERY = 128 << 20;
const EMPTY = Buffer.alloc(0);

/** A small message as bytes; a large one as a stream of chunks. */
export type Body = Uint8Array | AsyncIterable<Uint8Array> | FileRange;

/** All bytes of a body, whatever its form (tests, and clients of the Maildrop interface). */
export async function collectBody(body: Body): Promise<Buffer> {
  if (body instanceof Uint8Array) return Buffer.from(body);
  if (!(Symbol.asyncIterator in body)) return readAtSync(body.fd, body.offset, body.length);
  const parts: Buffer[] = [];
  for await (const c of body) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

export class MaildropBusy extends Error {
  override name = "MaildropBusy";
}

/** What the POP3 session needs of a mailbox; an in-memory version serves the unit tests. */
export interface Maildrop {
  readonly count: number;
  /** Message i (0-based): RFC 1939 size and unique id. */
  size(i: number): number;
  uid(i: number): string;
  /** The message in wire form (dot-stuffed, CRLF), ending with the ".\r\n" line. */
  read(i: number): Body | Promise<Body>;
  /** Header plus the first `lines` body lines, in wire form with the ".\r\n" line. */
  top(i: number, lines: number): Uint8Array | Promise<Uint8Array>;
  /** Removes the messages (0-based) from the mailbox, keeping everything else. */
  commit(deleted: ReadonlySet<number>): Promise<void>;
  /** Ends the session without changes. */
  release(): void;
}

/**
 * Index a mailbox region [from, to) in chunks. One buffer is reused: the unfinished
 * message at its end moves to the front, so memory stays at about a chunk plus a message.
 */
export async function scanFile(fd: number, from: number, to: number): Promise<MailboxScanner> {
  const scanner = new MailboxScanner(from);
  let buf = Buffer.allocUnsafe(2 * CHUNK);
  let have = 0; // unconsumed bytes at the front of buf
  let base = from; // file offset of buf[0]
  for (let pos = from; pos < to; ) {
    if (have + CHUNK > buf.length) {
      const bigger = Buffer.allocUnsafe(buf.length * 2); // a message larger than the buffer
      buf.copy(bigger, 0, 0, have);
      buf = bigger;
    }
    const bytesRead = (await readAt(fd, pos, Math.min(CHUNK, to - pos), buf, have)).length;
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

export class FileMaildrop implements Maildrop {
  private constructor(
    private readonly root: string,
    private readonly user: string,
    private fd: number | null,
    private readonly ino: number,
    private readonly messages: MessageIndex,
    private readonly snapshotEnd: number,
    private popLock: Lock | null,
    private readonly warn: (m: string) => void,
  ) {}

  static async open(root: string, user: string, warn: (m: string) => void = () => {}): Promise<FileMaildrop> {
    const lock = tryLock(popLockPath(root, user));
    if (!lock) throw new MaildropBusy("mailbox is already in use by another POP3 session");
    try {
      const path = mailboxPath(root, user);
      await removeLeftovers(path);
      let fd: number;
      try {
        fd = await openFd(path, "r");
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return new FileMaildrop(root, user, null, 0, new MessageIndex(), 0, lock, warn);
        throw e;
      }
      const st = fstatSync(fd);
      const scanner = await scanFile(fd, 0, st.size);
      if (scanner.validEnd < st.size)
        warn(`${path}: ignoring ${st.size - scanner.validEnd} bytes of unterminated tail (interrupted write)`);
      return new FileMaildrop(root, user, fd, st.ino, scanner.finish(), scanner.validEnd, lock, warn);
    } catch (e) {
      lock.release();
      throw e;
    }
  }

  get count(): number {
    return this.messages.count;
  }

  size(i: number): number {
    return this.messages.size(i);
  }

  uid(i: number): string {
    return this.messages.uid(i);
  }

  read(i: number): Body {
    const m = this.messages.entry(i);
    const fd = this.fd!;
    // Small messages go out as a file range that the adapter reads synchronously into its
    // output buffer: a pread of a few KiB from the page cache costs microseconds, far less
    // than a round trip through the thread pool, and allocates nothing. Large ones are
    // streamed with asynchronous reads.
    if (m.lf) return toWire(readAtSync(fd, m.offset, m.length), true);
    if (m.length <= SYNC_READ_MAX) return { fd, offset: m.offset, length: m.length };
    return (async function* () {
      for (let pos = m.offset, end = m.offset + m.length; pos < end; pos += STREAM_CHUNK)
        yield await readAt(fd, pos, Math.min(STREAM_CHUNK, end - pos));
    })();
  }

  top(i: number, lines: number): Uint8Array {
    const m = this.messages.entry(i);
    // Read growing prefixes until the header and the wanted lines are in hand.
    for (let want = Math.min(m.length, 64 * 1024); ; want = Math.min(m.length, want * 4)) {
      const stored = readAtSync(this.fd!, m.offset, want);
      const complete = want === m.length;
      // The stored "." line: ".\r\n", ".\n", or a bare "." at the end of a hand-written file.
      const termLen = stored.at(-1) === 0x2e ? 1 : stored.at(-2) === 0x0d ? 3 : 2;
      const msg = complete ? stored.subarray(0, stored.length - termLen) : stored;
      const { end } = scanHeader(msg);
      let pos = end;
      // Keep the empty separator line, then count body lines.
      if (pos < msg.length && (msg[pos] === 0x0a || (msg[pos] === 0x0d && msg[pos + 1] === 0x0a))) pos = msg.indexOf(0x0a, pos) + 1;
      let n = 0;
      while (n < lines && pos < msg.length) {
        const nl = msg.indexOf(0x0a, pos);
        if (nl < 0) break;
        pos = nl + 1;
        n++;
      }
      // In a partial read the header end counts only if scanHeader stopped at a whole line
      // (empty or not a header), not at the cut in the middle of a long header.
      if (complete || (end < msg.length && msg.indexOf(0x0a, end) >= 0 && n === lines)) {
        const part = Buffer.concat([msg.subarray(0, pos), Buffer.from(".\r\n")]);
        return m.lf ? toWire(part, true) : part;
      }
    }
  }

  async commit(deleted: ReadonlySet<number>): Promise<void> {
    try {
      if (deleted.size > 0 && this.fd !== null) await this.rewrite(deleted);
    } finally {
      this.release();
    }
  }

  release(): void {
    if (this.fd !== null) void closeFd(this.fd).catch(() => {});
    this.fd = null;
    this.popLock?.release();
    this.popLock = null;
  }

  private async rewrite(deleted: ReadonlySet<number>): Promise<void> {
    const path = mailboxPath(this.root, this.user);
    const temp = `${path}.rewrite.${process.pid}.tmp`;
    let out: number | null = await openFd(temp, "w");
    const src = this.fd!;
    let renamed = false;
    const copy = async (fd: number, from: number, to: number) => {
      for (let pos = from; pos < to; pos += CHUNK) await writeAll(out!, await readAt(fd, pos, Math.min(CHUNK, to - pos)));
    };
    try {
      // 1. Kept messages of the snapshot, copied in coalesced ranges. No write lock yet:
      //    smtpmail keeps appending meanwhile.
      let runStart = -1;
      let runEnd = -1;
      for (let i = 0; i < this.messages.count; i++) {
        if (deleted.has(i)) continue;
        const m = this.messages.entry(i);
        if (m.offset !== runEnd) {
          if (runEnd > runStart) await copy(src, runStart, runEnd);
          runStart = m.offset;
        }
        runEnd = m.offset + m.length;
      }
      if (runEnd > runStart) await copy(src, runStart, runEnd);
      // The bulk goes to disk before the lock, so SMTP waits only for the tail's fsync.
      await datasync(out);
      // 2. Under the write lock: whatever was appended since login, then the swap.
      const lock = await acquireLock(writeLockPath(this.root, this.user));
      try {
        const cur = await openFd(path, "r");
        try {
          const st = fstatSync(cur);
          if (st.ino !== this.ino) throw new Error("mailbox was replaced during the session");
          if (st.size > this.snapshotEnd) {
            const tail = await scanFile(cur, this.snapshotEnd, st.size);
            await copy(cur, this.snapshotEnd, tail.validEnd);
            if (tail.validEnd < st.size) this.warn(`${path}: dropped ${st.size - tail.validEnd} bytes of unterminated tail during rewrite`);
          }
        } finally {
          await closeFd(cur);
        }
        await datasync(out);
        await closeFd(out);
        out = null;
        await rename(temp, path);
        renamed = true;
        await syncDir(dirname(path));
      } finally {
        lock.release();
      }
    } finally {
      if (out !== null) await closeFd(out).catch(() => {});
      if (!renamed) await unlink(temp).catch(() => {});
    }
  }
}

/** Temp files of a rewrite interrupted by a crash; only a POP3 lock holder may remove them. */
async function removeLeftovers(path: string): Promise<void> {
  const prefix = `${basename(path)}.rewrite.`;
  let names: string[];
  try {
    names = await readdir(dirname(path));
  } catch {
    return;
  }
  for (const n of names) if (n.startsWith(prefix) && n.endsWith(".tmp")) await unlink(join(dirname(path), n)).catch(() => {});
}
