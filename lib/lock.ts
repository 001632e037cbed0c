// Cross-process mailbox locks. Bun has no flock/fcntl, so this is the classic dotlock:
// write a unique temp file, then link() it to the lock name. link() is atomic even on
// NFS, where O_EXCL create was not always. The lock file holds "pid host boot", so a lock left
// by a process that died (kill -9) is recognised and broken instead of blocking forever.
import { closeSync, constants, linkSync, lstatSync, openSync, readdirSync, readFileSync, renameSync, rmdirSync, statSync, unlinkSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { readRegularFile } from "./fsio.ts";

const HOST = hostname();

/**
 * This boot of the machine (the start of the kernel's random boot id; "" where there is
 * none). Written beside the pid into lock files and journal names: after a reboot PIDs are
 * handed out again from the bottom, so a live process can carry the pid of a lock's or a
 * journal's owner that died in the crash (helper-26).
 */
export const BOOT = (() => {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "latin1").trim().replace(/-/g, "").slice(0, 12);
  } catch {
    return "";
  }
})();

/** Whether a process of this host is alive as `pid` of boot `boot` ("" or missing: unknown, judge by pid). */
export function ownerAlive(pid: number, boot: string | undefined): boolean {
  if (boot && BOOT && boot !== BOOT) return false;
  return alive(pid);
}
const GUARD_STALE_MS = 10_000;
// Locks this process holds right now. A lock file naming our own pid that is not in
// here was left by an earlier process that had the same pid (common in containers).
const held = new Set<string>();
let counter = 0;

export interface Lock {
  readonly path: string;
  /** Taken by breaking the lock of a holder that died: whatever it was doing may not be on disk. */
  readonly brokeStale?: boolean;
  release(): void;
}

/** Whether a process of this host with that pid exists (EPERM: it does, as another user). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  // kill() reaches a thread by its id too: a dead owner's pid, reused as a thread of another
  // process, kept its lock for ever (helper-71: popserver's own thread, [IN-USE] until restart).
  // It reaches a zombie as well: a server killed under a parent that never reaps it kept its
  // locks and journals, and every delivery to its mailboxes waited 30 s (helper-111).
  try {
    const status = readFileSync(`/proc/${pid}/status`, "latin1");
    // Only with no thread left: a leader that ended before its other threads shows Z too, and
    // that process still runs (its pool threads may be writing).
    if (/^State:\s*[ZX]/m.test(status) && Number(/^Threads:\s*(\d+)/m.exec(status)?.[1] ?? 1) <= 1) return false;
    const tgid = /^Tgid:\s*(\d+)$/m.exec(status)?.[1];
    return tgid === undefined || Number(tgid) === pid;
  } catch {
    return true;
  }
}

/**
 * The host named in the lock file at path when it is not this one: such a lock is never
 * broken here (its process cannot be checked), so whoever waits for it may wait for ever.
 */
export function foreignHolder(path: string): string | null {
  let content: string;
  try {
    content = readRegularFile(path).toString("latin1");
  } catch {
    return null;
  }
  const host = content.trim().split(/\s+/)[1];
  return host && host !== HOST ? host : null;
}

/**
 * Writes "pid host boot" into a lock's temp file, made anew: never through a symbolic link
 * someone put by its name (it wrote our line over another user's mailbox, helper-94). On a
 * full disk, leaves no empty one behind.
 */
function writeOwner(temp: string): void {
  unlinkQuietly(temp);
  let fd: number | null = null;
  try {
    fd = openSync(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o666);
    writeSync(fd, `${process.pid} ${HOST} ${BOOT}\n`);
  } catch (e) {
    if (fd !== null) unlinkQuietly(temp);
    throw e;
  } finally {
    if (fd !== null) closeSync(fd);
  }
}

function isStale(content: string): boolean {
  const [pidText, host, boot] = content.trim().split(/\s+/);
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return true; // torn or garbage lock file
  if (host !== HOST) return false; // cannot check another host's processes
  if (pid === process.pid) return true; // caller checked `held` already
  return !ownerAlive(pid, boot);
}

