// What each POP3 rewrite of a mailbox covered: "<inode> <size>" per line, in
// <user>/mymailbox.rewrites. smtpmail's recovery reads it to tell a copy that a user deleted
// (it was in the file a rewrite read, which kept or dropped it as the user said) from one a
// machine crash took before the mailbox was fsync'd (it was not: put it back). Without it,
// mail deleted over POP3 after smtpmail was killed came back at smtpmail's next start
// (helper-26: 33 of 70,000 messages in a kill -9 stress run).
import { existsSync, readFileSync } from "node:fs";
import { appendFile, rename, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { closeFd, datasync, openFd, syncDir } from "./fsio.ts";

/** Lines kept: a journal older than this many rewrites falls back to counting copies. */
const KEEP = 64;

export const rewriteLogPath = (root: string, user: string) => join(root, user, "mymailbox.rewrites");

/**
 * Notes, durably, that a rewrite read the file with inode `ino` up to `size` bytes. Called
 * under the write lock, before the new file is renamed into place.
 */
export async function noteRewrite(root: string, user: string, ino: number, size: number): Promise<void> {
  const path = rewriteLogPath(root, user);
  const fresh = !existsSync(path);
  let lines = fresh ? [] : readFileSync(path, "latin1").split("\n").filter(Boolean);
  lines.push(`${ino} ${size}`);
  if (lines.length > 2 * KEEP) {
    lines = lines.slice(-KEEP);
    const temp = `${path}.tmp`;
    await writeFile(temp, lines.join("\n") + "\n");
    await syncFile(temp);
    await rename(temp, path);
  } else {
    await appendFile(path, `${ino} ${size}\n`);
    await syncFile(path);
  }
  // Its name must be on disk no later than the rename that depends on it.
  if (fresh || lines.length === KEEP) await syncDir(dirname(path));
}

async function syncFile(path: string): Promise<void> {
  const fd = await openFd(path, "r+");
  try {
    await datasync(fd);
  } finally {
    await closeFd(fd);
  }
}

/** For each inode a rewrite replaced: how many bytes of it the rewrite read (the most, if several). */
export function rewriteCoverage(root: string, user: string): Map<number, number> {
  const covered = new Map<number, number>();
  let text = "";
  try {
    text = readFileSync(rewriteLogPath(root, user), "latin1");
  } catch {
    return covered;
  }
  for (const line of text.split("\n")) {
    const m = /^(\d+) (\d+)$/.exec(line);
    if (m) covered.set(Number(m[1]), Math.max(covered.get(Number(m[1])) ?? 0, Number(m[2])));
  }
  return covered;
}
