// Copies of a message that could not be stored while its other copies were. SMTP has one
// reply after DATA for all recipients: a 451 once some copies were stored made the client
// send the message again, and those recipients got it twice. Instead the missing copies
// are written here, fsync'd, before the 250, and smtpmail delivers them later, as an MTA
// defers a local delivery. One file per message: "MD1 <user> <user>...\n" then the record.
import { closeSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { datasync, openFd, syncDir, writevAll } from "./fsio.ts";
import { ownedName, ownerGone } from "./journal.ts";
import { isSafeUserName } from "./users.ts";

const EXT = ".msg";
const TEMP = ".tmp-";
const HEAD = /^MD1 (\S+(?: \S+)*)$/;

export function deferredDir(root: string): string {
  return join(root, ".smtpmail-deferred");
}

export interface Deferred {
  users: string[];
  record: Buffer;
}

/** Writes the copies for users durably (file and directory entry); resolves with the file's path. */
export async function defer(root: string, users: readonly string[], record: Buffer): Promise<string> {
  const dir = deferredDir(root);
  if (mkdirSync(dir, { recursive: true })) await syncDir(root);
  const name = ownedName(EXT);
  const temp = join(dir, TEMP + name);
  const fd = await openFd(temp, "wx");
  try {
    await writevAll(fd, [Buffer.from(`MD1 ${users.join(" ")}\n`), record]);
    await datasync(fd);
    closeSync(fd);
  } catch (e) {
    closeSync(fd);
    removeDeferred(temp);
    throw e;
  }
  const path = join(dir, name);
  renameSync(temp, path);
  await syncDir(dir);
  return path;
}

/** The copies a file holds; null when it is not one (never written whole: those are never renamed in). */
export function readDeferred(path: string): Deferred | null {
  const data = readFileSync(path);
  const nl = data.indexOf(0x0a);
  const m = nl > 0 && nl < 64 * 1024 ? HEAD.exec(data.toString("latin1", 0, nl)) : null;
  if (!m) return null;
  const users = m[1]!.split(" ");
  return users.every(isSafeUserName) ? { users, record: data.subarray(nl + 1) } : null;
}

/**
 * At start-up: the deferred files of processes that are gone, renamed to this process's names
 * (so two servers starting at once never both deliver one), with their temp files of writes
 * that never finished (those messages got a 451) removed. Returns the paths taken.
 */
export function takeOverDeferred(root: string): string[] {
  const dir = deferredDir(root);
  if (!existsSync(dir)) return [];
  const taken: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    if (name.startsWith(TEMP)) {
      if (ownerGone(name.slice(TEMP.length), EXT)) removeDeferred(join(dir, name));
    } else if (ownerGone(name, EXT)) {
      const to = join(dir, ownedName(EXT));
      try {
        renameSync(join(dir, name), to);
        taken.push(to);
      } catch {}
    }
  }
  return taken;
}

/** Once its copies are stored. Not fsync'd: if a crash brings the file back, they come again (never lost). */
export function removeDeferred(path: string): void {
  try {
    unlinkSync(path);
  } catch {}
}
