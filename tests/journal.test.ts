// The delivery journal: one fsync covers a whole round of deliveries, and recover() puts
// back copies whose mailbox bytes a machine crash lost (simulated by cutting the file).
import { afterEach, describe, expect, test } from "bun:test";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { basename, join } from "node:path";
import { FileMailStore } from "../lib/mail-store.ts";
import { buildRecord } from "../lib/mailbox.ts";
import { scanBuffer } from "../lib/mailbox-scanner.ts";
import { claimOrphanJournals, Journal, journalBoot, journalDir, newJournalPath, readJournal } from "../lib/journal.ts";
import { BOOT } from "../lib/lock.ts";

const roots: string[] = [];
afterEach(() => {
  for (const r of roots.splice(0)) rmSync(r, { recursive: true, force: true });
});

function root(): string {
  const r = mkdtempSync(join(tmpdir(), "journal-"));
  writeFileSync(join(r, "user.txt"), "alice a\nbob b\n");
  roots.push(r);
  return r;
}

const record = (n: number) => buildRecord(Buffer.from(`From: x@y\r\nTo: alice@z\r\nSubject: message ${n}\r\n\r\nbody ${n}\r\n`), "Received: 2026-12-01 : 10 : 00");
async function deadPid(): Promise<number> {
  const p = Bun.spawn(["true"]);
  await p.exited;
  return p.pid;
}
const subjects = (path: string) => {
  const data = readFileSync(path);
  return scanBuffer(data).messages.map((m) => /Subject: (.*)\r\n/.exec(data.toString("latin1", m.offset, m.offset + m.length))![1]);
};

test("a round of concurrent deliveries to several mailboxes shares one journal fsync", async () => {
  const r = root();
  const store = new FileMailStore(r);
  await Promise.all(Array.from({ length: 40 }, (_, i) => store.deliver([i % 2 ? "alice" : "bob"], record(i))));
  expect(store.stats.messages).toBe(40);
  // The first delivery runs alone; the other 39 queue behind it and share the next fsync.
  expect(store.stats.batches).toBeLessThanOrEqual(3);
  expect(subjects(join(r, "alice", "mymailbox")).length).toBe(20);
  expect(subjects(join(r, "bob", "mymailbox")).length).toBe(20);
  await store.close();
  // A clean close leaves no journal behind.
  expect(readdirSync(journalDir(r))).toEqual([]);
});

test("recover() puts back acknowledged copies whose mailbox bytes were lost", async () => {
  const r = root();
  const store = new FileMailStore(r);
  await store.deliver(["alice"], record(1));
  await store.idle(); // checkpoint: message 1 is fsync'd in the mailbox, journal emptied
  const checkpointed = statSync(join(r, "alice", "mymailbox")).size;
  await Promise.all([2, 3, 4].map((n) => store.deliver(["alice", "bob"], record(n))));
  const journal = liveJournals(r);
  expect(journal.length).toBe(1);
  expect(readJournal(journal[0]!).length).toBe(6);
  // Simulate the machine crashing before the checkpoint: alice's unsynced bytes are gone,
  // bob's made it. The journal (fsync'd) survives.
  truncateSync(join(r, "alice", "mymailbox"), checkpointed);
  machineCrashed(r);
  const restarted = new FileMailStore(r);
  expect(await restarted.recover()).toBe(3);
  // Recovery lets go of the mailbox locks it took: popserver must not wait for a delivery.
  expect(existsSync(join(r, "alice", "mymailbox.lock"))).toBe(false);
  expect(subjects(join(r, "alice", "mymailbox"))).toEqual(["message 1", "message 2", "message 3", "message 4"]);
  expect(subjects(join(r, "bob", "mymailbox"))).toEqual(["message 2", "message 3", "message 4"]);
  // Recovering again finds nothing to do: the journal was consumed.
  expect(await new FileMailStore(r).recover()).toBe(0);
});

