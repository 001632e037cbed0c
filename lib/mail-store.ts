// Delivery into mymailbox files: what smtpmail does after DATA.
//
// Deliveries are committed in rounds: everything queued while the previous round was in
// flight is appended to its mailbox files, then made durable by ONE fsync of the delivery
// journal (journal.ts), whatever the number of mailboxes; only then do the 250s go out.
// Mailbox files are fsync'd in a checkpoint every few hundred milliseconds, after which the
// journal is emptied. Appends happen under the mailbox's write lock (lock.ts); popserver
// takes the same lock for the last step of its rewrite, so an append never lands in a file
// being replaced. Under load the lock is kept from one round to the next (taking and
// dropping it every round was the largest storage cost): it is let go when deliveries
// pause, or within HOLD_MS once popserver leaves its "wanted" marker.
import { accessSync, closeSync, constants, fstatSync, ftruncateSync, lstatSync, mkdirSync, openSync, readSync, statSync } from "node:fs";
import { closeFd, datasync, INLINE_WRITE_MAX, openFd, readAtSync, setAside, syncDir, writevAll, writevAllSync } from "./fsio.ts";
import { dirname } from "node:path";
import { BOOT, dropLockTemp, foreignHolder, isWanted, tryLock, unwant, want, type Lock } from "./lock.ts";
import { claimOrphanJournals, Journal, journalBoot, newJournalPath, PREALLOCATED, readJournal, removeJournal, type JournalEntry } from "./journal.ts";
import { mailboxPath, writeLockPath } from "./paths.ts";
import { isSafeUserName } from "./users.ts";
import { TERMINATOR } from "./mailbox.ts";
import { messageHash } from "./message-hash.ts";
import { scanFile } from "./mailbox-scanner.ts";
import { defer, notePlacement, readDeferred, removeDeferred, takeOverDeferred, type Deferred } from "./deferred.ts";

export interface MailStore {
  /** Appends the record to each user's mailbox; resolves once it is on disk everywhere. */
  deliver(users: readonly string[], record: Buffer): Promise<void>;
  /**
   * Why the user's mailbox cannot take mail now (asked at RCPT), or null: such a recipient
   * is better refused alone, up front, than deferred after DATA.
   */
  unavailable?(user: string): string | null;
}

export interface StoreStats {
  messages: number;
  fsyncs: number;
  batches: number;
  /** Times a mailbox write lock was taken (kept across rounds while busy). */
  locks: number;
  /** Journal files made (each is 4 MiB of zeros written and fsync'd). */
  journals: number;
  /** Checkpoints done: mailboxes fsync'd and a journal emptied. */
  checkpoints: number;
  /** Milliseconds from the start of each commit round to its 250s, summed over the rounds. */
  roundMs: number;
  /** Of that, milliseconds waiting for the journal write and its fsync. */
  journalMs: number;
}

interface Pending {
  user: string;
  record: Buffer;
  /** When it was queued: a mailbox locked longer than the lock timeout fails it. */
  since: number;
  resolve: () => void;
  reject: (e: Error) => void;
  /** Told where the record goes, right before it is written there, and again once it is. */
  placing?: (ino: number, offset: number, written: boolean) => void;
}

