// The mailbox files smtpmail has open, the write locks it holds on them, and the appends
// into them; mail-store.ts commits those appends in rounds and checkpoints them. Appends
// happen under the mailbox's write lock (lock.ts); popserver takes the same lock for the last
// step of its rewrite, so an append never lands in a file being replaced. Under load the lock
// is kept from one round to the next (taking and dropping it every round was the largest
// storage cost): it is let go when deliveries pause, or within HOLD_MS once popserver leaves
// its "wanted" marker. Nothing here runs by itself: the store says when a round is over
// (yieldWantedLocks), when deliveries paused (releaseLocks), what a checkpoint fsyncs
// (takeDirty, then unuse) and when to close idle mailboxes (closeIdle).
//
// Each open mailbox is a descriptor. How many stay open between deliveries (`keep`) is what
// the open-file limit's files reserve holds for them (mailboxRoom()); more are opened for a
// round only while the sockets leave room (counted in HeldFiles, as popserver's maildrops are).
// Past that, a new mailbox first closes the least recently written idle one; if every open
// one still waits for its checkpoint's fsync, the delivery waits for a later round (NoRoom)
// and the store checkpoints early. Under `ulimit -n 64` with 200 users, three messages in four
// got 451 (EMFILE) before (helper-105).
import { constants, fstatSync, ftruncateSync, mkdirSync, statSync, type Stats } from "node:fs";
import { closeFd, INLINE_WRITE_MAX, openFd, readAtSync, setAside, syncDir, writevAll, writevAllSync } from "./fsio.ts";
import { dirname } from "node:path";
import { dropLockTemp, isWanted, tryLock, unwant, want, type Lock } from "./lock.ts";
import { mailboxPath, writeLockPath } from "./paths.ts";
import { connectionRoom, HeldFiles, openFileLimit } from "./descriptors.ts";

export interface OpenBox {
  fd: number;
  ino: number;
  /** Birth time (fstat's birthtimeMs; 0 if the filesystem keeps none): journalled with ino. */
  birth: number;
  dev: number;
  /** File size after our last append; anything else means another writer was here. */
  knownSize: number;
  /** Look at the end of the file before the next append: another writer was here. */
  checkTail: boolean;
  dirty: boolean;
  lastUsed: number;
  /** Appends and checkpoints using fd right now: it is closed only when this is 0. */
  users: number;
  /** No longer in `boxes` (replaced by a POP3 rewrite, or idle): close fd when unused. */
  retired: boolean;
  /** The write lock, kept across rounds while deliveries keep coming. */
  lock: Lock | null;
  /** When the lock was taken, or last checked for a waiter. */
  lockCheckedAt: number;
  /** Let go for a waiter: do not take the lock again before this time. */
  yieldUntil: number;
}

/** Milliseconds on a clock that never jumps: waits and timeouts survive a change of the date. */
const now = () => performance.now();

export const CLOSE_IDLE_MS = 30_000;
/** Mailbox descriptors kept open between deliveries, at most (each is one of the process's descriptors). */
export const MAX_OPEN_BOXES = 64;

/**
 * Mailbox descriptors kept open between deliveries under an open-file limit: half of what
 * connectionRoom() leaves beside the sockets (the other half is for the journals, listeners,
 * the runtime's own and files open for a moment: a directory synced, a deferred copy), at
 * most MAX_OPEN_BOXES. 64 at `ulimit -n` 256 and up, 32 at 128, 16 at 64.
 */
export function mailboxRoom(limit: number | null): number {
  if (limit === null) return MAX_OPEN_BOXES;
  return Math.max(1, Math.min(MAX_OPEN_BOXES, Math.floor((limit - connectionRoom(limit).sockets) / 2)));
}

/** No descriptor for another mailbox until a checkpoint has fsync'd and closed some: the delivery waits for a later round. */
export class NoRoom extends Error {
  constructor(user: string, cause?: Error) {
    super(`no descriptor for ${user}'s mailbox yet${cause ? ` (${cause.message})` : ""}`);
  }
}

/** EMFILE (the process's descriptors) or ENFILE (the system's). */
export function outOfDescriptors(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  return code === "EMFILE" || code === "ENFILE";
}

/** Idle mailboxes closed at once when opening one failed with EMFILE or ENFILE, before the one retry. */
const EVICT_ON_EMFILE = 4;
/** How long a kept lock goes without checking for a waiting popserver. */
const HOLD_MS = 5;
/** How long a lock let go for a waiter stays untouched at most while the waiter has not taken it (see append). */
const YIELD_MS = 25;
/** A lock is let go this long after deliveries pause. */
export const LINGER_MS = 5;