test("recover() judges by content: a POP3 rewrite after a machine crash cannot hide a lost copy", async () => {
  const r = root();
  const store = new FileMailStore(r);
  await Promise.all([1, 2, 3].map((n) => store.deliver(["alice"], record(n))));
  // The machine crashes: message 3's bytes never reached the disk. Then, before smtpmail
  // restarts, a POP3 session deletes message 1: the rewrite renames a new file over the
  // mailbox, copying what is there (message 2 only).
  const box = join(r, "alice", "mymailbox");
  const data = readFileSync(box);
  const kept = scanBuffer(data).messages[1]!;
  writeFileSync(box + ".new", data.subarray(kept.offset, kept.offset + kept.length));
  renameSync(box + ".new", box);
  machineCrashed(r);
  // Message 3 was acknowledged: it comes back. Message 2 is there already: no duplicate.
  // Message 1 comes back too: at-least-once, the price of never losing mail.
  expect(await new FileMailStore(r).recover()).toBe(2);
  expect(subjects(box).sort()).toEqual(["message 1", "message 2", "message 3"]);
});

test("recover() is not fooled by an inode number given back: a copy carried over by a POP3 rewrite is not stored twice (helper-75)", async () => {
  const r = root();
  const store = new FileMailStore(r);
  await Promise.all([1, 2, 3].map((n) => store.deliver(["alice"], record(n))));
  // A POP3 rewrite deletes message 1 (messages 2 and 3 carried over to a new file), and the
  // machine crashes. ext4 may give the new file the old one's inode number (a mailbox
  // rewritten again and again alternates between two): the journal's entries then name the
  // new file's number, as done here by hand (the new file needs another birth time).
  const box = join(r, "alice", "mymailbox");
  const old = statSync(box).ino;
  const data = readFileSync(box);
  const kept = scanBuffer(data).messages.slice(1);
  await Bun.sleep(2);
  writeFileSync(box + ".new", Buffer.concat(kept.map((m) => data.subarray(m.offset, m.offset + m.length))));
  renameSync(box + ".new", box);
  const reused = statSync(box).ino;
  for (const j of liveJournals(r)) {
    const bytes = readFileSync(j).toString("latin1").replaceAll(` alice ${old}`, ` alice ${reused}`);
    writeFileSync(j, Buffer.from(bytes, "latin1"));
  }
  machineCrashed(r);
  // Message 1 comes back (deleted just before the crash: at-least-once); 2 and 3 once each.
  expect(await new FileMailStore(r).recover()).toBe(1);
  expect(subjects(box).sort()).toEqual(["message 1", "message 2", "message 3"]);
});

test.skipIf(!BOOT)("a journal of this boot (its process was killed, the machine ran on) puts nothing back: mail deleted since over POP3 stays deleted", async () => {
  const r = root();
  const store = new FileMailStore(r);
  await Promise.all([1, 2, 3].map((n) => store.deliver(["alice"], record(n))));
  // smtpmail is killed before its checkpoint; while it is down, a POP3 session deletes
  // message 1 (a rewrite renamed over the mailbox) and the user empties bob's box by hand.
  await store.deliver(["bob"], record(4));
  const box = join(r, "alice", "mymailbox");
  const data = readFileSync(box);
  const rest = scanBuffer(data).messages.slice(1);
  writeFileSync(box + ".new", data.subarray(rest[0]!.offset));
  renameSync(box + ".new", box);
  truncateSync(join(r, "bob", "mymailbox"), 0);
  const [journal] = liveJournals(r);
  expect(readJournal(journal!).length).toBe(4);
  expect(await new FileMailStore(r).recover()).toBe(0);
  expect(subjects(box)).toEqual(["message 2", "message 3"]);
  expect(subjects(join(r, "bob", "mymailbox"))).toEqual([]);
  // The journal is consumed all the same.
  expect(existsSync(journal!)).toBe(false);
});

const strace = Bun.which("strace");

/**
 * Recovery of r in a child process, traced for its syncs, as after a kill -9 of this
 * process's smtpmail: its journals and locks are made a gone pid's, of this boot.
 */