interface OpenBox {
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

const CHECKPOINT_MS = 300;
/** A checkpoint starts early once a journal is this full: past its zero-filled size, writes grow the file (slower). */
const CHECKPOINT_BYTES = PREALLOCATED / 2;
const CLOSE_IDLE_MS = 30_000;
/** Mailbox descriptors kept open between deliveries, at most (each is one of the process's descriptors). */
export const MAX_OPEN_BOXES = 64;
/** How long a kept lock goes without checking for a waiting popserver. */
const HOLD_MS = 5;
/** How long a lock let go for a waiter stays untouched at most while the waiter has not taken it (see append). */
const YIELD_MS = 25;
/** A lock is let go this long after deliveries pause. */
const LINGER_MS = 5;
/** Deferred copies are tried again after this long, doubled after each try that stores none, up to RETRY_MAX_MS. */
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 60_000;

export class FileMailStore implements MailStore {
  readonly stats: StoreStats = { messages: 0, fsyncs: 0, batches: 0, locks: 0, journals: 0, checkpoints: 0, roundMs: 0, journalMs: 0 };
  private queue: Pending[] = [];
  private running = false;
  private readonly boxes = new Map<string, OpenBox>();
  /** The boxes holding their write lock, and their users: looked at after every round, where `boxes` may hold a thousand. */
  private readonly lockedBoxes = new Map<OpenBox, string>();
  /** Mailboxes whose lock we asked another holder for (a "wanted" marker we left). */
  private readonly wanting = new Set<string>();
  private journal: Journal | null = null;
  /**
   * The other journal file: a checkpoint switches rounds over to it and empties the one it
   * retires, which becomes the spare. Two files made once, reused for the process's life.
   */
  private spare: Journal | null = null;
  /** The journal a checkpoint is emptying: it becomes the spare, so no new one is made meanwhile. */
  private retiring: Journal | null = null;
  private makingSpare: Promise<void> | null = null;
  /**
   * Per directory, a count bumped whenever a name in it may not be on disk yet (made here, or
   * left by a holder that died), and the count the last completed fsync covered. A directory
   * not synced yet by this process is synced once: a process killed between making a name
   * and syncing it leaves nothing that says so.
   */
  private readonly dirChanges = new Map<string, number>();
  private readonly dirSynced = new Map<string, number>();
  /** The round being committed, if any: a retired journal is closed only after it. */
  private currentRound: Promise<number> | null = null;
  private lastCheckpoint = now();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private checkpointing: Promise<void> | null = null;
  private lingerTimer: ReturnType<typeof setTimeout> | null = null;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;
  /** Boxes retired with appends not yet fsync'd: the next checkpoint fsyncs them. */
  private retiredDirty: OpenBox[] = [];
  /** Files of copies deferred by this process (deferred.ts), still to be delivered. */
  private readonly deferred = new Set<string>();
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryDelay = RETRY_FIRST_MS;
  private retrying = false;
  private closed = false;

  constructor(
    private readonly root: string,
    private readonly warn: (msg: string) => void = () => {},
    private readonly lockTimeoutMs = 30_000,
  ) {}

  /** `placing`, if given, is told where each copy goes right before it is written there, and again once it is. */
  deliver(users: readonly string[], record: Buffer, placing?: (user: string, ino: number, offset: number, written: boolean) => void): Promise<void> {
    const since = now();
    const one = (user: string) =>
      new Promise<void>((resolve, reject) => this.queue.push({ user, record, since, resolve, reject, placing: placing && ((ino, offset, written) => placing(user, ino, offset, written)) }));
    // The usual single recipient skips the bookkeeping: fewer hops before its 250 goes out.
    const done = users.length === 1 ? one(users[0]!) : this.deliverEach(users, record, one);
    this.kick();
    return done;
  }