export class OpenBoxes {
  private readonly boxes = new Map<string, OpenBox>();
  /** The boxes holding their write lock, and their users: looked at after every round, where `boxes` may hold a thousand. */
  private readonly lockedBoxes = new Map<OpenBox, string>();
  /** Mailboxes whose lock we asked another holder for (a "wanted" marker we left). */
  private readonly wanting = new Set<string>();
  /**
   * Per directory, a count bumped whenever a name in it may not be on disk yet (made here, or
   * left by a holder that died), and the count the last completed fsync covered. A directory
   * not synced yet by this process is synced once: a process killed between making a name
   * and syncing it leaves nothing that says so.
   */
  private readonly dirChanges = new Map<string, number>();
  private readonly dirSynced = new Map<string, number>();
  /** The directory fsyncs under way or waiting for a turn (syncChanges). */
  private readonly dirSyncing = new Map<string, Promise<void>>();
  /** Directory fsyncs holding a descriptor now, at most maxDirSyncs; the others wait here. */
  private dirSyncs = 0;
  private readonly maxDirSyncs: number;
  private readonly dirSyncWaiting: (() => void)[] = [];
  /** Boxes retired with appends not yet fsync'd: the next checkpoint fsyncs them. */
  private retiredDirty: OpenBox[] = [];
  /** Mailbox descriptors open, being opened (counted before the open) or being closed. */
  private fds = 0;
  /** Mailboxes kept open between deliveries, and opened without asking the server for room. */
  readonly keep: number;

  constructor(
    private readonly root: string,
    private readonly warn: (msg: string) => void,
    /** The store's: lockAndOpen counts each lock it takes there. */
    private readonly stats: { locks: number },
    /** Descriptors past `keep`, counted against the server's sockets (HeldFiles.spare). */
    private readonly held = new HeldFiles(false),
    fileLimit: number | null = openFileLimit(),
  ) {
    this.keep = mailboxRoom(fileLimit);
    // A quarter of the mailboxes' share: 4 at `ulimit -n 64`, 16 from 256 on.
    this.maxDirSyncs = Math.max(1, Math.floor(this.keep / 4));
  }

  /** Mailboxes open here (written to lately). */
  get size(): number {
    return this.boxes.size;
  }

  has(user: string): boolean {
    return this.boxes.has(user);
  }

  /** Whether the mailbox's write lock is kept here from an earlier round. */
  holdsLock(user: string): boolean {
    return !!this.boxes.get(user)?.lock;
  }

  /** Whether any mailbox has appends not yet fsync'd (the next checkpoint's work). */
  anyDirty(): boolean {
    return this.retiredDirty.length > 0 || [...this.boxes.values()].some((b) => b.dirty);
  }

