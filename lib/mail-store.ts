// Delivery into mymailbox files: what smtpmail does after DATA.
//
// Deliveries are committed in rounds: everything queued while the previous round was in
// flight is appended to its mailbox files, then made durable by ONE fsync of the delivery
// journal (journal.ts), whatever the number of mailboxes; only then do the 250s go out.
// Mailbox files are fsync'd in a checkpoint every few hundred milliseconds, after which the
// journal is emptied. The mailbox files, their write locks (kept from one round to the next
// while busy) and the appends themselves are open-boxes.ts's.
import { accessSync, closeSync, constants, fstatSync, lstatSync, openSync, readSync, statSync } from "node:fs";
import { closeFd, datasync, openFd, syncDir } from "./fsio.ts";
import { dirname } from "node:path";
import { BOOT, foreignHolder } from "./lock.ts";
import { claimOrphanJournals, Journal, journalBoot, newJournalPath, PREALLOCATED, readJournal, removeJournal, type JournalEntry } from "./journal.ts";
import { mailboxPath, writeLockPath } from "./paths.ts";
import { isSafeUserName } from "./users.ts";
import { TERMINATOR } from "./mailbox.ts";
import { messageHash } from "./message-hash.ts";
import { scanFile } from "./mailbox-scanner.ts";
import { defer, notePlacement, readDeferred, removeDeferred, takeOverDeferred, type Deferred } from "./deferred.ts";
import { CLOSE_IDLE_MS, LINGER_MS, NoRoom, OpenBoxes, outOfDescriptors, type OpenBox } from "./open-boxes.ts";
import type { HeldFiles } from "./descriptors.ts";

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

/** Milliseconds on a clock that never jumps: waits and timeouts survive a change of the date. */
const now = () => performance.now();

const CHECKPOINT_MS = 300;
/** A checkpoint starts early once a journal is this full: past its zero-filled size, writes grow the file (slower). */
const CHECKPOINT_BYTES = PREALLOCATED / 2;
/** Deferred copies are tried again after this long, doubled after each try that stores none, up to RETRY_MAX_MS. */
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 60_000;

export class FileMailStore implements MailStore {
  readonly stats: StoreStats = { messages: 0, fsyncs: 0, batches: 0, locks: 0, journals: 0, checkpoints: 0, roundMs: 0, journalMs: 0 };
  private queue: Pending[] = [];
  private running = false;
  private readonly boxes: OpenBoxes;
  private journal: Journal | null = null;
  /**
   * The other journal file: a checkpoint switches rounds over to it and empties the one it
   * retires, which becomes the spare. Two files made once, reused for the process's life.
   */
  private spare: Journal | null = null;
  /** The journal a checkpoint is emptying: it becomes the spare, so no new one is made meanwhile. */
  private retiring: Journal | null = null;
  private makingSpare: Promise<void> | null = null;
  /** The round being committed, if any: a retired journal is closed only after it. */
  private currentRound: Promise<number> | null = null;
  private lastCheckpoint = now();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private checkpointing: Promise<void> | null = null;
  private lingerTimer: ReturnType<typeof setTimeout> | null = null;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;
  /** Files of copies deferred by this process (deferred.ts), still to be delivered. */
  private readonly deferred = new Set<string>();
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryDelay = RETRY_FIRST_MS;
  private retrying = false;
  private closed = false;
  /** A round found no descriptor for a mailbox: a checkpoint lets written ones close. */
  private roomWanted = false;

