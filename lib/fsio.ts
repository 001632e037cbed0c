// Raw file-descriptor I/O shared by the mailbox writers and readers. Plain numbers rather
// than fs/promises FileHandles: Bun treats a FileHandle reclaimed by the garbage collector
// as an error, and a descriptor cached across deliveries must outlive any one call.
// Reads and writes of a few KiB go through the page cache in microseconds and are done
// synchronously; fsync and large reads go to the thread pool, so the event loop never waits
// on the disk.
import { close, closeSync, constants, fdatasync, fstatSync, fsync, fsyncSync, open, openSync, read, readSync, unlinkSync, writeSync, writev, writevSync, write } from "node:fs";
import { promisify } from "node:util";

/**
 * A small file's bytes (its first `max`), read without ever blocking: a FIFO (or device) put in
 * the place of a lock file, user.txt or a deferred copy made readFileSync wait for a writer, and
 * the whole server with it. Anything but a regular file is an error (code EFTYPE).
 */
export function readRegularFile(path: string, max = Infinity): Buffer {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw Object.assign(new Error(`${path} is not a regular file`), { code: "EFTYPE" });
    return readAtSync(fd, 0, Math.min(st.size, max));
  } finally {
    closeSync(fd);
  }
}

export const openFd = promisify(open) as (path: string, flags: string) => Promise<number>;
export const closeFd = promisify(close);
export const datasync = promisify(fdatasync);
const fsyncFd = promisify(fsync);
// Node's promisified read/write resolve to { bytesRead } / { bytesWritten } objects.
const readAsync = promisify(read) as unknown as (fd: number, buf: Buffer, off: number, len: number, pos: number) => Promise<{ bytesRead: number }>;
const writeAsync = promisify(write) as unknown as (fd: number, buf: Buffer, off: number, len: number, pos: number | null) => Promise<{ bytesWritten: number }>;

/** `length` bytes of the file open at fd, from `offset` (a POP3 message the socket adapter sends). */
export interface FileRange {
  fd: number;
  offset: number;
  length: number;
}

export function readAtSync(fd: number, pos: number, len: number): Buffer {
  const buf = Buffer.allocUnsafe(len);
  let got = 0;
  while (got < len) {
    const n = readSync(fd, buf, got, len - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return got === len ? buf : buf.subarray(0, got);
}

export async function readAt(fd: number, pos: number, len: number, into?: Buffer, intoOffset = 0): Promise<Buffer> {
  const buf = into ?? Buffer.allocUnsafe(len);
  let got = 0;
  while (got < len) {
    const { bytesRead: n } = await readAsync(fd, buf, intoOffset + got, len - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return into ? buf.subarray(intoOffset, intoOffset + got) : got === len ? buf : buf.subarray(0, got);
}

export function writeAllSync(fd: number, data: Buffer, position: number | null = null): void {
  for (let done = 0; done < data.length; ) done += writeSync(fd, data, done, data.length - done, position === null ? null : position + done);
}

/** Writes the buffers back to back without first copying them into one (at position, or appending). */
export function writevAllSync(fd: number, parts: Buffer[], position: number | null = null): void {
  // The kernel takes at most IOV_MAX (1024) buffers per call.
  for (let i = 0; i < parts.length; i += 512) {
    const group = parts.slice(i, i + 512);
    const total = group.reduce((n, b) => n + b.length, 0);
    const done = writevSync(fd, group, position ?? undefined);
    // Short only on a full disk or the like: the rest goes the plain way (and fails loudly).
    if (done < total) writeAllSync(fd, Buffer.concat(group).subarray(done), position === null ? null : position + done);
    if (position !== null) position += total;
  }
}

// Like read/write, the promisified writev resolves to { bytesWritten, buffers }.
const writevAsync = promisify(writev) as unknown as (fd: number, parts: Buffer[], position: number | null) => Promise<{ bytesWritten: number }>;

/**
 * writevAllSync on the thread pool, for writes too large to make on the event loop: a 10 MB
 * message to 100 recipients is a gigabyte of page-cache copies.
 */
export async function writevAll(fd: number, parts: Buffer[], position: number | null = null): Promise<void> {
  for (let i = 0; i < parts.length; i += 512) {
    const group = parts.slice(i, i + 512);
    const total = group.reduce((n, b) => n + b.length, 0);
    const { bytesWritten: done } = await writevAsync(fd, group, position);
    if (done < total) {
      const rest = Buffer.concat(group).subarray(done);
      for (let at = 0; at < rest.length; ) at += (await writeAsync(fd, rest, at, rest.length - at, position === null ? null : position + done + at)).bytesWritten;
    }
    if (position !== null) position += total;
  }
}

/** Bytes above which a write goes to the thread pool (writevAll) rather than being made inline. */
export const INLINE_WRITE_MAX = 1 << 20;

export async function writeAll(fd: number, data: Buffer): Promise<void> {
  for (let done = 0; done < data.length; ) done += (await writeAsync(fd, data, done, data.length - done, null)).bytesWritten;
}

/**
 * Keeps bytes that are about to be cut from a mailbox (an unterminated tail: a crashed
 * append, or a hand-written last message without its "." line) in a new file beside it,
 * `<path>.torn-<time>`. Returns that file's name. With fsyncNow it is fsync'd here (a caller
 * that cannot wait asynchronously); otherwise the caller fsyncs it (syncDir) off the event loop.
 * Either way, before the mailbox is cut.
 */
export function setAside(path: string, bytes: Uint8Array, fsyncNow = false): string {
  for (let n = 0; ; n++) {
    const aside = `${path}.torn-${Date.now()}${n ? `-${n}` : ""}`;
    let fd: number;
    try {
      fd = openSync(aside, "wx");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EEXIST" && n < 100) continue;
      throw e;
    }
    try {
      writeAllSync(fd, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
      if (fsyncNow) fsyncSync(fd);
    } catch (e) {
      // A full disk: no half-written copy left behind (each retry made another empty one).
      closeSync(fd);
      try {
        unlinkSync(aside);
      } catch {}
      throw e;
    }
    closeSync(fd);
    return aside;
  }
}

/** fsync a file by name, or a directory so that a new or renamed entry in it survives a crash. */
export async function syncDir(dir: string): Promise<void> {
  const fd = openSync(dir, "r");
  try {
    await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
}