// The temp file a lock is linked from when no shared one is given (or it cannot be used):
// made for the attempt, in the lock's directory, and removed after it (dropLockTemp()).
const temps = new Map<string, string>();
// The inode of each kept temp file: a lock linked from it has that inode.
const tempInodes = new Map<string, number>();

function lockTemp(path: string, fresh: boolean): string {
  let temp = temps.get(path);
  if (!temp || fresh) {
    if (!temp) removeDeadTemps(dirname(path));
    temp ??= join(dirname(path), `.link.${HOST}.${process.pid}.${++counter}`);
    try {
      writeOwner(temp);
    } catch (e) {
      temps.delete(path);
      tempInodes.delete(temp);
      throw e;
    }
    temps.set(path, temp);
    tempInodes.set(temp, lstatSync(temp).ino);
  }
  return temp;
}

/** Temp files left by processes of this host that were killed. */
function removeDeadTemps(dir: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^\.link\.(.+)\.(\d+)\.\d+$/.exec(name);
    if (m && m[1] === HOST && Number(m[2]) !== process.pid && !alive(Number(m[2]))) {
      unlinkQuietly(join(dir, name));
    }
  }
}

/** Removes the kept temp file of a lock this process will not take again soon. */
export function dropLockTemp(path: string): void {
  const temp = temps.get(path);
  if (!temp) return;
  temps.delete(path);
  tempInodes.delete(temp);
  unlinkQuietly(temp);
}

// A temp file kept in a directory of the caller's choice (popserver: the mail root) that
// serves every lock taken with it, in any directory of that file system: a POP3 login
// then costs one link() instead of creating, linking and deleting a file (a third of its
// CPU), and leaves nothing in the user's directory but the lock itself.
const shared = new Map<string, { temp: string; ino: number }>();
/** Temp directories where the temp file could not be made, and until when none is tried again. */
const unusable = new Map<string, number>();
const RETRY_UNUSABLE_MS = 60_000;

function sharedTemp(dir: string, fresh: boolean): { temp: string; ino: number } {
  let t = shared.get(dir);
  if (!t || fresh) {
    if (!t) removeDeadTemps(dir);
    const temp = t?.temp ?? join(dir, `.link.${HOST}.${process.pid}.${++counter}`);
    try {
      writeOwner(temp);
    } catch (e) {
      shared.delete(dir);
      throw e;
    }
    t = { temp, ino: lstatSync(temp).ino };
    shared.set(dir, t);
  }
  return t;
}

process.on("exit", () => {
  for (const path of [...temps.keys()]) dropLockTemp(path);
  for (const { temp } of shared.values()) {
    unlinkQuietly(temp);
  }
});

/**
 * Takes the lock now or returns null if someone else holds it. tempDir: link from the temp
 * file kept in that directory (the mail root) rather than one made in the lock's directory.
 */