  /**
   * Several recipients: when some copies are stored and others fail, the failed ones are
   * deferred (written aside durably, delivered later) and the message is accepted; a 451 made
   * the client send it again and the others got it twice. Refused only if none was stored,
   * or if the deferral itself fails.
   */
  private async deliverEach(users: readonly string[], record: Buffer, one: (user: string) => Promise<void>): Promise<void> {
    const results = await Promise.allSettled(users.map(one));
    const failed = users.filter((_, i) => results[i]!.status === "rejected");
    if (!failed.length) return;
    const error = (results.find((r) => r.status === "rejected") as PromiseRejectedResult).reason as Error;
    if (failed.length === users.length) throw error;
    try {
      this.deferred.add(await defer(this.root, failed, record));
    } catch (e) {
      this.warn(`cannot defer the copies for ${failed.join(", ")}: ${(e as Error).message}`);
      throw error;
    }
    this.warn(`delivery to ${failed.join(", ")} deferred, to be tried again: ${error.message}`);
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this.retrying || this.closed || !this.deferred.size) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.retryDeferred();
    }, this.retryDelay);
  }

  /** One pass over the deferred files; each is removed once its copies are stored (or deferred anew, for those still failing). */
  private async retryDeferred(): Promise<void> {
    this.retrying = true;
    let stored = false;
    try {
      for (const path of [...this.deferred]) {
        if (this.closed) break;
        let d;
        try {
          d = readDeferred(path);
        } catch (e) {
          this.warn(`cannot read deferred copies ${path}: ${(e as Error).message}`);
          continue;
        }
        if (!d) {
          this.warn(`${path} is not a deferred message; left alone`);
          this.deferred.delete(path);
          continue;
        }
        try {
          const users = await this.notYetPlaced(d);
          const note = (user: string, ino: number, offset: number, written: boolean) => {
            try {
              notePlacement(path, user, ino, offset, written);
            } catch (e) {
              // Then a kill right after the write could bring this copy twice; never lose it.
              this.warn(`cannot note where a deferred copy goes in ${path}: ${(e as Error).message}`);
            }
          };
          if (users.length) await this.deliver(users, d.record, d.notable ? note : undefined);
        } catch {
          continue; // stays for the next pass
        }
        removeDeferred(path);
        this.deferred.delete(path);
        stored = true;
      }
    } finally {
      this.retrying = false;
    }
    this.retryDelay = stored ? RETRY_FIRST_MS : Math.min(this.retryDelay * 2, RETRY_MAX_MS);
    this.scheduleRetry();
  }

  /**
   * The users of a deferred file whose copy is not in their mailbox yet. A copy noted as about
   * to be written (by this process or one killed since) and found at that place is there:
   * its mailbox is fsync'd, as its journal entry may never have been written. A copy noted as
   * written in this boot and not at its place went with a file replaced since (a POP3
   * rewrite, or moved away; ext4 may give the new file the old inode number), carried over
   * or deleted: its filesystem is synced, and it is not delivered again (mail deleted over
   * POP3 meanwhile came back, helper-35/36). Any other noted copy counts as there if the
   * mailbox holds the message at all (a kill between the write and its "done" note, then a
   * rewrite that deleted it, still brings it back). One never noted is delivered.
   */
  private async notYetPlaced(d: Deferred): Promise<string[]> {
    const left: string[] = [];
    for (const user of d.users) {
      const at = d.placed.get(user);
      const box = mailboxPath(this.root, user);
      if (!at) left.push(user);
      else if (atItsPlace(box, at.ino, at.offset, d.record) === "there") await syncDir(box);
      else if (BOOT && at.doneIn === BOOT && (await this.syncFileSystem())) continue;
      else if (!(await messageCounts(box)).has(messageHash(d.record.subarray(0, d.record.length - TERMINATOR.length)))) left.push(user);
    }
    return left;
  }

  /**
   * syncfs(2) of the mail root's filesystem, which (unlike sync(2)) reports write errors; Bun
   * has no call of its own for it. False when it failed or could not be run.
   */
  private async syncFileSystem(): Promise<boolean> {
    try {
      return (await Bun.spawn(["sync", "-f", this.root], { stdio: ["ignore", "ignore", "ignore"] }).exited) === 0;
    } catch {
      return false;
    }
  }

  unavailable(user: string): string | null {
    // A mailbox written to lately is fine: no system call for the busy ones.
    if (this.boxes.has(user)) return null;
    const path = mailboxPath(this.root, user);
    try {
      // A link in the mailbox's place (frank's pointing at bob's) would put mail in a file
      // locked under another name than its own: appends raced bob's POP3 rewrites and mail was
      // lost (helper-42). Postfix's local delivery refuses one as well.
      if (lstatSync(path, { throwIfNoEntry: false })?.isSymbolicLink()) return `${path} is a symbolic link`;
      const box = statSync(path, { throwIfNoEntry: false });
      if (box) {
        if (!box.isFile()) return `${path} is not a file`;
        accessSync(path, constants.W_OK);
        // The lock file is made beside the mailbox: a directory we cannot write fails there.
        accessSync(dirname(path), constants.W_OK);
        const lockPath = writeLockPath(this.root, user);
        if (lstatSync(lockPath, { throwIfNoEntry: false })?.isFile() === false) return `${lockPath} is not a lock file`;
        // Refused here, alone, rather than after the others got their copy (DATA would
        // wait for the lock, then fail the whole message with 451, and every retry would
        // give them another).
        const host = foreignHolder(lockPath);
        return host ? `${path} is locked from another host (${host})` : null;
      }
      // No mailbox yet: it is made in the user's directory, itself made in the root if
      // missing. (A file in the directory's place failed the stat above: ENOTDIR.)
      const dir = dirname(path);
      accessSync(statSync(dir, { throwIfNoEntry: false }) ? dir : this.root, constants.W_OK);
      return null;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    }
  }

  /** Resolves when no delivery is in flight, everything is checkpointed and no lock is kept. */
  async idle(): Promise<void> {
    while (this.running || this.queue.length || this.checkpointing) await Bun.sleep(2);
    // Through the same slot as the rounds' checkpoints, so two never run at once.
    this.startCheckpoint();
    await this.checkpointing;
    if (!this.running) this.releaseLocks();
  }

  /** Closes files and removes this process's (empty) journals. */
  async close(): Promise<void> {
    // Deferred copies stay on disk; the next start delivers them.
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.idle();
    if (this.timer) clearTimeout(this.timer);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.releaseLocks();
    for (const [user, b] of this.boxes) {
      this.retire(user, b);
      dropLockTemp(writeLockPath(this.root, user));
    }
    await this.makingSpare;
    for (const j of [this.journal, this.spare]) {
      if (!j) continue;
      j.close();
      removeJournal(j.path);
    }
    this.journal = this.spare = null;
  }

  /** The journal rounds write to; a spare is made beside it for the next checkpoint. */
  private async activeJournal(): Promise<Journal> {
    if (!this.journal && this.spare) {
      this.journal = this.spare;
      this.spare = null;
    }
    if (!this.journal) {
      this.stats.journals++;
      const made = await Journal.create(newJournalPath(this.root));
      if (this.journal) this.keepOrDrop(made);
      else this.journal = made;
    }
    if (!this.spare && !this.makingSpare && !this.retiring) {
      this.stats.journals++;
      this.makingSpare = Journal.create(newJournalPath(this.root))
        .then((j) => this.keepOrDrop(j), (e) => this.warn(`cannot make a delivery journal: ${(e as Error).message}`))
        .finally(() => (this.makingSpare = null));
    }
    return this.journal;
  }

  private keepOrDrop(j: Journal): void {
    if (!this.spare) this.spare = j;
    else {
      j.close();
      removeJournal(j.path);
    }
  }

  /**
   * At start-up, before serving: puts back every journalled copy that is not in its
   * mailbox, which happens when the machine crashed before the mailbox was fsync'd.
   * Presence is judged by content, not by the file's inode: a POP3 rewrite after such a
   * crash copies the file as it is and so cannot have saved the lost copy. (The price: a
   * copy deleted by POP3 in the instants before a machine crash may come back; mail is
   * never lost.) Returns how many copies were put back.
   *
   * A journal of this boot was left by a process that died while the machine ran on: every
   * copy it names was written to its mailbox before the entry (the page cache keeps it), so
   * a copy missing now was taken out since, by POP3 or by hand. Those mailboxes are only
   * fsync'd. Putting such copies back made mail deleted over POP3 while smtpmail was down
   * come back at its restart (33 of 70,023 in a kill -9 stress run, helper-26).
   */
  async recover(): Promise<number> {
    let restored = 0;
    for (const path of claimOrphanJournals(this.root)) {
      if (BOOT && journalBoot(path) === BOOT && (await this.syncMailboxesOf(readJournal(path)))) {
        removeJournal(path);
        continue;
      }
      // Per user, for files replaced since: how many copies of each message the mailbox
      // holds that no entry has claimed yet (identical messages are counted, not just seen).
      const unclaimed = new Map<string, Map<number, number>>();
      for (const e of readJournal(path)) {
        if (!isSafeUserName(e.user)) continue;
        const box = mailboxPath(this.root, e.user);
        const place = atItsPlace(box, e.ino, e.offset, e.record, e.birth);
        if (place === "there") continue;
        if (place === "replaced") {
          let counts = unclaimed.get(e.user);
          if (!counts) unclaimed.set(e.user, (counts = await messageCounts(box)));
          const hash = messageHash(e.record.subarray(0, e.record.length - TERMINATOR.length));
          const left = counts.get(hash) ?? 0;
          if (left > 0) {
            counts.set(hash, left - 1);
            continue;
          }
        }
        await this.appendWaiting(e.user, [e.record]);
        restored++;
      }
      await this.checkpoint();
      removeJournal(path);
    }
    this.releaseLocks();
    if (restored) this.warn(`smtpmail: recovered ${restored} message copies from the delivery journal`);
    // Left by a process that is gone: delivered once serving, not before (a mailbox may still be locked).
    for (const path of takeOverDeferred(this.root)) this.deferred.add(path);
    if (this.deferred.size) this.warn(`smtpmail: ${this.deferred.size} deferred message(s) to deliver`);
    this.scheduleRetry();
    // Made now rather than by the first round, whose clients would wait for it.
    await this.activeJournal();
    await this.makingSpare;
    return restored;
  }

  private kick(): void {
    if (this.lingerTimer) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = null;
    }
    if (!this.running) void this.run();
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length) {
        const batch = this.queue;
        this.queue = [];
        this.currentRound = this.round(batch);
        const placed = await this.currentRound;
        this.currentRound = null;
        this.yieldWantedLocks();
        if (now() - this.lastCheckpoint >= CHECKPOINT_MS || (this.journal?.bytes ?? 0) > CHECKPOINT_BYTES) this.startCheckpoint();
        // Everything waits on a busy mailbox lock (a POP3 rewrite): do not spin.
        if (placed === 0 && this.queue.length) await Bun.sleep(2);
      }
    } finally {
      this.running = false;
      this.currentRound = null;
    }
    this.lingerTimer ??= setTimeout(() => {
      this.lingerTimer = null;
      if (!this.running) this.releaseLocks();
    }, LINGER_MS);
    if (!this.timer && (this.retiredDirty.length || [...this.boxes.values()].some((b) => b.dirty))) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.startCheckpoint();
      }, CHECKPOINT_MS);
    }
  }

  /** Checkpoints run beside the commit rounds, never delaying a 250. */
  private startCheckpoint(): void {
    if (this.checkpointing) return;
    this.lastCheckpoint = now();
    this.checkpointing = this.checkpoint()
      .catch((e) => {
        // The copies stay in the journal, which is kept on disk for recovery; try again.
        this.warn(`checkpoint failed (will retry): ${(e as Error).message}`);
        this.timer ??= setTimeout(() => {
          this.timer = null;
          this.startCheckpoint();
        }, CHECKPOINT_MS);
      })
      .finally(() => {
        this.checkpointing = null;
      });
  }

  /** Commits one round; returns how many copies it placed. */
  private async round(batch: Pending[]): Promise<number> {
    const started = now();
    const byUser = new Map<string, Pending[]>();
    for (const p of batch) {
      const list = byUser.get(p.user);
      if (list) list.push(p);
      else byUser.set(p.user, [p]);
    }
    const entries: JournalEntry[] = [];
    const placed: Pending[] = [];
    const place = async ([user, items]: [string, Pending[]]) => {
      try {
        const placing = items.some((p) => p.placing) ? (ino: number, offsets: number[], written: boolean) => items.forEach((p, i) => p.placing?.(ino, offsets[i]!, written)) : undefined;
        const done = await this.append(user, items.map((p) => p.record), placing);
        if (!done) {
          // Locked by a POP3 rewrite: the other mailboxes go on; these wait for a later round.
          const t = now();
          for (const p of items) {
            if (t - p.since > this.lockTimeoutMs) {
              this.unwant(user);
              p.reject(new Error(`timed out waiting for the lock of ${user}'s mailbox`));
            } else this.queue.push(p);
          }
          return;
        }
        items.forEach((p, i) => entries.push({ user, ino: done.ino, birth: done.birth, offset: done.offsets[i]!, record: p.record }));
        placed.push(...items);
      } catch (e) {
        this.warn(`delivery to ${user} failed: ${(e as Error).message}`);
        for (const p of items) p.reject(e as Error);
      }
    };
    const locked: [string, Pending[]][] = [];
    const unlocked: [string, Pending[]][] = [];
    for (const group of byUser) (this.boxes.get(group[0])?.lock ? locked : unlocked).push(group);
    // Mailboxes whose lock must be taken (and file maybe opened again: after a POP3 rewrite,
    // or closed while idle) wait on the thread pool: all at once, none behind another.
    const opening = unlocked.length ? Promise.all(unlocked.map(place)) : null;
    // The others one after another: each await lets the last round's 250s go out first,
    // which mattered more than starting this round's fsync sooner (all at once: -20 %).
    for (const group of locked) await place(group);
    if (opening) await opening;
    if (!placed.length) return 0;
    try {
      const journal = await this.activeJournal();
      const syncing = now();
      await journal.append(entries);
      const done = now();
      this.stats.journalMs += done - syncing;
      this.stats.roundMs += done - started;
      this.stats.fsyncs++;
      this.stats.batches++;
      this.stats.messages += placed.length;
      for (const p of placed) p.resolve();
    } catch (e) {
      this.warn(`delivery journal write failed: ${(e as Error).message}`);
      for (const p of placed) p.reject(e as Error);
    }
    return placed.length;
  }

  /**
   * Makes sure the copies a dead process of this boot wrote are on the disk before its journal
   * goes: the bytes are in the page cache, not yet surely on the disk. A mailbox still at its
   * place as the inode (or inodes: a POP3 rewrite between two rounds) the entries name is
   * fsync'd. One that is not (moved away, replaced, removed) may hold its copies under
   * another name: the whole filesystem is synced. Returns false when that could not be done;
   * the caller then replays by content (duplicates, not loss).
   */
  private async syncMailboxesOf(entries: JournalEntry[]): Promise<boolean> {
    const named = new Map<string, JournalEntry[]>();
    for (const e of entries) {
      if (!isSafeUserName(e.user)) continue;
      const list = named.get(e.user);
      if (list) list.push(e);
      else named.set(e.user, [e]);
    }
    const atPlace: string[] = [];
    let elsewhere = false;
    for (const [user, list] of named) {
      const box = mailboxPath(this.root, user);
      let st: { ino: number; birthtimeMs: number } | undefined;
      try {
        st = statSync(box);
      } catch {}
      const here = list.filter((e) => st && sameIncarnation(st, e.ino, e.birth));
      if (here.length) atPlace.push(box);
      if (here.length < list.length) elsewhere = true;
    }
    try {
      // A mailbox moved to another filesystem was copied there by whoever moved it.
      if (elsewhere) {
        if (!(await this.syncFileSystem())) throw new Error("sync -f failed");
      } else for (const box of atPlace) await syncDir(box);
      return true;
    } catch (e) {
      // Linux reports a writeback error to one fsync only: a retry could pass without the data.
      this.warn(`could not sync the mailboxes of a journal (${(e as Error).message}): replaying it`);
      return false;
    }
  }

  /** append() that waits for the lock (recovery, before serving). */
  private async appendWaiting(user: string, records: Buffer[]): Promise<void> {
    const deadline = now() + this.lockTimeoutMs;
    while (!(await this.append(user, records))) {
      if (now() > deadline) throw new Error(`timed out waiting for the lock of ${user}'s mailbox`);
      await Bun.sleep(5);
    }
  }

  /**
   * Appends records to a mailbox under its write lock; not yet fsync'd. Returns null,
   * without waiting, when the lock is held by someone else (or was just let go for them).
   */
  private async append(user: string, records: Buffer[], placing?: (ino: number, offsets: number[], written: boolean) => void): Promise<{ ino: number; birth: number; offsets: number[] } | null> {
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
      box = await this.lockAndOpen(user);
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
   * Takes the mailbox's write lock and makes sure the box's descriptor is the current file
   * (a POP3 rewrite renames a new file over it) and knows its size. Returns the box, in use
   * and holding the lock, or null if the lock is someone else's.
   */
  private async lockAndOpen(user: string): Promise<OpenBox | null> {
    const path = mailboxPath(this.root, user);
    const lockPath = writeLockPath(this.root, user);
    // A directory made here is synced into the root before anything is acknowledged in it.
    if (!this.boxes.has(user) && mkdirSync(dirname(path), { recursive: true }) !== undefined) this.dirChanged(dirname(dirname(path)));
    // Linked from one temp file kept in the root, as popserver's locks are: one link() per
    // lock. A temp file per mailbox was made again each time a mailbox was closed (past 64
    // open, or idle), and with 1000 users that was a third of smtpmail's time (helper-68).
    let lock: Lock | null;
    try {
      lock = tryLock(lockPath, false, this.root);
    } catch (e) {
      // The user's directory removed while its box stayed open here (an `rm -rf` by hand):
      // made again, as for a first delivery. Every message to the user failed with 451 until
      // the idle box was closed, 30 s later (helper-83).
      if ((e as NodeJS.ErrnoException).code !== "ENOENT" || mkdirSync(dirname(path), { recursive: true }) === undefined) throw e;
      this.dirChanged(dirname(dirname(path)));
      lock = tryLock(lockPath, false, this.root);
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
        const { fd, created } = await openMailbox(path);
        const st = fstatSync(fd);
        // A FIFO opened read-write does not block the open, but writes past its 64 KiB would
        // block the event loop: only a regular file is a mailbox.
        if (!st.isFile()) {
          await closeFd(fd);
          throw new Error(`${path} is not a regular file`);
        }
        // Whatever the file holds is looked at before the first append.
        // In use from the start: closeIdleBoxes() may run while the directory is synced, and
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
          for (const dir of [dirname(dirname(path)), dirname(path)]) {
            const gen = this.dirChanges.get(dir) ?? 0;
            if ((this.dirSynced.get(dir) ?? -1) >= gen) continue;
            await syncDir(dir);
            // Only what was made before the fsync began is covered by it.
            if ((this.dirSynced.get(dir) ?? -1) < gen) this.dirSynced.set(dir, gen);
          }
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

  private dirChanged(dir: string): void {
    this.dirChanges.set(dir, (this.dirChanges.get(dir) ?? 0) + 1);
  }

  /**
   * After a round: lets go of the locks not used for LINGER_MS, and of those popserver is
   * waiting for (checked every HOLD_MS).
   */
  private yieldWantedLocks(): void {
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
  private unwant(user: string): void {
    if (this.wanting.delete(user)) unwant(writeLockPath(this.root, user));
  }

  private releaseLocks(): void {
    for (const b of this.lockedBoxes.keys()) this.releaseLock(b);
  }

  private releaseLock(box: OpenBox): void {
    box.lock?.release();
    box.lock = null;
    this.lockedBoxes.delete(box);
  }

  private unuse(box: OpenBox): void {
    if (--box.users === 0 && box.retired) void closeFd(box.fd).catch(() => {});
  }

  /** Takes a box out of use; its descriptor closes once nothing is using it. */
  private retire(user: string, box: OpenBox): void {
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
    if (box.users === 0) void closeFd(box.fd).catch(() => {});
  }

  /** The checkpoint's work: the dirty mailboxes fsync'd, then the journal that covered them emptied and kept. */
  private async flushAndEmpty(dirty: OpenBox[], retired: Journal | null): Promise<void> {
    try {
      for (const b of dirty) await datasync(b.fd);
    } catch (e) {
      // Not durable after all: the retired journal stays on disk for recovery, closed only
      // once a round still syncing entries into it is done (else its fd could be reused).
      for (const b of dirty) b.dirty = true;
      if (retired) {
        await this.currentRound?.catch(() => 0);
        retired.close();
        this.warn(`delivery journal ${retired.path} kept for recovery at the next start`);
      }
      throw e;
    } finally {
      for (const b of dirty) this.unuse(b);
    }
    this.stats.fsyncs += dirty.length;
    if (!retired) return;
    // A round may still be syncing entries into it.
    await this.currentRound?.catch(() => 0);
    try {
      await retired.reset();
    } catch (e) {
      // Left on disk as it is: replaying it after a crash finds its copies in place.
      retired.close();
      throw e;
    }
    // No round switched over meanwhile: go on with it, keeping the spare.
    if (!this.journal) this.journal = retired;
    else this.keepOrDrop(retired);
  }

  /**
   * fsync every mailbox written since the last checkpoint, then empty the journal that
   * covered them. Rounds go on meanwhile into the spare journal, which the next checkpoint
   * retires in turn.
   */
  private async checkpoint(): Promise<void> {
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
    const retired = this.journal;
    this.journal = null;
    this.retiring = retired;
    try {
      await this.flushAndEmpty(dirty, retired);
    } finally {
      if (this.retiring === retired) this.retiring = null;
    }
    this.stats.checkpoints++;
    this.closeIdleBoxes();
  }

  /**
   * Closes the mailboxes not written for CLOSE_IDLE_MS, and past MAX_OPEN_BOXES the least
   * recently written, of those fsync'd and not in use. Again after CLOSE_IDLE_MS while any
   * stay open: closed only at a checkpoint, 120 mailboxes delivered to once stayed open
   * until the next delivery, and under a low descriptor limit new recipients got 451 for
   * good (helper-47).
   */
  private closeIdleBoxes(): void {
    const t = now();
    const idle = [...this.boxes].filter(([, b]) => !b.dirty && b.users === 0).sort((x, y) => x[1].lastUsed - y[1].lastUsed);
    let over = this.boxes.size - MAX_OPEN_BOXES;
    for (const [user, b] of idle) {
      if (over <= 0 && t - b.lastUsed <= CLOSE_IDLE_MS) break;
      this.retire(user, b);
      dropLockTemp(writeLockPath(this.root, user));
      over--;
    }
    if (this.boxes.size && !this.idleTimer && !this.closed) {
      this.idleTimer = setTimeout(() => {
        this.idleTimer = null;
        if (!this.closed) this.closeIdleBoxes();
      }, CLOSE_IDLE_MS);
      this.idleTimer.unref?.();
    }
  }
}

/** The file a journal entry names: its inode, and its birth time where both sides know one (entries of earlier versions do not). */
function sameIncarnation(st: { ino: number; birthtimeMs: number }, ino: number, birth = 0): boolean {
  return st.ino === ino && (!birth || !st.birthtimeMs || st.birthtimeMs === birth);
}

/**
 * Where a journalled copy stands: "there" (same file, same bytes, same place), "lost" (same
 * file, bytes missing: a machine crash before the checkpoint), or "replaced" (the file was
 * replaced since, by a POP3 rewrite: look for the copy by content). The same file is the
 * same inode born at the same time, where the entry says when (birth): by inode number alone,
 * a file two POP3 rewrites later that got the number back took the copy it carried over (at
 * another offset) for lost, and recovery stored it twice (helper-75).
 */
function atItsPlace(path: string, ino: number, offset: number, record: Buffer, birth = 0): "there" | "lost" | "replaced" {
  let st;
  try {
    st = statSync(path);
  } catch {
    return "replaced";
  }
  if (!sameIncarnation(st, ino, birth)) return "replaced";
  if (st.size < offset + record.length) return "lost";
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(record.length);
    readSync(fd, buf, 0, record.length, offset);
    return buf.equals(record) ? "there" : "lost";
  } finally {
    closeSync(fd);
  }
}

/** How many times each message (by content hash) is in a mailbox, for recovery. */
async function messageCounts(path: string): Promise<Map<number, number>> {
  const counts = new Map<number, number>();
  let fd: number;
  try {
    // Non-blocking: a FIFO in a mailbox's place must not hang recovery or the deferred retries.
    fd = await openFd(path, (constants.O_RDONLY | constants.O_NONBLOCK) as unknown as string);
  } catch {
    return counts;
  }
  try {
    if (!fstatSync(fd).isFile()) return counts;
    const index = (await scanFile(fd, 0, fstatSync(fd).size)).finish();
    for (let i = 0; i < index.count; i++) counts.set(index.hash(i), (counts.get(index.hash(i)) ?? 0) + 1);
    return counts;
  } finally {
    await closeFd(fd);
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
