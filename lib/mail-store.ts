// Delivery into mymailbox files: what smtpmail does after DATA.
//
// Deliveries are committed in rounds: everything queued while the previous round was in
// flight is appended to its mailbox files, then made durable by ONE fsync of the delivery
// journal (journal.ts), whatever the number of mailboxes; only then do the 250s go out.
// Mailbox files are fsync'd in a checkpoint every few hundred milliseconds, after which the
// journal is emptied. The write lock (lock.ts) is held only while appending; popserver takes
// the same lock for the last step of its rewrite, so an append never lands in a file being
// replaced.
import { closeSync, fstatSync, ftruncateSync, mkdirSync, openSync, readSync, statSync } from "node:fs";
import { closeFd, datasync, openFd, readAtSync, syncDir, writeAllSync } from "./fsio.ts";
import { dirname } from "node:path";
import { acquireLock, dropLockTemp, tryLock } from "./lock.ts";
import { claimOrphanJournals, Journal, newJournalPath, readJournal, removeJournal, type JournalEntry } from "./journal.ts";
import { mailboxPath, writeLockPath } from "./paths.ts";
import { isSafeUserName } from "./users.ts";

export interface MailStore {
  /** Appends the record to each user's mailbox; resolves once it is on disk everywhere. */
  deliver(users: readonly string[], record: Buffer): Promise<void>;
}

export interface StoreStats {
  messages: number;
  fsyncs: number;
  batches: number;
}

interface Pending {
  user: string;
  record: Buffer;
  resolve: () => void;
  reject: (e: Error) => void;
}

interface OpenBox {
  fd: number;
  /** File size after our last append; anything else means another writer was here. */
  knownSize: number;
  dirty: boolean;
  lastUsed: number;
}

const CHECKPOINT_MS = 300;
const MAX_JOURNAL_BYTES = 64 << 20;
const CLOSE_IDLE_MS = 30_000;

export class FileMailStore implements MailStore {
  readonly stats: StoreStats = { messages: 0, fsyncs: 0, batches: 0 };
  private queue: Pending[] = [];
  private running = false;
  private readonly boxes = new Map<string, OpenBox>();
  private journal: Journal | null = null;
  private lastCheckpoint = Date.now();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private checkpointing: Promise<void> | null = null;

  constructor(
    private readonly root: string,
    private readonly warn: (msg: string) => void = () => {},
    private readonly lockTimeoutMs = 30_000,
  ) {}

  deliver(users: readonly string[], record: Buffer): Promise<void> {
    const all = users.map((user) => new Promise<void>((resolve, reject) => this.queue.push({ user, record, resolve, reject })));
    this.kick();
    return Promise.all(all).then(() => {});
  }

  /** Resolves when no delivery is in flight and everything is checkpointed (shutdown). */
  async idle(): Promise<void> {
    while (this.running || this.queue.length || this.checkpointing) await Bun.sleep(2);
    await this.checkpoint();
  }

  /** Closes files and removes this process's (empty) journal. */
  async close(): Promise<void> {
    await this.idle();
    if (this.timer) clearTimeout(this.timer);
    for (const [user, b] of this.boxes) {
      await closeFd(b.fd).catch(() => {});
      dropLockTemp(writeLockPath(this.root, user));
    }
    this.boxes.clear();
    if (this.journal) {
      this.journal.close();
      removeJournal(this.journal.path);
      this.journal = null;
    }
  }

  /**
   * At start-up, before serving: puts back every journalled copy whose mailbox bytes were
   * lost in a crash of the machine. Returns how many copies were put back.
   */
  async recover(): Promise<number> {
    let restored = 0;
    for (const path of claimOrphanJournals(this.root)) {
      for (const e of readJournal(path)) {
        if (!isSafeUserName(e.user)) continue;
        if (isPresent(mailboxPath(this.root, e.user), e.ino, e.offset, e.record)) continue;
        await this.append(e.user, [e.record]);
        restored++;
      }
      await this.checkpoint();
      removeJournal(path);
    }
    if (restored) this.warn(`smtpmail: recovered ${restored} message copies from the delivery journal`);
    return restored;
  }

