// Cross-process mailbox locks. Bun has no flock/fcntl, so this is the classic dotlock:
// write a unique temp file, then link() it to the lock name. link() is atomic even on
// NFS, where O_EXCL create was not always. The lock file holds "pid host", so a lock left
// by a process that died (kill -9) is recognised and broken instead of blocking forever.
import { linkSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";

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

/** Takes the lock now or returns null if someone else holds it. */
export function tryLock(path: string): Lock | null {
  if (held.has(path)) return null;
  const content = `${process.pid} ${HOST}\n`;
  const temp = `${path}.${HOST}.${process.pid}.${++counter}.tmp`;
  writeFileSync(temp, content);
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        linkSync(temp, path);
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
    try {
      unlinkSync(temp);
    } catch {}
  }
}

/** Waits for the lock, polling with a growing pause, up to timeoutMs. */
export async function acquireLock(path: string, timeoutMs = 30_000): Promise<Lock> {
  const deadline = Date.now() + timeoutMs;
  let pause = 1;
  for (;;) {
    const lock = tryLock(path);
    if (lock) return lock;
    if (Date.now() >= deadline) throw new Error(`timed out waiting for lock ${path}`);
    await Bun.sleep(pause);
    pause = Math.min(pause * 2, 25);
  }
}