  /**
   * Appends records to a mailbox under its write lock; not yet fsync'd. Returns null,
   * without waiting, when the lock is held by someone else (or was just let go for them).
   */
  async append(user: string, records: Buffer[], placing?: (ino: number, offsets: number[], written: boolean) => void): Promise<{ ino: number; birth: number; offsets: number[] } | null> {
    let box: OpenBox | null | undefined = this.boxes.get(user);
    // Holding the lock keeps popserver out, not a person or program that ignores it: the
    // file is still checked, as it is after taking the lock.
    if (box?.lock && !this.sameFile(user, box)) box = undefined;
    if (box?.lock) box.users++;
    else {
      // Let go for popserver: left alone until it has taken the lock (its marker goes then)
      // rather than for a fixed time, which every message to this user waited out (helper-68).
      if (box && now() < box.yieldUntil) {
        if (isWanted(writeLockPath(this.root, user))) return null;
        box.yieldUntil = 0;
      }
      box = await this.lockAndOpenRetrying(user);
      if (!box) return null;
    }
    // Where this append starts and what it writes, once known: a failed one is cut back.
    let start = -1;
    let parts: Buffer[] = [];
    try {
      let size = box.knownSize;
      let prefix = "";
      if (box.checkTail) {
        box.checkTail = false;
        const path = mailboxPath(this.root, user);
        if (size > 0) prefix = repairTail(box.fd, size, path, this.warn);
        size = fstatSync(box.fd).size;
      }
      const offsets: number[] = [];
      let at = size + prefix.length;
      for (const r of records) {
        offsets.push(at);
        at += r.length;
      }
      placing?.(box.ino, offsets, false);
      start = size;
      parts = prefix ? [Buffer.from(prefix), ...records] : records;
      // A large append (a big message, or many) goes to the thread pool, not the event loop.
      if (parts.reduce((n, b) => n + b.length, 0) > INLINE_WRITE_MAX) await writevAll(box.fd, parts);
      else writevAllSync(box.fd, parts);
      placing?.(box.ino, offsets, true);
      box.knownSize = at;
      box.dirty = true;
      box.lastUsed = now();
      return { ino: box.ino, birth: box.birth, offsets };
    } catch (e) {
      // Maybe a partial write (a full disk): cut off at once, under the lock still held, so
      // the file holds whole messages only; it stayed until the next append moved it aside
      // (helper-83). Only if what follows `start` is ours alone: a program that ignores the
      // lock may have appended a whole message there first (helper-90). Otherwise, or if the
      // cut fails, whoever takes the lock next looks at the tail first.
      box.knownSize = -1;
      // Looked at again before the next append all the same (a hand-written last "." wants its newline again).
      box.checkTail = true;
      if (start >= 0) {
        try {
          const after = fstatSync(box.fd).size - start;
          const ours = Buffer.concat(parts);
          if (after >= 0 && after <= ours.length && readAtSync(box.fd, start, after).equals(ours.subarray(0, after))) {
            ftruncateSync(box.fd, start);
            box.knownSize = start;
          }
        } catch {}
      }
      this.releaseLock(box);
      throw e;
    } finally {
      this.unuse(box);
    }
  }

  /**
   * Whether the box's descriptor is still the file at the mailbox's path; notes a size changed
   * by someone else. By the path, not by the descriptor's link count: a file renamed away, or
   * replaced by a POP3 rewrite while a backup's hard link keeps it alive, still has links,
   * and a 250'd message appended to it would be lost to the user (helper-22).
   */
  private sameFile(user: string, box: OpenBox): boolean {
    const st = statSync(mailboxPath(this.root, user), { throwIfNoEntry: false });
    if (!st || st.ino !== box.ino || st.dev !== box.dev) {
      this.retire(user, box);
      return false;
    }
    if (st.size !== box.knownSize) {
      box.checkTail = true;
      box.knownSize = st.size;
    }
    return true;
  }

  /**
   * lockAndOpen(), once more after closing idle mailboxes if the system had no descriptor
   * for it (EMFILE, ENFILE: the sockets or files open for a moment took more than counted).
   * NoRoom while mailboxes of ours are open that a checkpoint will let close; otherwise the error.
   */
  private async lockAndOpenRetrying(user: string): Promise<OpenBox | null> {
    try {
      return await this.lockAndOpen(user);
    } catch (e) {
      if (!outOfDescriptors(e)) throw e;
      if ((await this.evict(EVICT_ON_EMFILE)) === 0) {
        if (this.fds > 0) throw new NoRoom(user, e as Error);
        throw e;
      }
    }
    try {
      return await this.lockAndOpen(user);
    } catch (e) {
      if (outOfDescriptors(e) && this.fds > 0) throw new NoRoom(user, e as Error);
      throw e;
    }
  }

  /**
   * Recovery (before serving): at most `keep` open, with no sockets to make room beside. Run
   * into EMFILE instead, a read of recovery's own met it first and took a carried-over copy
   * for missing: it was put back twice (helper-107).
   */
  recovering = false;

  /** Whether one more mailbox descriptor fits: within `keep`, or beside the sockets. */
  private fits(): boolean {
    return this.fds < this.keep || (!this.recovering && this.held.spare());
  }

  private countFds(n: number): void {
    this.fds += n;
    this.held.count = Math.max(0, this.fds - this.keep);
  }

  /** The open mailboxes that may be closed now (fsync'd, not in use), least recently written first. */
  private idleBoxes(): [string, OpenBox][] {
    return [...this.boxes].filter(([, b]) => !b.dirty && b.users === 0).sort((x, y) => x[1].lastUsed - y[1].lastUsed);
  }

  /** Closes up to `n` idle mailboxes, least recently written first, and waits for their descriptors to go. Returns how many. */
  private async evict(n: number): Promise<number> {
    const closing = this.idleBoxes()
      .slice(0, n)
      .map(([user, b]) => this.close(user, b));
    await Promise.all(closing);
    return closing.length;
  }

