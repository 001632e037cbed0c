// A user's mailbox as a POP3 session sees it: the messages present at login, indexed by
// offset (never held in memory), read straight from the file, and the rewrite at QUIT.
//
// Why this is safe beside a live smtpmail: SMTP only ever appends, so the bytes of the
// snapshot taken at login never change while we hold the POP3 lock. The rewrite copies the
// kept messages to a temp file without blocking SMTP, then takes the short write lock only
// to copy what was appended since login and rename the temp file over mymailbox.
import { constants, existsSync, fchmodSync, fchownSync, fstatSync, mkdirSync, readSync, type Stats } from "node:fs";
import { readdir, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { acquireLock, tryLock, type Lock } from "./lock.ts";
import { lfPieceToWire, scanHeader, TERMINATOR, toWire } from "./mailbox.ts";
import { crcOfHash } from "./message-hash.ts";
import { MessageIndex, type FixedNumbers, type MessageEntry } from "./message-index.ts";
import { scanFile } from "./mailbox-scanner.ts";
import { dotLineEndsAt, type IndexCache } from "./index-cache.ts";
import { closeFd, datasync, openFd, readAt, readAtSync, setAside, syncDir, writeAll, type FileRange } from "./fsio.ts";
import { mailboxPath, popLockPath, writeLockPath } from "./paths.ts";

const CHUNK = 1 << 20;
const STREAM_CHUNK = 256 * 1024;
const SYNC_READ_MAX = 128 * 1024;
/** A marked message is read again at QUIT in pieces of at most this. */
const HASH_PIECE = 1 << 20;
/** Bytes read again at QUIT between two turns of the event loop. */
const HASH_SLICE = 8 << 20;
/** Marked messages looked at between two turns of the event loop (a power of two). */
const MARKED_PER_TURN = 8192;

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

/** The file no longer holds a message the session's index has: something ignored the lock. */
export class MaildropChanged extends Error {
  override name = "MaildropChanged";
  constructor(user: string, how = "cut short") {
    super(`${user}'s mailbox was ${how} by another program`);
  }
}

/** Errno codes at login that retrying will not cure: what is in the mailbox's place, or its permissions. */
const PERMANENT = new Set(["EISDIR", "ENOTDIR", "ELOOP", "EACCES", "EPERM"]);

/**
 * The mailbox cannot be opened (other than MaildropBusy). `why` is what the client may be told:
 * an error code, never a path (the message, for the log, has those). `permanent`: it takes an
 * administrator, not a retry (RFC 3206 SYS/PERM).
 */
export class MaildropUnavailable extends Error {
  override name = "MaildropUnavailable";
  constructor(
    message: string,
    readonly why: string,
    readonly permanent: boolean,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** QUIT's update failed: the marked messages are still there. `why` as for MaildropUnavailable. */
export class MaildropUpdateFailed extends Error {
  override name = "MaildropUpdateFailed";
  constructor(
    message: string,
    readonly why: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** An OS error (one with an errno code) as one of the typed errors above; anything else unchanged. */
function typed(e: unknown, update: boolean): unknown {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (typeof code !== "string" || e instanceof MaildropUnavailable || e instanceof MaildropUpdateFailed) return e;
  const message = (e as Error).message;
  return update ? new MaildropUpdateFailed(message, code, { cause: e }) : new MaildropUnavailable(message, code, PERMANENT.has(code), { cause: e });
}

/** What the POP3 session needs of a mailbox; an in-memory version serves the unit tests. */
export interface Maildrop {
  readonly count: number;
  /** Message i (0-based): RFC 1939 size and unique id. */
  size(i: number): number;
  uid(i: number): string;
  /** uid(i) written into buf at pos, returning the new pos (saves a string per message in UIDL). */
  writeUid?(i: number, buf: Buffer, pos: number): number;
  /** The message in wire form (dot-stuffed, CRLF), ending with the ".\r\n" line. */
  read(i: number): Body | Promise<Body>;
  /** Header plus the first `lines` body lines, in wire form with the ".\r\n" line. */
  top(i: number, lines: number): Body | Promise<Body>;
  /** Removes the messages (0-based) from the mailbox, keeping everything else; throws MaildropChanged or MaildropUpdateFailed. */
  commit(deleted: ReadonlySet<number>): Promise<void>;
  /** Ends the session without changes. */
  release(): void;
}

export class FileMaildrop implements Maildrop {
  /** Bytes a rewrite writes to its temp file between two fdatasyncs of it (see TempFile); tests make it small. */
  static syncStep = 32 << 20;
  /** Where present() reads a message's last bytes. */
  private readonly endBytes = Buffer.alloc(4);
  /**
   * The last message ended in a bare "." at login (a hand-written file without a final
   * newline): only then may its end read "\n." rather than a whole "." line.
   */
  private readonly lastBare: boolean;

  private constructor(
    private readonly root: string,
    private readonly user: string,
    private fd: number | null,
    private readonly ino: number,
    private readonly messages: MessageIndex,
    private readonly snapshotEnd: number,
    private popLock: Lock | null,
    private readonly warn: (m: string) => void,
    private readonly cache: IndexCache | null,
  ) {
    const n = messages.count;
    this.lastBare = fd !== null && n > 0 && readAtSync(fd, messages.offset(n - 1) + messages.length(n - 1) - 1, 1)[0] === 0x2e;
  }

  /** Whether message i's last bytes, ending at `end` in b, are a "." line as at login. */
  private endsAsItDid(i: number, b: Uint8Array, end: number): boolean {
    return dotLineEndsAt(b, end, this.lastBare && i === this.messages.count - 1);
  }

  /**
   * With a cache, a login indexes only what was appended since the last one (see index-cache.ts).
   * Throws MaildropBusy, or MaildropUnavailable for what the file system refused.
   */
  static async open(root: string, user: string, warn: (m: string) => void = () => {}, cache: IndexCache | null = null): Promise<FileMaildrop> {
    try {
      return await FileMaildrop.openFile(root, user, warn, cache);
    } catch (e) {
      throw typed(e, false);
    }
  }

  private static async openFile(root: string, user: string, warn: (m: string) => void, cache: IndexCache | null): Promise<FileMaildrop> {
    await cleaning.get(mailboxPath(root, user));
    const lock = lockSession(root, user);
    if (!lock) throw new MaildropBusy("mailbox is already in use by another POP3 session");
    try {
      const path = mailboxPath(root, user);
      await removeLeftovers(path);
      let fd: number;
      try {
        // Non-blocking: a FIFO in the mailbox's place must not hold a pool thread in open()
        // until a writer comes (two of them stalled every login). Refused just below.
        // Nor through a link: its file would be locked under another user's name (helper-42).
        fd = await openFd(path, (constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW) as unknown as string);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return new FileMaildrop(root, user, null, 0, new MessageIndex(), 0, lock, warn, cache);
        throw e;
      }
      try {
        const st = fstatSync(fd);
        if (!st.isFile()) throw new MaildropUnavailable(`${path} is not a regular file`, "not a regular file", true);
        let found;
        if (cache) found = await cache.index(path, fd, st);
        else {
          const scanner = await scanFile(fd, 0, st.size);
          found = { index: scanner.finish(), validEnd: scanner.validEnd };
        }
        if (found.validEnd < st.size)
          warn(`${path}: ignoring ${st.size - found.validEnd} bytes of unterminated tail (a message still being written, or an interrupted write)`);
        return new FileMaildrop(root, user, fd, st.ino, found.index, found.validEnd, lock, warn, cache);
      } catch (e) {
        void closeFd(fd).catch(() => {});
        throw e;
      }
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

  writeUid(i: number, buf: Buffer, pos: number): number {
    return this.messages.writeUid(i, buf, pos);
  }

  /** Message i's entry, once the file is known to still reach its end, and to end it there with its "." line. */
  private present(i: number): MessageEntry {
    const m = this.messages.entry(i);
    // Its last bytes, read where they were at login (one pread, as the fstat it replaced).
    const end = m.offset + m.length;
    const want = Math.min(4, end);
    const n = readSync(this.fd!, this.endBytes, 0, want, end - want);
    // A file cut under the session (by a program that ignores the lock) would give a short
    // read: the multi-line reply would end without its "." line, and the client would hang.
    if (n < want) throw new MaildropChanged(this.user);
    // One emptied or overwritten in place would give other mail under this one's UID.
    if (!this.endsAsItDid(i, this.endBytes, n)) throw new MaildropChanged(this.user, "changed");
    return m;
  }

  /** Exactly length bytes at offset; MaildropChanged if the file was cut since the check. */
  private readWhole(offset: number, length: number): Buffer {
    const got = readAtSync(this.fd!, offset, length);
    if (got.length < length) throw new MaildropChanged(this.user);
    return got;
  }

  read(i: number): Body {
    const m = this.present(i);
    const fd = this.fd!;
    // Small messages go out as a file range that the adapter reads synchronously into its
    // output buffer: a pread of a few KiB from the page cache costs microseconds, far less
    // than a round trip through the thread pool, and allocates nothing. Large ones are
    // streamed with asynchronous reads.
    if (m.length <= SYNC_READ_MAX) return m.lf ? toWire(this.readWhole(m.offset, m.length), true, m.stuff) : { fd, offset: m.offset, length: m.length };
    const user = this.user;
    // A hand-written (LF) one is converted a piece at a time too: whole, 150 MB of it held
    // the event loop for a second and the memory twice over (helper-23). One to be stuffed
    // goes without its "." line, which gets no dot.
    const dotLine = m.stuff ? terminatorLength(this.readWhole(m.offset + m.length - 3, 3)) : 0;
    return (async function* () {
      let prev = -1;
      for (let pos = m.offset, end = m.offset + m.length - dotLine; pos < end; pos += STREAM_CHUNK) {
        const want = Math.min(STREAM_CHUNK, end - pos);
        const chunk = await readAt(fd, pos, want);
        if (chunk.length < want) throw new MaildropChanged(user);
        if (!m.lf) yield chunk;
        else {
          const last = pos + want >= end;
          const out = lfPieceToWire(chunk, prev, last, m.stuff);
          prev = chunk[chunk.length - 1]!;
          yield out;
        }
      }
      if (dotLine) yield TERMINATOR;
    })();
  }

  /**
   * The header and `lines` lines of the body. Lines are counted to any LF, and every bare LF
   * goes out as CRLF, also in a message sent as stored by RETR (a hand-written CRLF mail with
   * a stray bare LF, which the index does not look for): cut after one, "\n.\r\n" was no end
   * of the response and curl waited for ever (helper-45).
   */
  top(i: number, lines: number): Body {
    const m = this.present(i);
    if (m.length > SYNC_READ_MAX) return this.topStream(this.fd!, m, lines);
    const stored = this.readWhole(m.offset, m.length);
    const msg = stored.subarray(0, stored.length - terminatorLength(stored));
    const part = msg.subarray(0, countLines(msg, afterSeparator(msg, scanHeader(msg).end), lines).pos);
    return Buffer.concat([lfPieceToWire(part, -1, true, m.stuff), TERMINATOR]);
  }

  /**
   * top() of a large message in one pass of asynchronous reads, sent as it is read: growing
   * prefixes read and counted synchronously held the event loop ~400 ms per TOP on 10 MB
   * of empty lines (helper-32).
   */
  private async *topStream(fd: number, m: MessageEntry, lines: number): AsyncGenerator<Uint8Array> {
    const whole = async (at: number, length: number) => {
      const got = await readAt(fd, at, length);
      if (got.length < length) throw new MaildropChanged(this.user);
      return got;
    };
    const end = m.offset + m.length - terminatorLength(await whole(m.offset + m.length - 3, 3));
    let prev = -1;
    const wire = (piece: Buffer, last: boolean): Uint8Array => {
      const out = lfPieceToWire(piece, prev, last, m.stuff);
      if (piece.length) prev = piece[piece.length - 1]!;
      return out;
    };
    let chunk = await whole(m.offset, Math.min(HEAD_READ, end - m.offset));
    let head = scanHeader(chunk).end;
    // scanHeader looks at most 256 KiB in, but a header line begun there may end past this
    // read (then no line end follows where it stopped): read on to the end of that line.
    while (m.offset + chunk.length < end && chunk.indexOf(0x0a, head) < 0) {
      chunk = Buffer.concat([chunk, await whole(m.offset + chunk.length, Math.min(chunk.length, end - m.offset - chunk.length))]);
      head = scanHeader(chunk).end;
    }
    let counted = countLines(chunk, afterSeparator(chunk, head), lines);
    let n = counted.n;
    for (let at = m.offset + chunk.length; n < lines && at < end; at += chunk.length) {
      yield wire(chunk, false);
      chunk = await whole(at, Math.min(STREAM_CHUNK, end - at));
      counted = countLines(chunk, 0, lines - n);
      n += counted.n;
    }
    yield wire(chunk.subarray(0, counted.pos), true);
    yield TERMINATOR;
  }

  async commit(deleted: ReadonlySet<number>): Promise<void> {
    try {
      if (deleted.size > 0 && this.fd !== null) await this.rewrite(deleted);
    } catch (e) {
      // Its index no longer describes the file: the next login reads the file afresh.
      if (e instanceof MaildropChanged) this.cache?.drop(mailboxPath(this.root, this.user));
      throw typed(e, true);
    } finally {
      this.release();
    }
  }

  release(): void {
    if (this.fd !== null) void closeFd(this.fd).catch(() => {});
    this.fd = null;
    // Once, before the lock goes: the next session may then grow the index in place.
    if (this.popLock) this.cache?.giveBack(mailboxPath(this.root, this.user), this.messages);
    this.popLock?.release();
    this.popLock = null;
  }

  /**
   * Whether the marked messages are still in the file as the session indexed them: each one
   * ending in its "." line where it did, and the crc32 of its bytes the one its UID was made
   * from (messageHash's high part; the crc alone is 4-9 times faster to take than the whole
   * hash here). Reads the marked messages only, a run of neighbours (up to a MiB) at a time,
   * and gives the event loop a turn every HASH_SLICE bytes read: a window read around each
   * message took kept ones along, and 1000 scattered deletions in 1 GiB held every session
   * and the lock 190 ms (helper-87).
   */
  private async markedUnchanged(fd: number, deleted: ReadonlySet<number>): Promise<boolean> {
    const ix = this.messages;
    const order = [...deleted].sort((a, b) => a - b);
    const buf = Buffer.allocUnsafe(HASH_PIECE);
    let bufStart = 0;
    let bufLen = 0;
    let read = 0;
    const turn = async (n: number) => {
      if ((read += n) < HASH_SLICE) return;
      read = 0;
      await new Promise((r) => setImmediate(r));
    };
    for (let k = 0; k < order.length; k++) {
      // Tiny messages read little: a turn every so many as well (a QUIT deleting 200,000
      // tiny ones held the other clients 50-330 ms; 11-19 ms now, helper-94).
      if ((k & (MARKED_PER_TURN - 1)) === MARKED_PER_TURN - 1) await new Promise((r) => setImmediate(r));
      const i = order[k]!;
      const at = ix.offset(i);
      const len = ix.length(i);
      let crc = 0;
      let content: number;
      if (len <= HASH_PIECE) {
        if (at < bufStart || at + len > bufStart + bufLen) {
          // From this message on, as far as marked neighbours run without a gap.
          let to = at + len;
          for (let j = k + 1; j < order.length; j++) {
            const next = ix.offset(order[j]!) + ix.length(order[j]!);
            if (ix.offset(order[j]!) !== to || next - at > HASH_PIECE) break;
            to = next;
          }
          bufStart = at;
          bufLen = readSync(fd, buf, 0, to - at, at);
          if (bufLen < len) return false;
          await turn(bufLen);
        }
        const msg = buf.subarray(at - bufStart, at - bufStart + len);
        if (!this.endsAsItDid(i, msg, len)) return false;
        content = len - terminatorLength(msg);
        crc = Bun.hash.crc32(msg.subarray(0, content));
      } else {
        const end = readAtSync(fd, at + len - 4, 4);
        if (end.length < 4 || !this.endsAsItDid(i, end, 4)) return false;
        content = len - terminatorLength(end);
        bufLen = 0; // the buffer is reused for the pieces
        for (let pos = at; pos < at + content; ) {
          const n = readSync(fd, buf, 0, Math.min(HASH_PIECE, at + content - pos), pos);
          if (n === 0) return false;
          crc = Bun.hash.crc32(buf.subarray(0, n), crc);
          pos += n;
          await turn(n);
        }
      }
      if (crc !== crcOfHash(ix.hash(i))) return false;
    }
    return true;
  }

  /**
   * QUIT's update: the kept messages and whatever smtpmail appended since login go to a temp
   * file, renamed over the mailbox (README, "POP3 rewrite at QUIT").
   */
  private async rewrite(deleted: ReadonlySet<number>): Promise<void> {
    const path = mailboxPath(this.root, this.user);
    const out = await TempFile.create(`${path}.rewrite.${process.pid}.tmp`, FileMaildrop.syncStep);
    try {
      this.keepPermissions(out.fd, path);
      // 1. Kept messages of the snapshot, copied in coalesced ranges. No write lock yet:
      //    smtpmail keeps appending meanwhile.
      const made = await this.copyKept(out, deleted);
      // A first look before the lock: a change made already is refused without making
      // smtpmail wait, and messages deleted without being read (a client expiring old mail)
      // come into the page cache here rather than from the disk under the lock (1 GiB took
      // 0.6-2.4 s there, helper-87). The look that decides is the one under the lock.
      if (!(await this.markedUnchanged(this.fd!, deleted))) throw new MaildropChanged(this.user, "changed during the session");
      // Worked out before the lock too (tens of ms with 100,000 messages, half of them deleted).
      const numbers = this.messages.renumbered(deleted);
      // The bulk goes to disk before the lock, so SMTP waits only for the tail's fsync.
      await out.sync();
      // 2. Under the write lock: whatever was appended since login, then the swap.
      // Linked from a temp file in the mail root, as the session lock is: one made in the
      // user's directory went through a symbolic link put there, onto another user's mailbox.
      const lock = await acquireLock(writeLockPath(this.root, this.user), undefined, this.root);
      try {
        // Its holder died (an smtpmail between making the mailbox and syncing its name): made
        // durable before anything here relies on it (helper-73).
        if (lock.brokeStale) await syncDir(dirname(path));
        await this.copyTail(out, path, deleted, made);
        await this.swap(out, path, made, numbers);
      } finally {
        lock.release();
      }
    } finally {
      await out.dispose();
    }
  }

  /**
   * The new file takes the old one's permissions (and owner, where we may): made with the
   * umask, a mailbox kept private (0600) became readable by all at the first QUIT.
   */
  private keepPermissions(fd: number, path: string): void {
    const was = fstatSync(this.fd!);
    try {
      fchmodSync(fd, was.mode & 0o7777);
      fchownSync(fd, was.uid, was.gid);
    } catch (e) {
      // EPERM for the owner unless root (the file is ours then anyway); a file system
      // without modes: the umask's mode stays.
      if ((e as NodeJS.ErrnoException).code !== "EPERM") this.warn(`${path}: cannot keep its permissions: ${(e as Error).message}`);
    }
  }

  /** Rewrite step 1: the snapshot's kept messages into the temp file, and what it then holds. */
  private async copyKept(out: TempFile, deleted: ReadonlySet<number>): Promise<NewContent> {
    const ranges = new RangeCopy(out, this.fd!, this.user);
    let runStart = -1;
    let runEnd = -1;
    // What the new file holds, for the cache: kept messages end to end, then the tail.
    const made: NewContent = { index: new MessageIndex(), written: 0 };
    for (let i = 0; i < this.messages.count; i++) {
      if (deleted.has(i)) continue;
      const m = this.messages.entry(i);
      made.index.addFrom(this.messages, i, made.written);
      made.written += m.length;
      if (m.offset !== runEnd) {
        if (runEnd > runStart) await ranges.copy(runStart, runEnd);
        runStart = m.offset;
      }
      runEnd = m.offset + m.length;
    }
    if (runEnd > runStart) await ranges.copy(runStart, runEnd);
    await ranges.flush();
    return made;
  }

  /**
   * Rewrite step 2, under the write lock: the mailbox checked against the session's index,
   * then whatever smtpmail appended since login copied after the kept messages (and into `made`).
   */
  private async copyTail(out: TempFile, path: string, deleted: ReadonlySet<number>, made: NewContent): Promise<void> {
    const cur = await openFd(path, (constants.O_RDONLY | constants.O_NOFOLLOW) as unknown as string);
    try {
      const st = fstatSync(cur);
      if (st.ino !== this.ino) throw new Error("mailbox was replaced during the session");
      // What is removed must be what the session saw. A program that ignores the lock and
      // empties or overwrites the file in place (`: > mymailbox`, `cp backup mymailbox`)
      // had other bytes cut in the marked messages' place: mail the session never saw, and
      // a fragment left at the file's start (helper-84). Checked here, under the lock, so
      // a change made while QUIT waited for it is seen too (helper-86).
      if (st.size < this.snapshotEnd || !(await this.markedUnchanged(cur, deleted))) throw new MaildropChanged(this.user, "changed during the session");
      // Nothing appended since login.
      if (st.size === this.snapshotEnd) return;
      let from = this.snapshotEnd;
      // A hand-written last message whose "." had no newline: smtpmail wrote that newline
      // before its append (repairTail). It belongs to that "." line: kept with its message,
      // dropped with it. Copied as the tail's first byte, it made the next mail start with
      // an empty line, its header read as body (helper-62).
      const around = from > 0 ? await readAt(cur, from - 1, 2) : null;
      if (around?.[0] === 0x2e && around[1] === 0x0a) {
        from++;
        if (!deleted.has(this.messages.count - 1)) {
          await out.copyFrom(cur, this.snapshotEnd, from);
          // As a fresh scan reads it: the "." line now ends in its newline. Left as a gap,
          // a later rewrite from this cached index dropped the newline, and the next
          // message ran on from the "." (helper-63).
          made.index.lengthenLast(1);
          made.written++;
        }
      }
      const tail = await scanFile(cur, from, st.size);
      await out.copyFrom(cur, from, tail.validEnd);
      // An unterminated tail (a crashed append, a hand-written last message without
      // its "." line) is not in the new file: kept beside it, as smtpmail does.
      if (tail.validEnd < st.size) {
        const aside = setAside(path, await readAt(cur, tail.validEnd, st.size - tail.validEnd));
        // On disk before the new file replaces the one that held these bytes.
        await syncDir(aside);
        this.warn(`${path}: unterminated tail of ${st.size - tail.validEnd} bytes moved to ${aside}`);
      }
      const added = tail.index;
      for (let j = 0; j < added.count; j++) made.index.addFrom(added, j, made.written + added.offset(j) - from);
      made.written += tail.validEnd - from;
    } finally {
      await closeFd(cur);
    }
  }

  /** The end of rewrite step 2, still under the write lock: the swap (the temp file synced and renamed over the mailbox). */
  private async swap(out: TempFile, path: string, made: NewContent, numbers: Map<number, FixedNumbers> | null): Promise<void> {
    const newFile = await out.finish();
    this.cache?.drop(path);
    await out.renameTo(path);
    // Repeated messages keep their UIDs in the new file as long as popserver keeps its
    // index (not across a restart, nor once the cache lets it go).
    this.cache?.remember(path, newFile, { index: made.index.renumber(numbers), validEnd: made.written });
    await syncDir(dirname(path));
  }
}

/** What a rewrite's new file holds, for the index cache: its messages, and the bytes they take. */
interface NewContent {
  readonly index: MessageIndex;
  written: number;
}

/**
 * The temp file of a rewrite (FileMaildrop.rewrite()), from its making to its rename, or its
 * removal when the rewrite fails.
 *
 * It is flushed as it is written, `step` bytes (FileMaildrop.syncStep) at a time: written whole and
 * flushed by one fdatasync, a 1 GiB mailbox left 1 GiB of dirty pages to one flush, and
 * smtpmail's journal fsyncs on the same disk waited behind it (deliveries to other users
 * fell to ~0.5 % for half a second, 140-210 ms latencies instead of 2-6). One flush is in
 * flight at a time, on the thread pool, while the copy goes on: dirty data stays under two
 * steps. Durability is unchanged: these flushes only come early; the temp file is still
 * synced whole before the rename, and the old file is untouched until then.
 */
class TempFile {
  /** Bytes written since the last flush was started. */
  private unsynced = 0;
  /** The flush in flight, if any. */
  private syncing: Promise<void> | null = null;
  private closed = false;
  private renamed = false;

  private constructor(
    private readonly path: string,
    readonly fd: number,
    private readonly step: number,
  ) {}

  static async create(path: string, step: number): Promise<TempFile> {
    // Made anew, never opened through what is there: a user who may write in their directory
    // put a symbolic link by that name, and the kept mail went into its target, which took
    // the mailbox's owner and mode (helper-94).
    await unlink(path).catch(() => {});
    const fd = await openFd(path, (constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW) as unknown as string);
    return new TempFile(path, fd, step);
  }

  async write(data: Buffer): Promise<void> {
    await writeAll(this.fd, data);
    this.unsynced += data.length;
    if (this.unsynced < this.step) return;
    this.unsynced = 0;
    await this.settle();
    this.syncing = datasync(this.fd);
    // Awaited before the next one, the final sync or the close; never unhandled meanwhile.
    this.syncing.catch(() => {});
  }

  /** Bytes from..to of the file open at fd, a MiB at a time. */
  async copyFrom(fd: number, from: number, to: number): Promise<void> {
    for (let pos = from; pos < to; pos += CHUNK) await this.write(await readAt(fd, pos, Math.min(CHUNK, to - pos)));
  }

  /** Waits for the flush in flight, if any. */
  async settle(): Promise<void> {
    const s = this.syncing;
    this.syncing = null;
    await s;
  }

  /** Everything written so far on disk. */
  async sync(): Promise<void> {
    await this.settle();
    await datasync(this.fd);
  }

  /** Synced whole and closed, ready for the rename; returns what fstat said of it. */
  async finish(): Promise<Stats> {
    await this.sync();
    const st = fstatSync(this.fd);
    await closeFd(this.fd);
    this.closed = true;
    return st;
  }

  async renameTo(to: string): Promise<void> {
    await rename(this.path, to);
    this.renamed = true;
  }

  /** At the end of the rewrite, whatever happened: closed, and removed unless renamed. */
  async dispose(): Promise<void> {
    // Not closed under a flush still running on the thread pool (its number could be reused).
    await this.settle().catch(() => {});
    if (!this.closed) await closeFd(this.fd).catch(() => {});
    if (!this.renamed) await unlink(this.path).catch(() => {});
  }
}

/**
 * Ranges of the snapshot copied into the temp file (rewrite step 1). Short ranges (scattered
 * deletions) are read synchronously from the page cache into one buffer written a MiB at a
 * time: a thread-pool round trip each made deleting every other one of 20,000 messages take
 * 0.7 s. Longer ones are copied as they are.
 */
class RangeCopy {
  private readonly gather = Buffer.allocUnsafe(CHUNK);
  private gathered = 0;

  constructor(
    private readonly out: TempFile,
    private readonly src: number,
    private readonly user: string,
  ) {}

  async copy(from: number, to: number): Promise<void> {
    if (to - from > CHUNK / 4) {
      await this.flush();
      return this.out.copyFrom(this.src, from, to);
    }
    if (this.gathered + (to - from) > CHUNK) await this.flush();
    for (let pos = from; pos < to; ) {
      const n = readSync(this.src, this.gather, this.gathered, to - pos, pos);
      if (n === 0) throw new MaildropChanged(this.user);
      this.gathered += n;
      pos += n;
    }
  }

  /** What is gathered, written. */
  async flush(): Promise<void> {
    if (this.gathered) await this.out.write(this.gather.subarray(0, this.gathered));
    this.gathered = 0;
  }
}

/**
 * The POP3 session lock. A listed user whose directory is not there yet (it is made at the
 * first delivery) gets it made now: an empty maildrop, as Dovecot gives a new user.
 */
function lockSession(root: string, user: string): Lock | null {
  const path = popLockPath(root, user);
  try {
    return tryLock(path, root);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT" || existsSync(dirname(path))) throw e;
    mkdirSync(dirname(path), { recursive: true });
    return tryLock(path, root);
  }
}

/**
 * At start-up, in the background: the temp files of rewrites a crash interrupted, each as
 * large as its mailbox, which a login removes but which otherwise stayed until that user's
 * next one (helper-34). Under the user's POP3 lock, as a login does: a user whose session is
 * open keeps them until later. One user at a time, so logins meanwhile are not held up; one
 * of this user waits for it rather than find the lock taken.
 */
export async function removeInterruptedRewrites(root: string, users: readonly string[]): Promise<void> {
  for (const user of users) {
    const path = mailboxPath(root, user);
    const names = await readdir(dirname(path)).catch(() => [] as string[]);
    if (!names.some(isRewriteTemp(path))) continue;
    let lock: Lock | null = null;
    try {
      lock = tryLock(popLockPath(root, user), root);
    } catch {}
    if (!lock) continue;
    const removing = removeLeftovers(path).finally(() => {
      lock.release();
      cleaning.delete(path);
    });
    cleaning.set(path, removing);
    await removing;
  }
}

/** Mailboxes whose interrupted rewrites are being removed, by path: a login there waits. */
const cleaning = new Map<string, Promise<void>>();

/** Temp files of a rewrite interrupted by a crash; only a POP3 lock holder may remove them. */
async function removeLeftovers(path: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dirname(path));
  } catch {
    return;
  }
  for (const n of names.filter(isRewriteTemp(path))) await unlink(join(dirname(path), n)).catch(() => {});
}

/** Whether a name in the mailbox's directory is one of its rewrite temp files (rewrite() names them). */
const isRewriteTemp = (path: string) => {
  const prefix = `${basename(path)}.rewrite.`;
  return (name: string) => name.startsWith(prefix) && name.endsWith(".tmp");
};

const HEAD_READ = 512 * 1024;

/** Length of a stored message's "." line, judged from its last bytes: ".\r\n", ".\n", or a bare "." ending a hand-written file. */
function terminatorLength(stored: Uint8Array): number {
  return stored.at(-1) === 0x2e ? 1 : stored.at(-2) === 0x0d ? 3 : 2;
}

/** Past the empty line that ends a header at pos, if there is one there. */
function afterSeparator(msg: Buffer, pos: number): number {
  if (msg[pos] === 0x0a) return pos + 1;
  return msg[pos] === 0x0d && msg[pos + 1] === 0x0a ? pos + 2 : pos;
}

/** From pos, past up to max whole lines: where they end and how many there were (the rest of msg when fewer). */
function countLines(msg: Buffer, pos: number, max: number): { pos: number; n: number } {
  let n = 0;
  while (n < max) {
    const nl = msg.indexOf(0x0a, pos);
    if (nl < 0) return { pos: msg.length, n };
    pos = nl + 1;
    n++;
  }
  return { pos, n };
}
