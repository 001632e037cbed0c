// Copies of a message that could not be stored while its other copies were. SMTP has one
// reply after DATA for all recipients: a 451 once some copies were stored made the client
// send the message again, and those recipients got it twice. Instead the missing copies
// are written here, fsync'd, before the 250, and smtpmail delivers them later, as an MTA
// defers a local delivery. One file per message: "MD2 <record length> <user> <user>...\n", the
// record, then a line "at <user> <inode> <offset>\n" for each copy about to be appended (see
// notePlacement). Files of the first format, "MD1 <user>...\n" and the record, are still read.
import { appendFileSync, closeSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { datasync, openFd, syncDir, writevAll } from "./fsio.ts";
import { ownedName, ownerGone } from "./journal.ts";
import { isSafeUserName } from "./users.ts";

const EXT = ".msg";
const TEMP = ".tmp-";
const HEAD = /^MD(?:1|2 (\d+)) (\S+(?: \S+)*)$/;
const PLACED = /^at (\S+) (\d+) (\d+)$/;

export function deferredDir(root: string): string {
  return join(root, ".smtpmail-deferred");
}

export interface Deferred {
  users: string[];
  record: Buffer;
  /** Where a copy was last about to be appended, by user: it may be there already. */
  placed: Map<string, { ino: number; offset: number }>;
  /** Whether notePlacement may add to the file (not to one of the first format, whose record runs to its end). */
  notable: boolean;
}

/** Writes the copies for users durably (file and directory entry); resolves with the file's path. */
export async function defer(root: string, users: readonly string[], record: Buffer): Promise<string> {
  const dir = deferredDir(root);
  if (mkdirSync(dir, { recursive: true })) await syncDir(root);
  const name = ownedName(EXT);
  const temp = join(dir, TEMP + name);
  const fd = await openFd(temp, "wx");
  try {
    await writevAll(fd, [Buffer.from(`MD2 ${record.length} ${users.join(" ")}\n`), record]);
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
  const users = m[2]!.split(" ");
  if (!users.every(isSafeUserName)) return null;
  const end = m[1] === undefined ? data.length : nl + 1 + Number(m[1]);
  if (end > data.length) return null;
  const placed: Deferred["placed"] = new Map();
  // Whole lines only: a note cut by a crash counts as not made.
  for (const line of data.toString("latin1", end, data.lastIndexOf(0x0a) + 1).split("\n")) {
    const at = PLACED.exec(line);
    if (at) placed.set(at[1]!, { ino: Number(at[2]), offset: Number(at[3]) });
  }
  return { users, record: data.subarray(nl + 1, end), placed, notable: m[1] !== undefined };
}

/**
 * Notes, right before a deferred copy is appended to a mailbox, where it goes: a smtpmail
 * killed after that write but before the file is removed left the copy in the mailbox, and
 * the next one delivered it again (helper-34: 5 duplicates in 12 kills). Not fsync'd: it
 * guards against a process dying, and after a machine crash a copy may come twice, never
 * not at all. One small append, which a kill cannot cut in two.
 */
export function notePlacement(path: string, user: string, ino: number, offset: number): void {
  appendFileSync(path, `at ${user} ${ino} ${offset}\n`);
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