  /**
   * Room for one more mailbox descriptor, closing idle ones (least recently written first) if
   * none fits; false if every open one waits for its checkpoint or is in use. Counts the new
   * descriptor when true: the caller opens it at once or calls countFds(-1).
   */
  private async takeRoom(): Promise<boolean> {
    while (!this.fits()) if ((await this.evict(1)) === 0) return false;
    this.countFds(1);
    return true;
  }

  /**
   * Takes the mailbox's write lock and makes sure the box's descriptor is the current file
   * (a POP3 rewrite renames a new file over it) and knows its size. Returns the box, in use
   * and holding the lock, or null if the lock is someone else's.
   */
  private async lockAndOpen(user: string): Promise<OpenBox | null> {
    const path = mailboxPath(this.root, user);
    const lockPath = writeLockPath(this.root, user);
    // No lock taken (and let go again) for a mailbox that could not be opened anyway.
    if (!this.boxes.has(user) && !this.fits() && !this.idleBoxes().length) throw new NoRoom(user);
    // A directory made here is synced into the root before anything is acknowledged in it.
    if (!this.boxes.has(user) && mkdirSync(dirname(path), { recursive: true }) !== undefined) this.dirChanged(dirname(dirname(path)));
    // Linked from one temp file kept in the root, as popserver's locks are: one link() per
    // lock. A temp file per mailbox was made again each time a mailbox was closed (past 64
    // open, or idle), and with 1000 users that was a third of smtpmail's time (helper-68).
    let lock: Lock | null;
    try {
      lock = tryLock(lockPath, this.root);
    } catch (e) {
      // The user's directory removed while its box stayed open here (an `rm -rf` by hand):
      // made again, as for a first delivery. Every message to the user failed with 451 until
      // the idle box was closed, 30 s later (helper-83).
      if ((e as NodeJS.ErrnoException).code !== "ENOENT" || mkdirSync(dirname(path), { recursive: true }) === undefined) throw e;
      this.dirChanged(dirname(dirname(path)));
      lock = tryLock(lockPath, this.root);
    }
    if (!lock) {
      // Another smtpmail may be keeping it across busy rounds: ask, as popserver does.
      if (want(lockPath)) this.wanting.add(user);
      return null;
    }
    this.unwant(user);
    this.stats.locks++;
    try {
      let box = this.boxes.get(user);
      if (box && !this.sameFile(user, box)) box = undefined;
      if (!box) {
        if (!(await this.takeRoom())) throw new NoRoom(user);
        let opened: { fd: number; created: boolean };
        try {
          opened = await openMailbox(path);
        } catch (e) {
          this.countFds(-1);
          throw e;
        }
        const { fd, created } = opened;
        let st: Stats;
        try {
          st = fstatSync(fd);
        } catch (e) {
          await this.closeCounted(fd);
          throw e;
        }
        // A FIFO opened read-write does not block the open, but writes past its 64 KiB would
        // block the event loop: only a regular file is a mailbox.
        if (!st.isFile()) {
          await this.closeCounted(fd);
          throw new Error(`${path} is not a regular file`);
        }
        // Whatever the file holds is looked at before the first append.
        // In use from the start: closeIdle() may run while the directory is synced, and
        // must not close a descriptor about to be written.
        box = { fd, ino: st.ino, birth: st.birthtimeMs || 0, dev: st.dev, knownSize: st.size, checkTail: true, dirty: false, lastUsed: now(), users: 1, retired: false, lock: null, lockCheckedAt: 0, yieldUntil: 0 };
        this.boxes.set(user, box);
        // A file a POP3 rewrite left (empty or not) had its directory synced by popserver
        // before it let go of the lock (unless that fsync failed: an I/O error, not handled
        // here): syncing it again at every reopen cost an fsync per POP3 session (helper-68). A
        // name made here is synced, and each directory once per process.
        // Its directory's own name too: popserver makes a user's directory at a first login
        // without syncing the root (helper-73).
        if (created) for (const dir of [dirname(dirname(path)), dirname(path)]) this.dirChanged(dir);
        // Its holder died (popserver between its rename and the directory's fsync, another
        // smtpmail between making a name and syncing it): nothing says those names are on disk.
        if (lock.brokeStale) for (const dir of [dirname(dirname(path)), dirname(path)]) this.dirChanged(dir);
        try {
          for (const dir of [dirname(dirname(path)), dirname(path)]) await this.syncChanges(dir);
        } catch (e) {
          // Still noted: the next open syncs it again.
          this.retire(user, box);
          this.unuse(box);
          throw e;
        }
      } else box.users++;
      box.lock = lock;
      this.lockedBoxes.set(box, user);
      box.lockCheckedAt = now();
      return box;
    } catch (e) {
      lock.release();
      throw e;
    }
  }

