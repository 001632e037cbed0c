// Delivery into mymailbox files: what smtpmail does after DATA.
//
// Durability: a delivery resolves only after its bytes are fsync'd. Throughput: deliveries
// that arrive while a mailbox's previous write+fsync is in flight are queued and written
// together with one write and one fsync (group commit), so the fsync cost is shared.
// The write lock (lock.ts) is held only for append+fsync; popserver takes the same lock
// for the last step of its rewrite, so an append never lands in a file being replaced.
import { mkdir, open, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import { acquireLock } from "./lock.ts";
import { mailboxPath, writeLockPath } from "./paths.ts";

export interface MailStore {
  /** Appends the record to each user's mailbox; resolves once it is on disk everywhere. */
  deliver(users: readonly string[], record: Buffer): Promise<void>;
}

export interface StoreStats {
  messages: number;
  fsyncs: number;
  batches: number;
}

export class FileMailStore implements MailStore {
  private readonly writers = new Map<string, MailboxWriter>();
  readonly stats: StoreStats = { messages: 0, fsyncs: 0, batches: 0 };

  constructor(
    private readonly root: string,
    private readonly warn: (msg: string) => void = () => {},
    private readonly lockTimeoutMs = 30_000,
  ) {}

  async deliver(users: readonly string[], record: Buffer): Promise<void> {
    await Promise.all(users.map((u) => this.writer(u).append(record)));
  }

  /** Resolves when no delivery is in flight (graceful shutdown). */
  async idle(): Promise<void> {
    while ([...this.writers.values()].some((w) => w.busy)) await Bun.sleep(5);
  }

  private writer(user: string): MailboxWriter {
    let w = this.writers.get(user);
    if (!w) {
      w = new MailboxWriter(mailboxPath(this.root, user), writeLockPath(this.root, user), this.stats, this.warn, this.lockTimeoutMs);
      this.writers.set(user, w);
    }
    return w;
  }
}

interface Pending {
  record: Buffer;
  resolve: () => void;
  reject: (e: Error) => void;
}

class MailboxWriter {
  private queue: Pending[] = [];
  private running = false;
  private dirReady = false;

  constructor(
    private readonly path: string,
    private readonly lockPath: string,
    private readonly stats: StoreStats,
    private readonly warn: (msg: string) => void,
    private readonly lockTimeoutMs: number,
  ) {}

  get busy(): boolean {
    return this.running || this.queue.length > 0;
  }

  append(record: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ record, resolve, reject });
      if (!this.running) void this.run();
    });
  }

  private async run(): Promise<void> {
    this.running = true;
    while (this.queue.length) {
      const batch = this.queue;
      this.queue = [];
      try {
        await this.write(batch.map((p) => p.record));
        this.stats.messages += batch.length;
        this.stats.batches++;
        for (const p of batch) p.resolve();
      } catch (e) {
        this.warn(`delivery to ${this.path} failed: ${(e as Error).message}`);
        for (const p of batch) p.reject(e as Error);
      }
    }
    this.running = false;
  }

  private async write(records: Buffer[]): Promise<void> {
    if (!this.dirReady) {
      await mkdir(dirname(this.path), { recursive: true });
      this.dirReady = true;
    }
    const lock = await acquireLock(this.lockPath, this.lockTimeoutMs);
    try {
      // Opened per batch: popserver may have replaced the file (rename) since last time.
      const fh = await open(this.path, "a+");
      try {
        const { size } = await fh.stat();
        const prefix = size > 0 ? await repairTail(fh, size, this.path, this.warn) : "";
        const data = records.length === 1 && !prefix ? records[0]! : Buffer.concat([Buffer.from(prefix), ...records]);
        await writeAll(fh, data);
        await fh.datasync();
        this.stats.fsyncs++;
        if (size === 0) await syncDir(dirname(this.path));
      } finally {
        await fh.close();
      }
    } finally {
      lock.release();
    }
  }
}

export async function writeAll(fh: FileHandle, data: Buffer, position?: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position === undefined ? null : position + done);
    done += bytesWritten;
  }
}

/** fsync a directory so a new or renamed entry in it survives a crash. */
export async function syncDir(dir: string): Promise<void> {
  const dh = await open(dir, "r");
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

async function readAt(fh: FileHandle, pos: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  const { bytesRead } = await fh.read(buf, 0, len, pos);
  return buf.subarray(0, bytesRead);
}

/**
 * Makes sure the file ends at a message boundary before appending. A crash in the middle of
 * an earlier append leaves an unterminated tail; appending after it would glue it onto the
 * next message. The tail was never acknowledged; it is moved aside (never silently dropped)
 * and cut off. Returns bytes to write first (a newline after a final "." without one).
 */
async function repairTail(fh: FileHandle, size: number, path: string, warn: (m: string) => void): Promise<string> {
  const end = (await readAt(fh, Math.max(0, size - 4), Math.min(4, size))).toString("latin1");
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
    const chunk = await readAt(fh, lo, hi - lo);
    const a = chunk.lastIndexOf("\n.\r\n");
    const b = chunk.lastIndexOf("\n.\n");
    if (a >= 0 || b >= 0) {
      cut = lo + Math.max(a >= 0 ? a + 4 : -1, b >= 0 ? b + 3 : -1);
      break;
    }
  }
  if (cut === 0 && size >= 2) {
    const head = (await readAt(fh, 0, 3)).toString("latin1");
    if (head.startsWith(".\r\n")) cut = 3;
    else if (head.startsWith(".\n")) cut = 2;
  }
  const torn = await readAt(fh, cut, size - cut);
  const aside = `${path}.torn-${Date.now()}`;
  await Bun.write(aside, torn);
  await fh.truncate(cut);
  warn(`${path}: unterminated tail of ${torn.length} bytes (interrupted write) moved to ${aside}`);
  return "";
}