  constructor(
    private readonly root: string,
    private readonly warn: (msg: string) => void = () => {},
    private readonly lockTimeoutMs = 30_000,
    /** The server's count of descriptors beside its sockets (smtpmail's): mailboxes past the files reserve go there. */
    held?: HeldFiles,
  ) {
    this.boxes = new OpenBoxes(root, warn, this.stats, held);
  }

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
    if (!this.running) this.boxes.releaseLocks();
  }

  /** Closes files and removes this process's (empty) journals. */
  async close(): Promise<void> {
    // Deferred copies stay on disk; the next start delivers them.
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    // A pass already under way stops before its next file, but its delivery in flight must not
    // reopen a mailbox (and make a journal) after this has closed them (helper-97).
    while (this.retrying) await Bun.sleep(2);
    await this.idle();
    if (this.timer) clearTimeout(this.timer);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.boxes.closeAll();
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
    this.boxes.recovering = true;
    try {
      return await this.recoverJournals();
    } finally {
      this.boxes.recovering = false;
    }
  }

  private async recoverJournals(): Promise<number> {
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
    this.boxes.releaseLocks();
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
        this.boxes.yieldWantedLocks();
        const roomWanted = this.roomWanted && this.boxes.anyDirty();
        this.roomWanted = false;
        if (roomWanted || now() - this.lastCheckpoint >= CHECKPOINT_MS || (this.journal?.bytes ?? 0) > CHECKPOINT_BYTES) this.startCheckpoint();
        // Everything waits on a busy mailbox lock (a POP3 rewrite): do not spin.
        if (placed === 0 && this.queue.length) await Bun.sleep(2);
      }
    } finally {
      this.running = false;
      this.currentRound = null;
    }
    this.lingerTimer ??= setTimeout(() => {
      this.lingerTimer = null;
      if (!this.running) this.boxes.releaseLocks();
    }, LINGER_MS);
    if (!this.timer && this.boxes.anyDirty()) {
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
    // Back in the queue for a later round, unless they have waited the lock timeout already.
    const waitForLater = (user: string, items: Pending[], what: string) => {
      const t = now();
      for (const p of items) {
        if (t - p.since > this.lockTimeoutMs) {
          // Our "wanted" marker would keep another smtpmail yielding a lock we no longer wait for.
          this.boxes.unwant(user);
          this.warn(`delivery to ${user} failed: timed out waiting for ${what}`);
          p.reject(new Error(`timed out waiting for ${what}`));
        } else this.queue.push(p);
      }
    };
    const place = async ([user, items]: [string, Pending[]]) => {
      try {
        const placing = items.some((p) => p.placing) ? (ino: number, offsets: number[], written: boolean) => items.forEach((p, i) => p.placing?.(ino, offsets[i]!, written)) : undefined;
        const done = await this.boxes.append(user, items.map((p) => p.record), placing);
        if (!done) {
          // Locked by a POP3 rewrite: the other mailboxes go on; these wait for a later round.
          waitForLater(user, items, `the lock of ${user}'s mailbox`);
          return;
        }
        items.forEach((p, i) => entries.push({ user, ino: done.ino, birth: done.birth, offset: done.offsets[i]!, record: p.record }));
        placed.push(...items);
      } catch (e) {
        if (e instanceof NoRoom) {
          // Every mailbox descriptor the limit allows is written and not yet fsync'd: a
          // checkpoint (started after this round) fsyncs and closes them. Until then these
          // wait, as for a lock; a 451 here was mail the server could have taken (helper-105).
          this.roomWanted = true;
          waitForLater(user, items, `a descriptor for ${user}'s mailbox`);
          return;
        }
        this.warn(`delivery to ${user} failed: ${(e as Error).message}`);
        for (const p of items) p.reject(e as Error);
      }
    };
    const locked: [string, Pending[]][] = [];
    const unlocked: [string, Pending[]][] = [];
    for (const group of byUser) (this.boxes.holdsLock(group[0]) ? locked : unlocked).push(group);
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
    for (;;) {
      try {
        if (await this.boxes.append(user, records)) return;
      } catch (e) {
        if (!(e instanceof NoRoom) || now() > deadline) throw e;
        // Every mailbox descriptor the system gave holds copies put back and not yet fsync'd:
        // the checkpoint recover() does after each journal, sooner (it fsyncs and closes them).
        await this.checkpoint();
        continue;
      }
      if (now() > deadline) throw new Error(`timed out waiting for the lock of ${user}'s mailbox`);
      await Bun.sleep(5);
    }
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
      for (const b of dirty) this.boxes.unuse(b);
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
    const dirty = this.boxes.takeDirty();
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
   * Closes the idle mailboxes (OpenBoxes.closeIdle), and again after CLOSE_IDLE_MS while any
   * stay open: closed only at a checkpoint, 120 mailboxes delivered to once stayed open
   * until the next delivery, and under a low descriptor limit new recipients got 451 for
   * good (helper-47).
   */
  private closeIdleBoxes(): void {
    this.boxes.closeIdle();
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
  } catch (e) {
    // Not read for want of a descriptor says nothing of what it holds: taken for empty, its
    // copies were delivered again (helper-107).
    if (outOfDescriptors(e)) throw e;
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