  /**
   * fsyncs a directory if names may have been made in it since its last fsync. One at a time
   * per directory: first deliveries to many users each synced the mail root at once, a
   * descriptor each (EMFILE under `ulimit -n 64`, helper-105); one under way covers those made
   * before it began.
   */
  private async syncChanges(dir: string): Promise<void> {
    for (;;) {
      const gen = this.dirChanges.get(dir) ?? 0;
      if ((this.dirSynced.get(dir) ?? -1) >= gen) return;
      const under = this.dirSyncing.get(dir);
      if (under) {
        // Then looked at again: it covers our change if it counted it, else ours is next.
        await under.catch(() => {});
        continue;
      }
      // Its descriptor waits for a turn: the first deliveries to 20 new users at once held
      // 20 directories open beside their mailboxes (EMFILE at `ulimit -n 64`).
      const syncing = this.dirSyncTurn()
        .then(() => syncDir(dir))
        .finally(() => this.endDirSync())
        .then(() => {
          // Only what was made before the fsync began is covered by it (gen was counted sooner still).
          if ((this.dirSynced.get(dir) ?? -1) < gen) this.dirSynced.set(dir, gen);
        });
      this.dirSyncing.set(dir, syncing);
      try {
        await syncing;
      } finally {
        if (this.dirSyncing.get(dir) === syncing) this.dirSyncing.delete(dir);
      }
      return;
    }
  }

  private async dirSyncTurn(): Promise<void> {
    while (this.dirSyncs >= this.maxDirSyncs) await new Promise<void>((resolve) => this.dirSyncWaiting.push(resolve));
    this.dirSyncs++;
  }

  private endDirSync(): void {
    this.dirSyncs--;
    this.dirSyncWaiting.shift()?.();
  }

  private dirChanged(dir: string): void {
    this.dirChanges.set(dir, (this.dirChanges.get(dir) ?? 0) + 1);
  }

  /**
   * After a round: lets go of the locks not used for LINGER_MS, and of those popserver is
   * waiting for (checked every HOLD_MS).
   */
  yieldWantedLocks(): void {
    const t = now();
    for (const [b, user] of this.lockedBoxes) {
      if (t - b.lastUsed > LINGER_MS) {
        this.releaseLock(b);
        continue;
      }
      if (t - b.lockCheckedAt < HOLD_MS) continue;
      b.lockCheckedAt = t;
      if (isWanted(writeLockPath(this.root, user))) {
        this.releaseLock(b);
        b.yieldUntil = t + YIELD_MS;
      }
    }
  }

  /** Takes back our request for a lock; a failed unlink per lock taken cost 1 in 6 syscalls of a delivery. */
  unwant(user: string): void {
    if (this.wanting.delete(user)) unwant(writeLockPath(this.root, user));
  }

  releaseLocks(): void {
    for (const b of this.lockedBoxes.keys()) this.releaseLock(b);
  }

  private releaseLock(box: OpenBox): void {
    box.lock?.release();
    box.lock = null;
    this.lockedBoxes.delete(box);
  }

  unuse(box: OpenBox): void {
    if (--box.users === 0 && box.retired) void this.closeCounted(box.fd);
  }

  /** Closes a mailbox descriptor; it stops counting once closed. */
  private async closeCounted(fd: number): Promise<void> {
    try {
      await closeFd(fd);
    } catch {
    } finally {
      this.countFds(-1);
    }
  }

  /**
   * Takes a box out of use; its descriptor closes once nothing is using it (and, if it was
   * written since the last checkpoint, once that checkpoint has fsync'd it). Resolves when
   * the descriptor is closed, if that is now.
   */
  private retire(user: string, box: OpenBox): Promise<void> | undefined {
    if (this.boxes.get(user) === box) this.boxes.delete(user);
    this.releaseLock(box);
    if (box.retired) return;
    box.retired = true;
    // Appends not yet fsync'd are still covered by the journal only: the next checkpoint
    // must fsync them before it empties it, though the box is no longer in `boxes`.
    if (box.dirty) {
      box.users++;
      this.retiredDirty.push(box);
    }
    if (box.users === 0) return this.closeCounted(box.fd);
  }

