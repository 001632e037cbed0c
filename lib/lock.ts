// Cross-process mailbox locks. Bun has no flock/fcntl, so this is the classic dotlock:
// write a unique temp file, then link() it to the lock name. link() is atomic even on
// NFS, where O_EXCL create was not always. The lock file holds "pid host", so a lock left
// by a process that died (kill -9) is recognised and broken instead of blocking forever.
import { linkSync, readdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, join } from "node:path";

const HOST = hostname();
// Locks this process holds right now. A lock file naming our own pid that is not in
// here was left by an earlier process that had the same pid (common in containers).
const held = new Set<string>();
let counter = 0;

export interface Lock {
  readonly path: string;
  release(): void;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

function isStale(content: string): boolean {
  const [pidText, host] = content.trim().split(/\s+/);
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return true; // torn or garbage lock file
  if (host !== HOST) return false; // cannot check another host's processes
  if (pid === process.pid) return true; // caller checked `held` already
  return !alive(pid);
}

// The temp file each lock is linked from is kept between acquisitions of the same lock:
// smtpmail takes a mailbox's lock for every commit round, and creating and deleting the
// temp file each time cost more than the rest of the round. dropLockTemp() removes it.
const temps = new Map<string, string>();

function lockTemp(path: string, fresh: boolean): string {
  let temp = temps.get(path);
  if (!temp || fresh) {
    if (!temp) removeDeadTemps(dirname(path));
    temp ??= join(dirname(path), `.link.${HOST}.${process.pid}.${++counter}`);
    writeFileSync(temp, `${process.pid} ${HOST}\n`);
    temps.set(path, temp);
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
      try {
        unlinkSync(join(dir, name));
      } catch {}
    }
  }
}

/** Removes the kept temp file of a lock this process will not take again soon. */
export function dropLockTemp(path: string): void {
  const temp = temps.get(path);
  if (!temp) return;
  temps.delete(path);
  try {
    unlinkSync(temp);
  } catch {}
}

process.on("exit", () => {
  for (const path of [...temps.keys()]) dropLockTemp(path);
});

/** Takes the lock now or returns null if someone else holds it. */
export function tryLock(path: string, keepTemp = false): Lock | null {
  if (held.has(path)) return null;
  let temp = lockTemp(path, false);
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        try {
          linkSync(temp, path);
        } catch (e) {
          // The kept temp file vanished (someone cleaned the directory): make it again.
          if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
          temp = lockTemp(path, true);
          linkSync(temp, path);
        }
        held.add(path);
        return {
          path,
          release() {
            if (!held.delete(path)) return;
            try {
              unlinkSync(path);
            } catch {}
          },
        };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      let existing: string;
      try {
        existing = readFileSync(path, "utf8");
      } catch {
        continue; // vanished between link and read: try again
      }
      if (!isStale(existing)) return null;
      try {
        // Only break it if it is still the same stale lock we looked at.
        if (readFileSync(path, "utf8") === existing) unlinkSync(path);
      } catch {}
    }
    return null;
  } finally {
    if (!keepTemp) dropLockTemp(path);
  }
}

/** Waits for the lock, polling with a growing pause, up to timeoutMs. */
export async function acquireLock(path: string, timeoutMs = 30_000, keepTemp = false): Promise<Lock> {
  const deadline = Date.now() + timeoutMs;
  let pause = 1;
  for (;;) {
    const lock = tryLock(path, keepTemp);
    if (lock) return lock;
    if (Date.now() >= deadline) throw new Error(`timed out waiting for lock ${path}`);
    await Bun.sleep(pause);
    pause = Math.min(pause * 2, 25);
  }
}