async function traceRecovery(r: string, env: Record<string, string> = {}): Promise<{ restored: number; syncs: string[] }> {
  const gone = await deadPid();
  for (const name of readdirSync(journalDir(r))) {
    if (name.includes(`-${process.pid}-`)) renameSync(join(journalDir(r), name), join(journalDir(r), name.replace(`-${process.pid}-`, `-${gone}-`)));
  }
  for (const user of ["alice", "bob"]) {
    const lock = join(r, user, "mymailbox.lock");
    if (existsSync(lock)) writeFileSync(lock, readFileSync(lock, "latin1").replace(`${process.pid} `, `${gone} `));
  }
  const out = join(r, "trace");
  const run = Bun.spawnSync([strace!, "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,sync,syncfs", "-o", out, process.execPath, join(import.meta.dir, "helpers", "recover-once.ts"), r], { env: { ...process.env, ...env } });
  if (run.exitCode !== 0) throw new Error(`recovery failed: ${run.stderr.toString()}`);
  const syncs = readFileSync(out, "latin1")
    .split("\n")
    .map((l) => /^\d+\s+(\w+)\((?:\d+<([^>]*)>)?/.exec(l))
    .filter((m) => m !== null)
    .map((m) => (m![2] ? `${m![1]}:${m![2]}` : m![1]!));
  return { restored: Number(run.stdout.toString()), syncs };
}

// A killed process's copies are in the page cache only; the journal may go once they are on the disk.
describe.skipIf(!BOOT || !strace)("recovery of a journal of this boot makes its copies durable before dropping it", () => {
  test("a mailbox still in place is fsync'd, and nothing more", async () => {
    const r = root();
    const store = new FileMailStore(r);
    await Promise.all([1, 2].map((n) => store.deliver(["alice"], record(n))));
    const { restored, syncs } = await traceRecovery(r);
    expect(restored).toBe(0);
    expect(syncs).toContain(`fsync:${join(r, "alice", "mymailbox")}`);
    expect(syncs.filter((c) => /^sync/.test(c))).toEqual([]);
    expect(liveJournals(r)).toEqual([]);
  });

  test("a journal of the version before (entries without birth times) with its mailbox in place: fsync'd, and nothing more", async () => {
    const r = root();
    const store = new FileMailStore(r);
    await Promise.all([1, 2].map((n) => store.deliver(["alice"], record(n))));
    for (const j of liveJournals(r)) writeFileSync(j, Buffer.from(readFileSync(j).toString("latin1").replace(/( alice \d+):[\d.]+ /g, "$1 "), "latin1"));
    expect(readJournal(liveJournals(r)[0]!).map((e) => e.birth)).toEqual([0, 0]);
    const { restored, syncs } = await traceRecovery(r);
    expect(restored).toBe(0);
    expect(syncs).toContain(`fsync:${join(r, "alice", "mymailbox")}`);
    expect(syncs.filter((c) => /^sync/.test(c))).toEqual([]);
  });

  test("a mailbox rewritten between two rounds (two inodes in one journal): its filesystem is synced", async () => {
    const r = root();
    const store = new FileMailStore(r);
    await store.deliver(["alice"], record(1));
    const box = join(r, "alice", "mymailbox");
    // A POP3 rewrite between the rounds: the later copies go to the new file.
    writeFileSync(box + ".new", readFileSync(box));
    renameSync(box + ".new", box);
    await store.deliver(["alice"], record(2));
    expect(new Set(readJournal(liveJournals(r)[0]!).map((e) => e.ino)).size).toBe(2);
    const { restored, syncs } = await traceRecovery(r);
    expect(restored).toBe(0);
    expect(syncs.filter((c) => c.startsWith("syncfs:"))).toEqual([`syncfs:${r}`]);
    expect(subjects(box)).toEqual(["message 1", "message 2"]);
  });

  test("a mailbox replaced by a file that got its inode number back: its filesystem is synced", async () => {
    const r = root();
    const store = new FileMailStore(r);
    await Promise.all([1, 2].map((n) => store.deliver(["alice"], record(n))));
    const box = join(r, "alice", "mymailbox");
    const old = statSync(box).ino;
    await Bun.sleep(2);
    writeFileSync(box + ".new", readFileSync(box));
    renameSync(box + ".new", box);
    // As ext4 may do: the new file has the number the entries name (here, by editing them).
    for (const j of liveJournals(r)) writeFileSync(j, Buffer.from(readFileSync(j).toString("latin1").replaceAll(` alice ${old}:`, ` alice ${statSync(box).ino}:`), "latin1"));
    expect(readJournal(liveJournals(r)[0]!).map((e) => e.ino)).toEqual([statSync(box).ino, statSync(box).ino]);
    const { restored, syncs } = await traceRecovery(r);
    expect(restored).toBe(0);
    expect(syncs.filter((c) => c.startsWith("syncfs:"))).toEqual([`syncfs:${r}`]);
    expect(subjects(box)).toEqual(["message 1", "message 2"]);
  });

  test("a mailbox moved away while smtpmail was down: its filesystem is synced", async () => {
    const r = root();
    const store = new FileMailStore(r);
    await Promise.all([1, 2].map((n) => store.deliver(["alice"], record(n))));
    renameSync(join(r, "alice", "mymailbox"), join(r, "alice", "archive"));
    const { restored, syncs } = await traceRecovery(r);
    expect(restored).toBe(0);
    expect(syncs.filter((c) => c.startsWith("syncfs:"))).toEqual([`syncfs:${r}`]);
    expect(subjects(join(r, "alice", "archive"))).toEqual(["message 1", "message 2"]);
    expect(liveJournals(r)).toEqual([]);
  });

  test("when the machine cannot be synced (no sync program), the journal is replayed: copies may come twice, never lost", async () => {
    const r = root();
    const store = new FileMailStore(r);
    await Promise.all([1, 2].map((n) => store.deliver(["alice"], record(n))));
    renameSync(join(r, "alice", "mymailbox"), join(r, "alice", "archive"));
    const { restored } = await traceRecovery(r, { PATH: "/nonexistent" });
    expect(restored).toBe(2);
    expect(subjects(join(r, "alice", "mymailbox"))).toEqual(["message 1", "message 2"]);
  });
});

test("recover() puts back every lost copy of identical messages", async () => {
  const r = root();
  const store = new FileMailStore(r);
  await store.deliver(["alice"], record(7));
  await store.idle(); // the first copy is checkpointed: durable, out of the journal
  const size = statSync(join(r, "alice", "mymailbox")).size;
  await Promise.all([0, 1].map(() => store.deliver(["alice"], record(7))));
  truncateSync(join(r, "alice", "mymailbox"), size); // both later copies lost
  machineCrashed(r);
  // The same file, cut short: both journalled copies are missing, however alike the one
  // still there looks.
  expect(await new FileMailStore(r).recover()).toBe(2);
  expect(subjects(join(r, "alice", "mymailbox"))).toEqual(["message 7", "message 7", "message 7"]);
});

/**
 * A machine crash, as recovery sees it: the journals now belong to an earlier boot. (A
 * journal of this boot is only a killed process's, whose mailbox bytes are all there.)
 * Without a boot id the names carry none and every journal is replayed by content.
 */
function machineCrashed(r: string): void {
  if (!BOOT) return;
  for (const name of readdirSync(journalDir(r))) {
    if (name.includes(`~b${BOOT}-`)) renameSync(join(journalDir(r), name), join(journalDir(r), name.replace(`~b${BOOT}-`, "~b000000000000-")));
  }
}

/** The journal files of a root that hold current entries. */
const liveJournals = (r: string) =>
  readdirSync(journalDir(r))
    .map((f) => join(journalDir(r), f))
    .filter((f) => readJournal(f).length > 0);

test("a torn last journal entry (never acknowledged) is ignored", async () => {
  const r = root();
  const store = new FileMailStore(r);
  await store.deliver(["alice"], record(1));
  const [path] = liveJournals(r);
  // The journal is written in place over zeros: the torn entry goes where the next would.
  const end = readFileSync(path!).indexOf(0);
  const fd = openSync(path!, "r+");
  const torn = Buffer.from("MJ2 1 alice 1 999 500 deadbeef\nFrom: torn");
  writeSync(fd, torn, 0, torn.length, end);
  closeSync(fd);
  expect(readJournal(path!).map((e) => e.record.equals(record(1)))).toEqual([true]);
  await store.close();
});

test("the journal is reused in place: after a checkpoint, older entries further on are never read again", async () => {
  const r = root();
  const store = new FileMailStore(r);
  for (const n of [1, 2, 3]) await store.deliver(["alice"], record(n));
  const [path] = liveJournals(r);
  expect(readJournal(path!).length).toBe(3);
  const size = statSync(path!).size;
  await store.idle(); // checkpoint: mailbox fsync'd, journal emptied by a reset line
  expect(readJournal(path!)).toEqual([]);
  await store.deliver(["bob"], record(4));
  // Same file, same size (no append, so no filesystem metadata to commit): one current
  // entry, although the three older ones are still there in the bytes after it.
  expect(liveJournals(r)).toEqual([path!]);
  expect(statSync(path!).size).toBe(size);
  const entries = readJournal(path!);
  expect(entries.map((e) => [e.user, e.record.equals(record(4))])).toEqual([["bob", true]]);
  expect(readFileSync(path!).includes(record(3))).toBe(true);
  await store.close();
  expect(readdirSync(journalDir(r))).toEqual([]);
});

test("checkpoints never close a descriptor a delivery is still using (files replaced and new all the time)", async () => {
  const r = root();
  const users = Array.from({ length: 12 }, (_, i) => `u${i}`);
  writeFileSync(join(r, "user.txt"), users.map((u) => `${u} p\n`).join(""));
  const store = new FileMailStore(r);
  // An unrelated file opened and closed all the time: a descriptor closed under a delivery
  // would be reused for it, and the delivery would land there.
  const victim = join(r, "victim");
  writeFileSync(victim, "");
  const open: number[] = [];
  const churn = setInterval(() => {
    for (let k = 0; k < 4; k++) open.push(openSync(victim, "a"));
    while (open.length > 8) closeSync(open.shift()!);
  }, 0);
  const expected = new Map<string, number>();
  let failures = 0;
  const deadline = Date.now() + 1500;
  for (let n = 0; Date.now() < deadline && n < 200_000; ) {
    const batch: Promise<void>[] = [];
    for (const u of users) {
      const path = join(r, u, "mymailbox");
      // As a POP3 rewrite does, the file goes away; the next delivery starts a new one.
      if (existsSync(path) && Math.random() < 0.5) {
        unlinkSync(path);
        expected.set(u, 0);
      }
      const id = ++n;
      batch.push(store.deliver([u], record(id)).then(() => void expected.set(u, (expected.get(u) ?? 0) + 1), () => void failures++));
      await Bun.sleep(0);
    }
    await Promise.all(batch);
  }
  clearInterval(churn);
  open.forEach((fd) => closeSync(fd));
  await store.close();
  expect(failures).toBe(0);
  expect(readFileSync(victim).length).toBe(0);
  for (const u of users) {
    const path = join(r, u, "mymailbox");
    expect([u, existsSync(path) ? subjects(path).length : 0]).toEqual([u, expected.get(u) ?? 0]);
  }
});

// MJ1: appended journals; MJ2 without birth times: the version before *.jnl (zero-filled, an epoch).
for (const [format, head, tail] of [
  ["MJ1 (appended)", "MJ1", Buffer.alloc(0)],
  ["MJ2 without birth times", "MJ2 77", Buffer.alloc(4096)],
] as const) {
  test(`a journal of an earlier format (${format}) left by a crash is still replayed after an upgrade`, async () => {
    const r = root();
    const box = join(r, "alice", "mymailbox");
    mkdirSync(join(r, "alice"), { recursive: true });
    writeFileSync(box, ""); // the written bytes never reached the disk
    const rec = record(1);
    mkdirSync(journalDir(r), { recursive: true });
    const host = hostname().replace(/[^A-Za-z0-9.-]/g, "_");
    const line = `${head} alice ${statSync(box).ino} 0 ${rec.length} ${Bun.hash.crc32(rec).toString(16)}\n`;
    const name = join(journalDir(r), `${host}-${await deadPid()}-1700000000000000001.journal`);
    writeFileSync(name, Buffer.concat([Buffer.from(line), rec, tail]));
    expect(readJournal(name).map((e) => [e.user, e.birth, e.offset])).toEqual([["alice", 0, 0]]);
    expect(await new FileMailStore(r).recover()).toBe(1);
    expect(subjects(box)).toEqual(["message 1"]);
  });
}

test.skipIf(!BOOT)("a journal of a live pid from an earlier boot is replayed (the pid was handed out again after a crash); one of this boot is its owner's", async () => {
  // helper-26's pid reuse, where it would lose mail: after a machine crash, the mailbox lost
  // the append and only this journal holds the copy.
  const host = hostname().replace(/[^A-Za-z0-9.-]/g, "_");
  for (const [boot, replayed] of [["000000000000", 1], [BOOT, 0]] as const) {
    const r = root();
    const box = join(r, "alice", "mymailbox");
    mkdirSync(join(r, "alice"), { recursive: true });
    writeFileSync(box, "");
    const rec = record(1);
    mkdirSync(journalDir(r), { recursive: true });
    const line = `MJ1 alice ${statSync(box).ino} 0 ${rec.length} ${Bun.hash.crc32(rec).toString(16)}\n`;
    const name = join(journalDir(r), `${host}~b${boot}-${process.ppid}-1700000000000000001.journal`);
    writeFileSync(name, Buffer.concat([Buffer.from(line), rec]));
    expect(await new FileMailStore(r).recover()).toBe(replayed);
    expect(subjects(box)).toEqual(replayed ? ["message 1"] : []);
    expect(existsSync(name)).toBe(!replayed);
  }
});

test.skipIf(!BOOT)("earlier versions leave this version's journals alone, claimed for replay or not: they would read its entries as torn and drop the journal", async () => {
  const r = root();
  const path = newJournalPath(r);
  writeFileSync(path, "");
  const name = basename(path);
  // cd5236f and before took over "<host>-<pid>-<n>.journal"; e2e702a and before took over
  // names ending ".journal", and replays interrupted after a claim ("<name>.replay-<host>-<pid>").
  const replayedBefore = /\.replay-([^~]+)(?:~b([0-9a-f]+))?-(\d+)$/;
  expect(/^(.+)-(\d+)-\d+\.journal$/.test(name)).toBe(false);
  expect(name.endsWith(".journal")).toBe(false);
  expect(replayedBefore.test(name)).toBe(false);
  // Claimed by this version after its writer died: still its boot, still not the earlier versions'.
  const gone = await deadPid();
  renameSync(path, join(journalDir(r), name.replace(`-${process.pid}-`, `-${gone}-`)));
  const claimed = claimOrphanJournals(r);
  expect(claimed.length).toBe(1);
  expect(replayedBefore.test(basename(claimed[0]!))).toBe(false);
  expect(journalBoot(claimed[0]!)).toBe(BOOT);
});

test("a birth time the reader could not take back exactly (before 1970, or printed with an exponent) is left out: the entries after it are still read", async () => {
  const r = root();
  const j = await Journal.create(newJournalPath(r));
  try {
    const recs = [record(1), record(2), record(3)];
    await j.append([
      { user: "alice", ino: 5, birth: -11644473600000, offset: 0, record: recs[0]! },
      { user: "alice", ino: 5, birth: 5e-7, offset: recs[0]!.length, record: recs[1]! },
      { user: "bob", ino: 6, birth: 1796304369785.8457, offset: 0, record: recs[2]! },
    ]);
    expect(readJournal(j.path).map((e) => [e.user, e.birth])).toEqual([
      ["alice", 0],
      ["alice", 0],
      ["bob", 1796304369785.8457],
    ]);
  } finally {
    j.close();
  }
});

// The write is made to fail for real: the file size limit (RLIMIT_FSIZE, with SIGXFSZ
// ignored) turns the write that would grow the journal past it into EFBIG.
test.skipIf(!Bun.which("prlimit"))("a journal write that fails leaves no gap: the entries after it are still read", async () => {
  const r = root();
  const p = Bun.spawn(["bash", "-c", `trap '' XFSZ; exec "$0" "$1" "$2"`, process.execPath, join(import.meta.dir, "helpers/journal-full.ts"), r], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  expect(err).toBe("");
  expect(code).toBe(0);
  expect(JSON.parse(out)).toEqual({ second: "refused: EFBIG", entries: ["first", "third"] });
});

test("a message to several recipients is journalled once; the other entries name its bytes, and recovery restores every copy", async () => {
  const r = root();
  writeFileSync(join(r, "user.txt"), "alice a\nbob b\ncarol c\n");
  const store = new FileMailStore(r);
  await store.deliver(["alice"], record(0));
  await store.idle(); // checkpointed: the journal is empty again
  // 2 MiB: large enough for the mailbox and journal writes to go to the thread pool.
  const big = buildRecord(Buffer.from(`From: x@y\r\nSubject: big\r\n\r\n${"z".repeat(76)}\r\n`.repeat(1) + `${"w".repeat(1000)}\r\n`.repeat(2100)), "Received: 2026-12-01 : 10 : 00");
  await store.deliver(["alice", "bob", "carol"], big);
  const [path] = liveJournals(r);
  const entries = readJournal(path!);
  expect(entries.map((e) => e.user).sort()).toEqual(["alice", "bob", "carol"]);
  for (const e of entries) expect(e.record.equals(big)).toBe(true);
  // One copy of the bytes in the journal, not three.
  const text = readFileSync(path!).toString("latin1");
  expect(text.split("Subject: big").length - 1).toBe(1);
  expect(text.match(/ @\d+\n/g)?.length).toBe(2);
  // A machine crash before the checkpoint: all three mailboxes lose the message.
  const sizes = Object.fromEntries(["alice", "bob", "carol"].map((u) => [u, u === "alice" ? statSync(join(r, u, "mymailbox")).size - big.length : 0]));
  for (const u of ["alice", "bob", "carol"]) truncateSync(join(r, u, "mymailbox"), sizes[u]);
  machineCrashed(r);
  expect(await new FileMailStore(r).recover()).toBe(3);
  expect(subjects(join(r, "alice", "mymailbox"))).toEqual(["message 0", "big"]);
  for (const u of ["bob", "carol"]) expect(readFileSync(join(r, u, "mymailbox")).equals(big)).toBe(true);
});

test("an entry that names bytes which are not a record of this journal ends the reading there", async () => {
  const r = root();
  const dir = journalDir(r);
  mkdirSync(dir, { recursive: true });
  const rec = record(1);
  const crc = Bun.hash.crc32(rec).toString(16);
  const first = `MJ2 7 alice 1 0 ${rec.length} ${crc}\n`;
  const good = `MJ2 7 bob 2 0 ${rec.length} ${crc} @${first.length}\n`;
  const bad = `MJ2 7 carol 3 0 ${rec.length} ${crc} @${first.length + 1}\n`; // not where a record starts
  const after = `MJ2 7 dave 4 0 ${rec.length} ${crc} @${first.length}\n`;
  // Naming the right place with another length or checksum is as bad.
  const otherLength = `MJ2 7 carol 3 0 ${rec.length - 1} ${crc} @${first.length}\n`;
  const otherCrc = `MJ2 7 carol 3 0 ${rec.length} ${(parseInt(crc, 16) ^ 1).toString(16)} @${first.length}\n`;
  for (const wrong of [bad, otherLength, otherCrc]) {
    const path = join(dir, "x.journal");
    writeFileSync(path, Buffer.concat([Buffer.from(first), rec, Buffer.from(good + wrong + after)]));
    expect(readJournal(path).map((e) => [e.user, e.record.equals(rec)])).toEqual([
      ["alice", true],
      ["bob", true],
    ]);
  }
});