  /**
   * For a checkpoint: the mailboxes written since the last one, no longer dirty and in use
   * until it unuse()s each once they are fsync'd (it marks them dirty again if that fails).
   */
  takeDirty(): OpenBox[] {
    const dirty = [...this.boxes.values()].filter((b) => b.dirty);
    for (const b of dirty) {
      b.dirty = false;
      b.users++;
    }
    // Already counted in use (retire() did it).
    for (const b of this.retiredDirty.splice(0)) {
      b.dirty = false;
      dirty.push(b);
    }
    return dirty;
  }

  /**
   * Closes the mailboxes not written for CLOSE_IDLE_MS, and past `keep` the least recently
   * written, of those fsync'd and not in use.
   */
  closeIdle(): void {
    const t = now();
    let over = this.boxes.size - this.keep;
    for (const [user, b] of this.idleBoxes()) {
      if (over <= 0 && t - b.lastUsed <= CLOSE_IDLE_MS) break;
      void this.close(user, b);
      over--;
    }
  }

  /** An idle mailbox closed (closeIdle, or to make room for another). */
  private close(user: string, b: OpenBox): Promise<void> | undefined {
    const closing = this.retire(user, b);
    dropLockTemp(writeLockPath(this.root, user));
    return closing;
  }

  /** Lets go of every lock and closes every mailbox (once unused): the store is closing. */
  closeAll(): void {
    this.releaseLocks();
    for (const [user, b] of this.boxes) void this.close(user, b);
  }
}

/**
 * Makes sure the file ends at a message boundary before appending. A crash in the middle of
 * an earlier append leaves an unterminated tail; appending after it would glue it onto the
 * next message. The tail was never acknowledged; it is moved aside (never silently dropped)
 * and cut off. Returns bytes to write first (a newline after a final "." without one).
 */
function repairTail(fd: number, size: number, path: string, warn: (m: string) => void): string {
  const end = (readAtSync(fd, Math.max(0, size - 4), Math.min(4, size))).toString("latin1");
  const whole = size <= 4;
  if (end.endsWith("\n.\r\n") || end.endsWith("\n.\n") || (whole && (end === ".\r\n" || end === ".\n"))) return "";
  // A hand-written (LF) file whose final "." lacks its newline. "\r\n." is different: our
  // records end in ".\r\n", so that is a torn append (maybe cut inside a "..x" line).
  if ((end.endsWith("\n.") && !end.endsWith("\r\n.")) || (whole && end === ".")) return "\n";
  // Search backwards for the last "." line.
  let cut = 0;
  const step = 64 * 1024;
  for (let hi = size; hi > 0; hi -= step) {
    const lo = Math.max(0, hi - step - 4);
    const chunk = readAtSync(fd, lo, hi - lo);
    const a = chunk.lastIndexOf("\n.\r\n");
    const b = chunk.lastIndexOf("\n.\n");
    if (a >= 0 || b >= 0) {
      cut = lo + Math.max(a >= 0 ? a + 4 : -1, b >= 0 ? b + 3 : -1);
      break;
    }
  }
  if (cut === 0 && size >= 2) {
    const head = (readAtSync(fd, 0, 3)).toString("latin1");
    if (head.startsWith(".\r\n")) cut = 3;
    else if (head.startsWith(".\n")) cut = 2;
  }
  const torn = readAtSync(fd, cut, size - cut);
  // fsync'd before the cut: the cut may reach the disk first otherwise. Inline, as the
  // append that follows is: a torn tail only exists after a crash, so this is rare.
  const aside = setAside(path, torn, true);
  ftruncateSync(fd, cut);
  warn(`${path}: unterminated tail of ${torn.length} bytes (interrupted write) moved to ${aside}`);
  return "";
}

/**
 * Opens a mailbox for appending, making it if there is none; says whether it made it. Never
 * through a symbolic link (O_NOFOLLOW), whatever was there at RCPT (see unavailable()).
 */
async function openMailbox(path: string): Promise<{ fd: number; created: boolean }> {
  const flags = constants.O_RDWR | constants.O_APPEND | constants.O_NOFOLLOW;
  const open = (extra: number) => openFd(path, (flags | extra) as unknown as string);
  try {
    return { fd: await open(0), created: false };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  try {
    return { fd: await open(constants.O_CREAT | constants.O_EXCL), created: true };
  } catch (e) {
    // Made by someone else meanwhile (an administrator): as new as ours, so synced all the same.
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    return { fd: await open(0), created: true };
  }
}