  private kick(): void {
    if (!this.running) void this.run();
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length) {
        const batch = this.queue;
        this.queue = [];
        await this.round(batch);
        if (Date.now() - this.lastCheckpoint >= CHECKPOINT_MS || (this.journal?.bytes ?? 0) > MAX_JOURNAL_BYTES) this.startCheckpoint();
      }
    } finally {
      this.running = false;
    }
    if (!this.timer && [...this.boxes.values()].some((b) => b.dirty)) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.startCheckpoint();
      }, CHECKPOINT_MS);
    }
  }

  /** Checkpoints run beside the commit rounds, never delaying a 250. */
  private startCheckpoint(): void {
    if (this.checkpointing) return;
    this.lastCheckpoint = Date.now();
    this.checkpointing = this.checkpoint()
      .catch((e) => this.warn(`checkpoint failed: ${(e as Error).message}`))
      .finally(() => {
        this.checkpointing = null;
      });
  }

  private async round(batch: Pending[]): Promise<void> {
    const byUser = new Map<string, Pending[]>();
    for (const p of batch) {
      const list = byUser.get(p.user);
      if (list) list.push(p);
      else byUser.set(p.user, [p]);
    }
    const entries: JournalEntry[] = [];
    const placed: Pending[] = [];
    for (const [user, items] of byUser) {
      try {
        const { ino, offsets } = await this.append(user, items.map((p) => p.record));
        items.forEach((p, i) => entries.push({ user, ino, offset: offsets[i]!, record: p.record }));
        placed.push(...items);
      } catch (e) {
        this.warn(`delivery to ${user} failed: ${(e as Error).message}`);
        for (const p of items) p.reject(e as Error);
      }
    }
    if (!placed.length) return;
    try {
      this.journal ??= new Journal(newJournalPath(this.root));
      await this.journal.append(entries);
      this.stats.fsyncs++;
      this.stats.batches++;
      this.stats.messages += placed.length;
      for (const p of placed) p.resolve();
    } catch (e) {
      this.warn(`delivery journal write failed: ${(e as Error).message}`);
      for (const p of placed) p.reject(e as Error);
    }
  }

  /** Appends records to a mailbox under its write lock; not yet fsync'd. */
  private async append(user: string, records: Buffer[]): Promise<{ ino: number; offsets: number[] }> {
    const path = mailboxPath(this.root, user);
    const lockPath = writeLockPath(this.root, user);
    if (!this.boxes.has(user)) mkdirSync(dirname(path), { recursive: true });
    const lock = tryLock(lockPath, true) ?? (await acquireLock(lockPath, this.lockTimeoutMs, true));
    try {
      let box = this.boxes.get(user);
      let st = box ? fstatSync(box.fd) : null;
      // Renamed over by a POP3 rewrite: our descriptor points at the old, unlinked file.
      if (box && st!.nlink === 0) {
        await closeFd(box.fd).catch(() => {});
        this.boxes.delete(user);
        box = undefined;
      }
      if (!box) {
        const fd = await openFd(path, "a+");
        st = fstatSync(fd);
        box = { fd, knownSize: -1, dirty: false, lastUsed: 0 };
        this.boxes.set(user, box);
        if (st.size === 0) await syncDir(dirname(path));
      }
      let size = st!.size;
      let prefix = "";
      if (size !== box.knownSize && size > 0) {
        prefix = repairTail(box.fd, size, path, this.warn);
        size = fstatSync(box.fd).size;
      }
      const data = Buffer.concat(prefix ? [Buffer.from(prefix), ...records] : records);
      writeAllSync(box.fd, data);
      const offsets: number[] = [];
      let at = size + prefix.length;
      for (const r of records) {
        offsets.push(at);
        at += r.length;
      }
      box.knownSize = size + data.length;
      box.dirty = true;
      box.lastUsed = Date.now();
      return { ino: st!.ino, offsets };
    } finally {
      lock.release();
    }
  }

  /**
   * fsync every mailbox written since the last checkpoint, then delete the journal that
   * covered them. Rounds go on meanwhile into a fresh journal, which the next checkpoint
   * retires in turn.
   */
  private async checkpoint(): Promise<void> {
    const dirty = [...this.boxes.values()].filter((b) => b.dirty);
    for (const b of dirty) b.dirty = false;
    const retired = this.journal;
    this.journal = null;
    await Promise.all(dirty.map((b) => datasync(b.fd)));
    this.stats.fsyncs += dirty.length;
    if (retired) {
      retired.close();
      removeJournal(retired.path);
    }
    const now = Date.now();
    for (const [user, b] of this.boxes) {
      if (!b.dirty && now - b.lastUsed > CLOSE_IDLE_MS) {
        this.boxes.delete(user);
        dropLockTemp(writeLockPath(this.root, user));
        await closeFd(b.fd).catch(() => {});
      }
    }
  }
}

/** Whether a journalled copy is in the mailbox: same file, same bytes at the same place. */
function isPresent(path: string, ino: number, offset: number, record: Buffer): boolean {
  let st;
  try {
    st = statSync(path);
  } catch {
    return false; // the file itself was lost
  }
  // Replaced since (a POP3 rewrite, which fsyncs what it copies): the copy was durable
  // there, or was deleted by the user on purpose. Either way, do not put it back.
  if (st.ino !== ino) return true;
  if (st.size < offset + record.length) return false;
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(record.length);
    readSync(fd, buf, 0, record.length, offset);
    return buf.equals(record);
  } finally {
    closeSync(fd);
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
  const aside = `${path}.torn-${Date.now()}`;
  const asideFd = openSync(aside, "wx");
  try {
    writeAllSync(asideFd, torn);
  } finally {
    closeSync(asideFd);
  }
  ftruncateSync(fd, cut);
  warn(`${path}: unterminated tail of ${torn.length} bytes (interrupted write) moved to ${aside}`);
  return "";
}