export function tryLock(path: string, tempDir?: string): Lock | null {
  if (held.has(path)) return null;
  let temp: string;
  const retryAt = tempDir === undefined ? undefined : unusable.get(tempDir);
  if (retryAt !== undefined) {
    if (retryAt > Date.now()) tempDir = undefined;
    else unusable.delete(tempDir!);
  }
  try {
    temp = tempDir ? sharedTemp(tempDir, false).temp : lockTemp(path, false);
  } catch (e) {
    if (!tempDir) throw e;
    // tempDir not writable (a mail root only its owner may write to): as without it, and
    // not tried again for a while (each try reads the whole directory first).
    unusable.set(tempDir, Date.now() + RETRY_UNUSABLE_MS);
    tempDir = undefined;
    temp = lockTemp(path, false);
  }
  let broke = false;
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        try {
          linkSync(temp, path);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          // The temp file vanished (someone cleaned the directory), or the lock's directory
          // is missing (a new user's first login): the temp file is made again, and the link
          // tried once more. A lock on another file system than tempDir takes a temp file of its own.
          if (code === "ENOENT") temp = tempDir ? sharedTemp(tempDir, true).temp : lockTemp(path, true);
          else if (code === "EXDEV" && tempDir) {
            tempDir = undefined;
            temp = lockTemp(path, false);
          } else throw e;
          linkSync(temp, path);
        }
        held.add(path);
        const ino = tempDir ? shared.get(tempDir)!.ino : (tempInodes.get(temp) ?? lstatSync(temp).ino);
        return {
          path,
          brokeStale: broke,
          release() {
            if (!held.delete(path)) return;
            try {
              // Only our own lock: if it was wrongly broken and someone else holds the
              // name now, removing theirs would let a third party in.
              if (lstatSync(path).ino === ino) unlinkSync(path);
            } catch {}
          },
        };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      let existing: string;
      try {
        existing = readRegularFile(path).toString("utf8");
      } catch (e) {
        // Not a file (a FIFO put there): nobody's lock we could break; held, as far as we know.
        if ((e as NodeJS.ErrnoException).code === "EFTYPE") return null;
        continue; // vanished between link and read: try again
      }
      if (!isStale(existing)) return null;
      broke = breakStale(path, existing) || broke;
    }
    return null;
  } finally {
    dropLockTemp(path); // nothing to do for a shared temp file
  }
}

/**
 * Removes a stale lock, one breaker at a time. Without the guard, two processes that both
 * saw the same stale lock could each remove it, the second removing the fresh lock the
 * first had just taken, and both would hold it. Under the guard the lock is read again and
 * removed only if it is still that stale one.
 */
function breakStale(path: string, stale: string): boolean {
  const guard = `${path}.break`;
  let fd: number;
  try {
    fd = openSync(guard, "wx");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    // Held for microseconds; one older than this belongs to a breaker that died.
    try {
      if (Date.now() - statSync(guard).mtimeMs > GUARD_STALE_MS) unlinkSync(guard);
    } catch {}
    return false;
  }
  try {
    closeSync(fd);
    if (readRegularFile(path).toString("utf8") === stale) {
      unlinkSync(path);
      return true;
    }
  } catch {
    // Gone already: the caller simply tries again.
  } finally {
    unlinkQuietly(guard);
  }
  return false;
}

/**
 * A waiter's request: smtpmail holds a mailbox's write lock across busy commit rounds and
 * lets go as soon as it sees this file (see open-boxes.ts).
 */
export const wantedPath = (path: string) => `${path}.wanted`;
/**
 * A waiter makes its marker again whenever it has looked the same for WANTED_REFRESH_MS, so
 * one that has not changed for WANTED_STALE_MS has no live waiter behind it: a dead one's on
 * another host, or one naming a pid that is now the holder's own (helper-76: obeyed for the
 * minute it used to stay valid, a yield every 5 ms cut smtpmail to a third). It is ignored.
 * "Looked the same" is measured on this process's own clock, from when it first saw the marker
 * as it is: file times come from another clock on NFS, or one stepped back, and compared with
 * ours they made live markers stale or dead ones new for hours (helper-78). What it is: its
 * bytes, which number each marker a waiter makes (a new one can have the old one's inode and,
 * where file times are coarse, its times: helper-79), and its inode and times.
 */
const WANTED_REFRESH_MS = 250;
export const WANTED_STALE_MS = 1000;
/** Longer is not a marker: only this much is read (a huge file put there cost 0.3 s a look, helper-80). */
const MARKER_MAX = 256;
const seen = new Map<string, { marker: string; since: number }>();
let markersMade = 0;

interface Marker {
  /** A regular file (anything else there is nobody's request, and is replaced by a waiter). */
  file: boolean;
  /** Its first bytes; null when we may not read them (another user's, umask 077). */
  text: string | null;
  /** Milliseconds this process has seen it as it is now; -1 the first time anything is seen there. */
  unchanged: number;
}

