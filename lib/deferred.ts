// Copies of a message that could not be stored while its other copies were. SMTP has one
// reply after DATA for all recipients: a 451 once some copies were stored made the client
// send the message again, and those recipients got it twice. Instead the missing copies
// are written here, fsync'd, before the 250, and smtpmail delivers them later, as an MTA
// defers a local delivery. One file per message: "MD2 <record length> <user> <user>...\n", the
// record, then notes of where its copies went (see notePlacement). Files of the first format,
// "MD1 <user>...\n" and the record, are still read.
import { appendFileSync, closeSync, existsSync, mkdirSync, readdirSync, renameSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { datasync, openFd, readRegularFile, syncDir, writevAll } from "./fsio.ts";
import { ownedName, ownerGone } from "./journal.ts";
import { BOOT } from "./lock.ts";
import { TERMINATOR } from "./mailbox.ts";
import { scanBuffer } from "./mailbox-scanner.ts";
import { isSafeUserName } from "./users.ts";

const EXT = ".msg";
const TEMP = ".tmp-";
const HEAD = /^MD(?:1|2 (\d+)) (\S+(?: \S+)*)$/;
const NOTE = /^(?:at (\S+) (\d+) (\d+)|done (\S+) (\S*))$/;

export function deferredDir(root: string): string {
  return join(root, ".smtpmail-deferred");
}

export interface Deferred {
  users: string[];
  record: Buffer;
  /**
   * Where a copy was last about to be appended, by user: it may be there already. `doneIn`:
   * the boot in which it was then written, when that was noted.
   */
  placed: Map<string, { ino: number; offset: number; doneIn?: string }>;
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

/**
 * The copies a file holds; null when it is not one: not a regular file (a FIFO would hang
 * the read), users not all valid names, or a record that is not exactly one whole message
 * (appended as it was, a tampered one glued the next delivery onto it). Files never written
 * whole are never renamed in.
 */
export function readDeferred(path: string): Deferred | null {
  let data: Buffer;
  try {
    data = readRegularFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EFTYPE") return null;
    throw e;
  }
  const nl = data.indexOf(0x0a);
  const m = nl > 0 && nl < 64 * 1024 ? HEAD.exec(data.toString("latin1", 0, nl)) : null;
  if (!m) return null;
  const users = [...new Set(m[2]!.split(" "))];
  if (!users.every(isSafeUserName)) return null;
  const end = m[1] === undefined ? data.length : nl + 1 + Number(m[1]);
  if (end > data.length) return null;
  const record = data.subarray(nl + 1, end);
  const scan = scanBuffer(record);
  if (scan.messages.length !== 1 || scan.validEnd !== record.length || !record.subarray(-TERMINATOR.length).equals(TERMINATOR)) return null;
  const placed: Deferred["placed"] = new Map();
  // Whole lines only: a note cut by a crash counts as not made.
  for (const line of data.toString("latin1", end, data.lastIndexOf(0x0a) + 1).split("\n")) {
    const note = NOTE.exec(line);
    if (note?.[1]) placed.set(note[1], { ino: Number(note[2]), offset: Number(note[3]) });
    else if (note?.[4] && placed.has(note[4])) placed.get(note[4])!.doneIn = note[5];
  }
  return { users, record, placed, notable: m[1] !== undefined };
}

/**
 * Notes where a deferred copy goes, right before it is appended to a mailbox ("at"), then
 * that it was written, in this boot ("done"): a smtpmail killed after the write but before
 * the file was removed left the copy in the mailbox, and the next one delivered it again
 * (helper-34: 5 duplicates in 12 kills). Not fsync'd: they guard against a process dying;
 * after a machine crash a copy may come twice, never not at all.
 */
export function notePlacement(path: string, user: string, ino: number, offset: number, written: boolean): void {
  // Each on a line of its own, even after one a kill cut short (a small write that crosses a
  // page boundary can be): empty lines are skipped.
  appendFileSync(path, written ? `\ndone ${user} ${BOOT}\n` : `\nat ${user} ${ino} ${offset}\n`);
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