/** The marker at path as this process sees it; null when there is none. */
function lookAt(path: string): Marker | null {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    seen.delete(path);
    return null;
  }
  let text: string | null = null;
  const file = st.isFile();
  if (file) {
    try {
      text = readRegularFile(path, MARKER_MAX).toString("utf8");
    } catch {}
  }
  const marker = `${st.ino}:${st.mtimeMs}:${st.ctimeMs}:${st.size}:${text}`;
  const t = performance.now();
  const was = seen.get(path);
  seen.set(path, was?.marker === marker ? was : { marker, since: t });
  return { file, text, unchanged: was ? (was.marker === marker ? t - was.since : 0) : -1 };
}

/** Whether someone is waiting for the lock: a marker that changes, left by a live process. */
export function isWanted(path: string): boolean {
  const marker = wantedPath(path);
  const m = lookAt(marker);
  if (!m?.file) return false;
  if (m.text !== null) {
    // Its waiter was killed: without this, the holder would keep yielding to nobody.
    const [pidText, host] = m.text.trim().split(/\s+/);
    const pid = Number(pidText);
    if (host === HOST && Number.isInteger(pid) && pid > 0 && pid !== process.pid && !alive(pid)) {
      unlinkQuietly(marker);
      seen.delete(marker);
      return false;
    }
  }
  return m.unchanged < WANTED_STALE_MS;
}

/**
 * Asks the holder of a lock to let go (smtpmail keeps its lock while busy): leaves the
 * "wanted" marker, again if it is gone, was there before this process first looked (its
 * waiter may be long dead, and the holder ignoring it), or has looked the same for
 * WANTED_REFRESH_MS. A marker that keeps changing is another live waiter's and is left to it.
 * Made again, not touched: a marker another user made can be replaced, as locks are, but not
 * touched. True when this call made it: call unwant() once served.
 */
export function want(path: string): boolean {
  const marker = wantedPath(path);
  const m = lookAt(marker);
  if (m?.file && m.unchanged >= 0 && m.unchanged < WANTED_REFRESH_MS) return false;
  const line = `${process.pid} ${HOST} ${++markersMade}\n`;
  // Replaced in one rename: a holder looking between an unlink and a create saw no request.
  // A rename cannot replace a directory: an empty one is removed (helper-81).
  if (m && !m.file) rmdirQuietly(marker);
  let temp = m ? `${marker}.${HOST}.${process.pid}` : marker;
  const create = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW | constants.O_NONBLOCK;
  let opened = false;
  try {
    let fd: number;
    if (m) {
      unlinkQuietly(temp); // left by a kill, or put there
      try {
        fd = openSync(temp, create, 0o644);
      } catch {
        temp += `.${markersMade}`; // a directory there, say
        fd = openSync(temp, create, 0o644);
      }
    } else fd = openSync(temp, create, 0o644);
    opened = true;
    try {
      writeSync(fd, line);
    } finally {
      closeSync(fd);
    }
    if (m) renameSync(temp, marker);
  } catch {
    // Ours, not made whole or not moved into place (a full disk): left for no one.
    if (opened) unlinkQuietly(temp);
    return false;
  }
  // Seen as made: what this process sees there next is its own, left for WANTED_REFRESH_MS.
  seen.set(marker, { marker: "", since: performance.now() });
  return true;
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {}
}

function rmdirQuietly(path: string): void {
  try {
    rmdirSync(path);
  } catch {}
}

export function unwant(path: string): void {
  const marker = wantedPath(path);
  seen.delete(marker);
  unlinkQuietly(marker);
}

/**
 * Waits for the lock, up to timeoutMs. While waiting it leaves a marker asking the holder
 * to let go, and polls often: a holder that yields stays off for a moment only.
 */
export async function acquireLock(path: string, timeoutMs = 30_000, tempDir?: string): Promise<Lock> {
  const deadline = Date.now() + timeoutMs;
  let marked = false;
  try {
    for (let pause = 1; ; pause = Math.min(pause * 2, 4)) {
      const lock = tryLock(path, tempDir);
      if (lock) return lock;
      if (Date.now() >= deadline) throw new Error(`timed out waiting for lock ${path}`);
      if (want(path)) marked = true;
      await Bun.sleep(pause);
    }
  } finally {
    if (marked) unwant(path);
  }
}
