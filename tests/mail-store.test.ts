import { afterAll, afterEach, describe, expect, spyOn, test } from "bun:test";
import { appendFileSync, chmodSync, existsSync, linkSync, statSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync, mkdirSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { FileMailStore } from "../lib/mail-store.ts";
import { MAX_OPEN_BOXES } from "../lib/open-boxes.ts";
import { acquireLock, wantedPath } from "../lib/lock.ts";
import { buildRecord } from "../lib/mailbox.ts";
import { scanBuffer } from "../lib/mailbox-scanner.ts";
import { deferredDir, notePlacement, readDeferred } from "../lib/deferred.ts";
import { journalDir } from "../lib/journal.ts";
import * as fsio from "../lib/fsio.ts";
import { openMailboxes } from "./helpers/open-fds.ts";

const roots: string[] = [];
// Every store is closed after its test: an open FileHandle collected later is an error in Bun.
const stores: FileMailStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});
function track(s: FileMailStore): FileMailStore {
  stores.push(s);
  return s;
}
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});
function root(users = ["alice", "bob"]): string {
  const r = mkdtempSync(join(tmpdir(), "store-test-"));
  roots.push(r);
  for (const u of users) mkdirSync(join(r, u));
  return r;
}
const rec = (subject: string) => buildRecord(Buffer.from(`Subject: ${subject}\r\n\r\nbody of ${subject}\r\n..\r\n`), "Received: 2024-01-01 : 00 : 00");
const box = (r: string, u: string) => readFileSync(join(r, u, "mymailbox"));
function subjects(file: Buffer): string[] {
  const s = scanBuffer(file);
  expect(s.validEnd).toBe(file.length);
  return s.messages.map((m) => /Subject: (\S+)/.exec(file.subarray(m.offset, m.offset + m.length).toString())![1]!);
}

describe("FileMailStore", () => {
  test("a new mailbox is not closed while its directory is synced, whatever closes idle ones meanwhile (helper-49)", async () => {
    const users = Array.from({ length: MAX_OPEN_BOXES + 1 }, (_, i) => `w${i}`);
    const r = root(users);
    const store = track(new FileMailStore(r));
    // MAX_OPEN_BOXES mailboxes written and not yet checkpointed: dirty, so none of them can be closed.
    await Promise.all(users.slice(0, MAX_OPEN_BOXES).map((u) => store.deliver([u], rec(u))));
    let stop = false;
    const hammer = (async () => {
      while (!stop) {
        (store as unknown as { closeIdleBoxes(): void }).closeIdleBoxes();
        await new Promise((res) => setImmediate(res));
      }
    })();
    const last = users[MAX_OPEN_BOXES]!;
    try {
      // Before the fix: EBADF, the descriptor closed under the append.
      await store.deliver([last], rec(last));
    } finally {
      stop = true;
      await hammer;
    }
    await store.idle();
    for (const u of users) expect(subjects(box(r, u))).toEqual([u]);
  });

  test("after deliveries to many mailboxes, at most MAX_OPEN_BOXES stay open (each holds a descriptor)", async () => {
    const users = Array.from({ length: MAX_OPEN_BOXES + 30 }, (_, i) => `u${i}`);
    const r = root(users);
    const store = track(new FileMailStore(r));
    for (const u of users) await store.deliver([u], rec(u));
    await store.idle();
    const openBoxes = () => openMailboxes(r);
    // Descriptors are closed asynchronously.
    for (let i = 0; i < 100 && openBoxes() > MAX_OPEN_BOXES; i++) await Bun.sleep(20);
    expect(openBoxes()).toBeLessThanOrEqual(MAX_OPEN_BOXES);
    expect(openBoxes()).toBeGreaterThan(0); // the ones written last are kept for the next delivery
    for (const u of users) expect(subjects(box(r, u))).toEqual([u]);
  });

  // Root may write anywhere: only an ordinary user sees the directory's mode.
  test.skipIf(process.getuid?.() === 0)("unavailable(): a writable mailbox in a directory we cannot write (the lock goes there) is refused at RCPT", () => {
    const r = root(["alice"]);
    const store = track(new FileMailStore(r));
    writeFileSync(join(r, "alice", "mymailbox"), "");
    chmodSync(join(r, "alice"), 0o555);
    try {
      expect(store.unavailable("alice")).toBe("EACCES");
    } finally {
      chmodSync(join(r, "alice"), 0o755);
    }
  });

  test("unavailable(): why a recipient's mailbox cannot take mail, asked before DATA", async () => {
    const r = root(["alice", "bob", "carol"]);
    const store = track(new FileMailStore(r));
    expect(store.unavailable("alice")).toBeNull(); // no mailbox yet: made at the first delivery
    expect(store.unavailable("dave")).toBeNull(); // no directory yet either
    mkdirSync(join(r, "bob", "mymailbox"));
    expect(store.unavailable("bob")).toContain("is not a file");
    rmSync(join(r, "carol"), { recursive: true });
    writeFileSync(join(r, "carol"), "");
    expect(store.unavailable("carol")).toBe("ENOTDIR");
    symlinkSync(join(r, "nowhere", "box"), join(r, "alice", "mymailbox"));
    expect(store.unavailable("alice")).toContain("is a symbolic link");
    rmSync(join(r, "alice", "mymailbox"));
    // A link to another user's mailbox: refused, and never written through (helper-42: appends
    // under alice's lock raced bob's POP3 rewrites, and mail was lost).
    writeFileSync(join(r, "bob", "real"), "");
    symlinkSync(join(r, "bob", "real"), join(r, "alice", "mymailbox"));
    expect(store.unavailable("alice")).toContain("is a symbolic link");
    await expect(store.deliver(["alice"], rec("through a link"))).rejects.toThrow();
    expect(readFileSync(join(r, "bob", "real")).length).toBe(0);
    rmSync(join(r, "alice", "mymailbox"));
    // A FIFO in the lock's place: refused at once, without reading it (that read blocked the server).
    writeFileSync(join(r, "carol2"), "");
    mkdirSync(join(r, "frank"));
    writeFileSync(join(r, "frank", "mymailbox"), "");
    expect(Bun.spawnSync(["mkfifo", join(r, "frank", "mymailbox.lock")]).exitCode).toBe(0);
    expect(store.unavailable("frank")).toContain("is not a lock file");
    await store.deliver(["alice"], rec("one"));
    expect(store.unavailable("alice")).toBeNull();
    // A write lock held from another host is never broken here: refused at RCPT, alone
    // (helper-22: the message waited 30 s, then 451 after the others had their copy).
    const erin = join(r, "erin");
    mkdirSync(erin);
    writeFileSync(join(erin, "mymailbox"), "");
    writeFileSync(join(erin, "mymailbox.lock"), "12345 some-other-host\n");
    expect(store.unavailable("erin")).toContain("locked from another host (some-other-host)");
    writeFileSync(join(erin, "mymailbox.lock"), `${process.pid} ${hostname()}\n`);
    expect(store.unavailable("erin")).toBeNull(); // this host's: waited for, or broken when stale
  });

  test("delivers to every user, creating a missing user directory", async () => {
    const r = root(["alice"]);
    const store = track(new FileMailStore(r));
    await store.deliver(["alice", "carol"], rec("one"));
    expect(subjects(box(r, "alice"))).toEqual(["one"]);
    expect(subjects(box(r, "carol"))).toEqual(["one"]);
    expect(box(r, "alice").equals(rec("one"))).toBe(true);
  });

  test("a user's directory removed by hand while its mailbox is kept open is made again at the next delivery (helper-83)", async () => {
    const r = root(["alice"]);
    const store = track(new FileMailStore(r));
    await store.deliver(["alice"], rec("one"));
    // Its lock let go (deliveries paused), its descriptor still open.
    await Bun.sleep(50);
    rmSync(join(r, "alice"), { recursive: true, force: true });
    await store.deliver(["alice"], rec("two"));
    expect(subjects(box(r, "alice"))).toEqual(["two"]);
  });

  test("concurrent deliveries all land exactly once, with fewer fsyncs than messages (group commit)", async () => {
    const r = root();
    const store = track(new FileMailStore(r));
    const N = 200;
    await Promise.all(Array.from({ length: N }, (_, i) => store.deliver(i % 3 === 0 ? ["alice", "bob"] : ["alice"], rec(`m${i}`))));
    const a = subjects(box(r, "alice"));
    expect(a.length).toBe(N);
    expect(new Set(a).size).toBe(N);
    const b = subjects(box(r, "bob"));
    expect(b.length).toBe(Math.ceil(N / 3));
    expect(store.stats.messages).toBe(N + Math.ceil(N / 3));
    expect(store.stats.fsyncs).toBeLessThan(store.stats.messages);
    await store.idle();
    expect(readdirSync(join(r, "alice")).filter((f) => f.includes("lock"))).toEqual([]);
  });

  test("under steady load, checkpoints reuse the two journal files instead of making new ones", async () => {
    const r = root();
    const store = track(new FileMailStore(r));
    await store.recover(); // makes the journal and its spare before serving, as smtpmail does
    expect(store.stats.journals).toBe(2);
    // 8 clients delivering back to back, 64 KiB each, so rounds keep coming while checkpoints
    // run (every 2 MiB of journal, or 300 ms), until 6 checkpoints have run (at most 10 s).
    const big = (tag: string) => buildRecord(Buffer.from(`Subject: ${tag}\r\n\r\n${"y".repeat(78)}\r\n`.repeat(800)), "Received: 2024-01-01 : 00 : 00");
    const checkpoints = () => store.stats.checkpoints;
    const until = Date.now() + 10_000;
    let sent = 0;
    await Promise.all(
      Array.from({ length: 8 }, async (_, c) => {
        while (checkpoints() < 6 && Date.now() < until) await store.deliver([c % 2 ? "alice" : "bob"], big(`c${c}m${sent++}`));
      }),
    );
    expect(checkpoints()).toBeGreaterThanOrEqual(6);
    expect(store.stats.journals).toBe(2);
    expect(readdirSync(join(r, ".smtpmail-journal")).length).toBe(2);
    expect(subjects(box(r, "alice")).length + subjects(box(r, "bob")).length).toBe(sent);
  });

  test("a mailbox file replaced while a backup's hard link keeps the old one, or renamed away: the next delivery goes to the file at the path", async () => {
    // helper-22: the store checked only that its open file still had a link, so the 250'd
    // message went into the backup (or the archive) and the user never saw it.
    const r = root();
    const store = track(new FileMailStore(r));
    const path = join(r, "bob", "mymailbox");
    await store.deliver(["bob"], rec("one"));
    linkSync(path, join(r, "bob", "backup"));
    // A POP3 rewrite's last step: a new file renamed over the mailbox.
    writeFileSync(join(r, "bob", "new"), rec("rewritten"));
    renameSync(join(r, "bob", "new"), path);
    await store.deliver(["bob"], rec("two"));
    expect(subjects(box(r, "bob"))).toEqual(["rewritten", "two"]);
    expect(subjects(readFileSync(join(r, "bob", "backup")))).toEqual(["one"]);
    // An administrator moves the mailbox away.
    renameSync(path, join(r, "bob", "archive"));
    await store.deliver(["bob"], rec("three"));
    expect(subjects(box(r, "bob"))).toEqual(["three"]);
    expect(subjects(readFileSync(join(r, "bob", "archive")))).toEqual(["rewritten", "two"]);
    // What went into the replaced files is still fsync'd by the next checkpoint: three files
    // (unless a timed checkpoint already ran, which the test cannot stop).
    const [fsyncs, checkpoints] = [store.stats.fsyncs, store.stats.checkpoints];
    await store.idle();
    if (checkpoints === 0) expect(store.stats.fsyncs - fsyncs).toBe(3);
  });

  test("two stores (two processes' worth) appending to one mailbox never interleave", async () => {
    const r = root();
    const s1 = track(new FileMailStore(r));
    const s2 = track(new FileMailStore(r));
    await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 ? s1 : s2).deliver(["alice"], rec(`x${i}`))));
    expect(subjects(box(r, "alice")).sort()).toEqual(Array.from({ length: 60 }, (_, i) => `x${i}`).sort());
  });

  test("a torn tail is moved aside before the next append", async () => {
    const r = root();
    const good = rec("good");
    const torn = rec("torn").subarray(0, 20);
    writeFileSync(join(r, "alice", "mymailbox"), Buffer.concat([good, torn]));
    const warnings: string[] = [];
    const store = track(new FileMailStore(r, (w) => warnings.push(w)));
    await store.deliver(["alice"], rec("next"));
    expect(box(r, "alice").equals(Buffer.concat([good, rec("next")]))).toBe(true);
    const aside = readdirSync(join(r, "alice")).filter((f) => f.startsWith("mymailbox.torn-"));
    expect(aside.length).toBe(1);
    expect(readFileSync(join(r, "alice", aside[0]!)).equals(torn)).toBe(true);
    expect(warnings.join()).toContain("unterminated tail");
  });

  test("an append that fails part way (a full disk) is cut off at once; a hand-written last '.' still gets its newline next time (helper-83)", async () => {
    const r = root();
    const hand = "From: a@b\nSubject: hand\n\nhi\n.";
    writeFileSync(join(r, "alice", "mymailbox"), hand);
    const store = track(new FileMailStore(r));
    const write = spyOn(fsio, "writevAllSync").mockImplementationOnce((fd: number, parts: Buffer[]) => {
      const all = Buffer.concat(parts);
      fsio.writeAllSync(fd, all.subarray(0, all.length >> 1));
      throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
    });
    try {
      await expect(store.deliver(["alice"], rec("lost"))).rejects.toThrow("ENOSPC");
      expect(box(r, "alice").toString()).toBe(hand);
      await store.deliver(["alice"], rec("next"));
    } finally {
      write.mockRestore();
    }
    expect(box(r, "alice").equals(Buffer.concat([Buffer.from(hand + "\n"), rec("next")]))).toBe(true);
    expect(readdirSync(join(r, "alice")).filter((f) => f.startsWith("mymailbox.torn-"))).toEqual([]);
  });

  test("a failed append is not cut back over a message another program appended first, ignoring the lock (helper-90)", async () => {
    const r = root();
    const p = join(r, "alice", "mymailbox");
    writeFileSync(p, rec("old"));
    const store = track(new FileMailStore(r));
    await store.deliver(["alice"], rec("first"));
    const write = spyOn(fsio, "writevAllSync").mockImplementationOnce((fd: number, parts: Buffer[]) => {
      appendFileSync(p, rec("other"));
      const all = Buffer.concat(parts);
      fsio.writeAllSync(fd, all.subarray(0, all.length >> 1));
      throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
    });
    try {
      await expect(store.deliver(["alice"], rec("lost"))).rejects.toThrow("ENOSPC");
      // The torn tail behind the other message is set aside by the next append.
      await store.deliver(["alice"], rec("next"));
    } finally {
      write.mockRestore();
    }
    expect(subjects(box(r, "alice"))).toEqual(["old", "first", "other", "next"]);
    expect(readdirSync(join(r, "alice")).filter((f) => f.startsWith("mymailbox.torn-")).length).toBe(1);
  });

  test("a tail cut right after the final dot of a CRLF record is torn too, not completed", async () => {
    const r = root();
    const good = rec("good");
    const half = Buffer.from("Subject: half\r\n\r\nbody\r\n.");  // could be the start of "..x"
    writeFileSync(join(r, "alice", "mymailbox"), Buffer.concat([good, half]));
    const store = track(new FileMailStore(r));
    await store.deliver(["alice"], rec("next"));
    expect(subjects(box(r, "alice"))).toEqual(["good", "next"]);
  });

  test("a torn tail with no complete message before it is moved aside entirely", async () => {
    const r = root();
    writeFileSync(join(r, "alice", "mymailbox"), "Subject: half\r\nno end");
    await track(new FileMailStore(r)).deliver(["alice"], rec("next"));
    expect(subjects(box(r, "alice"))).toEqual(["next"]);
  });

  test("a hand-written LF mailbox (leading '.', last '.' without newline) is kept and appended to", async () => {
    const r = root();
    const hand = ".\nFrom: a@b\nTo: alice@x\nSubject: hand\nReceived: 2024-01-01 : 10 : 00\nhi\n.";
    writeFileSync(join(r, "alice", "mymailbox"), hand);
    await track(new FileMailStore(r)).deliver(["alice"], rec("next"));
    const file = box(r, "alice");
    expect(file.toString().startsWith(hand)).toBe(true);
    expect(subjects(file)).toEqual(["hand", "next"]);
  });

  test("under steady delivery the write lock is kept across rounds, yet a waiting popserver gets it and appends pause while it holds it", async () => {
    const r = root();
    const store = track(new FileMailStore(r));
    const lockPath = join(r, "alice", "mymailbox.lock");
    let stop = false;
    const sent: string[] = [];
    const pumps = Array.from({ length: 8 }, async (_, k) => {
      for (let i = 0; !stop && i < 5000; i++) {
        await store.deliver(["alice"], rec(`p${k}-${i}`));
        sent.push(`p${k}-${i}`);
      }
    });
    while (store.stats.batches < 20) await Bun.sleep(1);
    // As popserver's rewrite does: wait for the lock (leaving the "wanted" marker).
    const lock = await acquireLock(lockPath, 5000);
    const sizeHeld = box(r, "alice").length;
    await Bun.sleep(30);
    expect(box(r, "alice").length).toBe(sizeHeld);
    lock.release();
    const batchesAfter = store.stats.batches;
    while (store.stats.batches < batchesAfter + 20) await Bun.sleep(1);
    stop = true;
    await Promise.all(pumps);
    expect(subjects(box(r, "alice")).sort()).toEqual(sent.sort());
    // Far fewer lock acquisitions than rounds: the lock was not taken and dropped each time.
    expect(store.stats.locks).toBeLessThan(store.stats.batches / 2);
  });

  test("a lock someone else holds is asked for with a 'wanted' marker, removed once ours; another waiter's marker is left alone", async () => {
    const r = root(["alice"]);
    const store = track(new FileMailStore(r));
    const lockPath = join(r, "alice", "mymailbox.lock");
    const lock = await acquireLock(lockPath, 5000);
    const delivered = store.deliver(["alice"], rec("waited"));
    const deadline = Date.now() + 5000;
    while (!existsSync(wantedPath(lockPath)) && Date.now() < deadline) await Bun.sleep(1);
    expect(existsSync(wantedPath(lockPath))).toBe(true);
    lock.release();
    await delivered;
    expect(existsSync(wantedPath(lockPath))).toBe(false);
    // popserver waiting (its marker) while the lock happens to be free: smtpmail's delivery
    // must not take the request away (it used to unlink the marker after every lock it took).
    await store.idle();
    writeFileSync(wantedPath(lockPath), `${process.pid} ${hostname()}\n`);
    await store.deliver(["alice"], rec("second"));
    expect(existsSync(wantedPath(lockPath))).toBe(true);
    expect(subjects(box(r, "alice"))).toEqual(["waited", "second"]);
  });

  test("a waiter whose event loop stalls 40 ms between tries still gets a lock smtpmail keeps under steady delivery (helper-77)", async () => {
    const r = root(["alice"]);
    const store = track(new FileMailStore(r));
    let stop = false;
    let n = 0;
    const loops = Array.from({ length: 4 }, async () => {
      while (!stop) await store.deliver(["alice"], rec(`m${n++}`));
    });
    try {
      while (store.stats.batches < 20) await Bun.sleep(1);
      const waiter = Bun.spawn([process.execPath, join(import.meta.dir, "helpers", "slow-waiter.ts"), r, "40", "8000"], { stdout: "pipe", stderr: "inherit" });
      // Before: smtpmail removed the marker of a yielded lock not taken within 25 ms, and took it back each time.
      expect((await new Response(waiter.stdout).text()).trim()).toMatch(/^got the lock after \d+ ms$/);
    } finally {
      stop = true;
      await Promise.all(loops);
    }
    expect(subjects(box(r, "alice")).length).toBe(n);
  });

  test("directories are synced for the names smtpmail makes, not again when it reopens a mailbox a POP3 rewrite left empty (helper-68)", async () => {
    const r = root(["alice"]);
    const store = track(new FileMailStore(r));
    const synced = spyOn(fsio, "syncDir");
    try {
      await store.deliver(["alice"], rec("first"));
      expect(synced.mock.calls.map((c) => c[0])).toContain(join(r, "alice"));
      // As popserver's QUIT after deleting everything: under the write lock, an empty file
      // renamed over the mailbox and the directory synced, then the lock let go.
      const lock = await acquireLock(join(r, "alice", "mymailbox.lock"), 5000);
      writeFileSync(join(r, "alice", "rewrite.tmp"), "");
      renameSync(join(r, "alice", "rewrite.tmp"), join(r, "alice", "mymailbox"));
      lock.release();
      synced.mockClear();
      await store.deliver(["alice"], rec("second"));
      expect(subjects(box(r, "alice"))).toEqual(["second"]);
      // Before: an fsync of the directory at every such reopen, one per POP3 session.
      expect(synced.mock.calls.map((c) => c[0])).not.toContain(join(r, "alice"));
      // A user directory made here: it and its name in the root.
      synced.mockClear();
      await store.deliver(["carol"], rec("third"));
      expect(synced.mock.calls.map((c) => c[0])).toEqual(expect.arrayContaining([r, join(r, "carol")]));
      // One popserver made at a first login (it does not sync the root): synced with the new
      // mailbox, though this process synced the root before (helper-73).
      mkdirSync(join(r, "dave"));
      synced.mockClear();
      await store.deliver(["dave"], rec("fourth"));
      expect(synced.mock.calls.map((c) => c[0])).toEqual(expect.arrayContaining([r, join(r, "dave")]));
    } finally {
      synced.mockRestore();
    }
  });

  test("a name a killed process made or renamed and did not sync is synced before the next 250 in it (helper-71)", async () => {
    const r = root(["alice", "bob"]);
    // (a) A mailbox made by an smtpmail killed before its directory's fsync: this process syncs
    // each directory once, whoever made the names in it.
    writeFileSync(join(r, "alice", "mymailbox"), "");
    const store = track(new FileMailStore(r, () => {}, 2000));
    const synced = spyOn(fsio, "syncDir");
    try {
      await store.deliver(["alice"], rec("a1"));
      expect(synced.mock.calls.map((c) => c[0])).toContain(join(r, "alice"));
      await store.deliver(["bob"], rec("b1"));
      // (c) popserver killed between its rename and the directory's fsync: its lock is stale,
      // and the file at the path is not yet on disk under that name.
      await store.idle();
      await Bun.sleep(20); // the kept lock is let go once deliveries pause
      const dead = Bun.spawn(["true"]);
      await dead.exited;
      writeFileSync(join(r, "bob", "mymailbox.lock"), `${dead.pid} ${hostname()}\n`);
      writeFileSync(join(r, "bob", "rewrite.tmp"), "");
      renameSync(join(r, "bob", "rewrite.tmp"), join(r, "bob", "mymailbox"));
      synced.mockClear();
      await store.deliver(["bob"], rec("b2"));
      expect(subjects(box(r, "bob"))).toEqual(["b2"]);
      expect(synced.mock.calls.map((c) => c[0])).toContain(join(r, "bob"));
    } finally {
      synced.mockRestore();
    }
  });

  test("mailbox locks are linked from one temp file in the mail root: users' directories hold no temp files (helper-68)", async () => {
    const r = root(["alice", "bob"]);
    const store = track(new FileMailStore(r));
    await Promise.all([store.deliver(["alice"], rec("a")), store.deliver(["bob"], rec("b"))]);
    // Before: a temp file per mailbox, kept beside it and made again whenever the box closed.
    for (const u of ["alice", "bob"]) expect(readdirSync(join(r, u)).filter((n) => n.startsWith(".link."))).toEqual([]);
    expect(readdirSync(r).filter((n) => n.startsWith(".link.")).length).toBe(1);
  });

  test("two smtpmail processes' worth of stores under steady load both get the lock in turn", async () => {
    const r = root();
    const busy = track(new FileMailStore(r));
    const other = track(new FileMailStore(r));
    let stop = false;
    const sent: string[] = [];
    const pumps = Array.from({ length: 8 }, async (_, k) => {
      for (let i = 0; !stop && i < 20_000; i++) {
        await busy.deliver(["alice"], rec(`b${k}-${i}`));
        sent.push(`b${k}-${i}`);
      }
    });
    while (busy.stats.batches < 20) await Bun.sleep(1);
    // One at a time while the busy store keeps going: each must get the lock in between.
    for (let i = 0; i < 10; i++) {
      await other.deliver(["alice"], rec(`o${i}`));
      sent.push(`o${i}`);
    }
    stop = true;
    await Promise.all(pumps);
    expect(subjects(box(r, "alice")).sort()).toEqual(sent.sort());
  });

  test("the write lock is let go once deliveries pause", async () => {
    const r = root();
    const store = track(new FileMailStore(r));
    await store.deliver(["alice"], rec("one"));
    const lockPath = join(r, "alice", "mymailbox.lock");
    for (let i = 0; i < 500 && existsSync(lockPath); i++) await Bun.sleep(2);
    expect(existsSync(lockPath)).toBe(false);
    // And taken again for the next delivery.
    await store.deliver(["alice"], rec("two"));
    expect(subjects(box(r, "alice"))).toEqual(["one", "two"]);
  });

  test("a stale write lock from a dead process does not block delivery", async () => {
    const r = root();
    const p = Bun.spawn(["true"]);
    await p.exited;
    writeFileSync(join(r, "alice", "mymailbox.lock"), `${p.pid} ${hostname()}\n`);
    const store = track(new FileMailStore(r, () => {}, 2000));
    await store.deliver(["alice"], rec("after"));
    expect(subjects(box(r, "alice"))).toEqual(["after"]);
    await store.idle();
    expect(existsSync(join(r, "alice", "mymailbox.lock"))).toBe(false);
  });

  test("a live writer's lock makes delivery fail (reject), not write around it", async () => {
    const r = root();
    const sleeper = Bun.spawn(["sleep", "30"]);
    try {
      writeFileSync(join(r, "alice", "mymailbox.lock"), `${sleeper.pid} ${hostname()}\n`);
      await expect(track(new FileMailStore(r, () => {}, 150)).deliver(["alice"], rec("blocked"))).rejects.toThrow(/timed out/);
      expect(existsSync(join(r, "alice", "mymailbox"))).toBe(false);
    } finally {
      sleeper.kill();
    }
  });

  describe("copies that fail while others of the message are stored", () => {
    const deferredFiles = (r: string) => (existsSync(deferredDir(r)) ? readdirSync(deferredDir(r)) : []);
    const waitFor = async (what: () => boolean) => {
      for (let i = 0; i < 400 && !what(); i++) await Bun.sleep(25);
    };
    const holdLock = (r: string, user: string, pid: number) => writeFileSync(join(r, user, "mymailbox.lock"), `${pid} ${hostname()}\n`);

    test("are deferred: the message is accepted, stored once for the others, and the deferred copy comes once the mailbox frees", async () => {
      const r = root(["alice", "bob", "carol"]);
      const warnings: string[] = [];
      const store = track(new FileMailStore(r, (w) => warnings.push(w), 150));
      const sleeper = Bun.spawn(["sleep", "30"]);
      try {
        holdLock(r, "bob", sleeper.pid);
        await store.deliver(["alice", "bob", "carol"], rec("m1"));
        expect(subjects(box(r, "alice"))).toEqual(["m1"]);
        expect(subjects(box(r, "carol"))).toEqual(["m1"]);
        expect(existsSync(join(r, "bob", "mymailbox"))).toBe(false);
        // Written aside durably before the delivery resolved (the 250).
        const files = deferredFiles(r);
        expect(files.length).toBe(1);
        expect(readDeferred(join(deferredDir(r), files[0]!))).toEqual({ users: ["bob"], record: rec("m1"), placed: new Map(), notable: true });
        expect(warnings.join("\n")).toContain("delivery to bob deferred");
      } finally {
        sleeper.kill();
      }
      // The lock's owner is gone: the next try (after 1 s) breaks it and delivers.
      await waitFor(() => existsSync(join(r, "bob", "mymailbox")) && deferredFiles(r).length === 0);
      expect(subjects(box(r, "bob"))).toEqual(["m1"]);
      expect(deferredFiles(r)).toEqual([]);
      expect(subjects(box(r, "alice"))).toEqual(["m1"]);
    });

    test("close() during a retry pass waits for it: no mailbox, lock or journal is opened after close() returned (helper-97)", async () => {
      const r = root(["alice", "bob"]);
      const store = new FileMailStore(r, () => {}, 300);
      const sleeper = Bun.spawn(["sleep", "30"]);
      try {
        holdLock(r, "bob", sleeper.pid);
        await store.deliver(["alice", "bob"], rec("m1"));
        expect(deferredFiles(r).length).toBe(1);
        // The pass after 1 s looks for copies already placed (it may run `sync -f`): slowed
        // here, so that close() comes while it looks, and bob's lock is free by then.
        const inner = store as unknown as { notYetPlaced: (d: unknown) => Promise<string[]> };
        const look = inner.notYetPlaced.bind(store);
        let looking = false;
        inner.notYetPlaced = async (d) => {
          looking = true;
          await Bun.sleep(300);
          return look(d);
        };
        await waitFor(() => looking);
        expect(looking).toBe(true);
        sleeper.kill();
        await sleeper.exited;
        await store.close();
      } finally {
        sleeper.kill();
      }
      const after = () => ({ journals: readdirSync(journalDir(r)), bobLocked: existsSync(join(r, "bob", "mymailbox.lock")) });
      const atClose = after();
      await Bun.sleep(400);
      expect(after()).toEqual(atClose);
      expect(atClose).toEqual({ journals: [], bobLocked: false });
    });

    test("are not deferred when no copy was stored: the delivery fails and nothing is kept", async () => {
      const r = root();
      const store = track(new FileMailStore(r, () => {}, 150));
      const sleeper = Bun.spawn(["sleep", "30"]);
      try {
        holdLock(r, "alice", sleeper.pid);
        holdLock(r, "bob", sleeper.pid);
        await expect(store.deliver(["alice", "bob"], rec("none"))).rejects.toThrow(/timed out/);
        expect(deferredFiles(r)).toEqual([]);
      } finally {
        sleeper.kill();
      }
    });

    /** A deferred copy for bob of message `tag`, left by a smtpmail killed while delivering it: `written` says whether its write was done. */
    async function killedMidDelivery(r: string, tag: string, written: boolean): Promise<void> {
      const first = new FileMailStore(r, () => {}, 150);
      const sleeper = Bun.spawn(["sleep", "30"]);
      try {
        holdLock(r, "bob", sleeper.pid);
        await first.deliver(["alice", "bob"], rec(tag));
        await first.close();
      } finally {
        sleeper.kill();
        await sleeper.exited;
      }
      const [name] = deferredFiles(r);
      const path = join(deferredDir(r), name!);
      // What the retry does before it is killed: note the place, then (maybe) write the copy there.
      const bob = join(r, "bob", "mymailbox");
      writeFileSync(bob, "");
      notePlacement(path, "bob", statSync(bob).ino, 0, false);
      if (written) {
        appendFileSync(bob, readDeferred(path)!.record);
        notePlacement(path, "bob", statSync(bob).ino, 0, true);
      }
      const dead = Bun.spawn(["true"]);
      await dead.exited;
      renameSync(path, join(deferredDir(r), name!.replace(`-${process.pid}-`, `-${dead.pid}-`)));
    }

    /** The next smtpmail: it takes the deferred files over and works through them. */
    async function restartAndDrain(r: string): Promise<void> {
      await track(new FileMailStore(r, () => {}, 150)).recover();
      await waitFor(() => deferredFiles(r).length === 0);
    }

    test("a copy written by a smtpmail killed before it removed the deferred file is not delivered again (helper-34)", async () => {
      const r = root();
      await killedMidDelivery(r, "m4", true);
      await restartAndDrain(r);
      expect(deferredFiles(r)).toEqual([]);
      expect(subjects(box(r, "bob"))).toEqual(["m4"]);
    });

    test("a copy noted but not yet written when smtpmail was killed is delivered, once", async () => {
      const r = root();
      await killedMidDelivery(r, "m5", false);
      await restartAndDrain(r);
      expect(subjects(box(r, "bob"))).toEqual(["m5"]);
      expect(subjects(box(r, "alice"))).toEqual(["m5"]);
    });

    test("a copy written before the kill and deleted over POP3 before the restart stays deleted (helper-35)", async () => {
      const r = root();
      await killedMidDelivery(r, "m6", true);
      // A POP3 session deletes it: the rewrite renames a new file (without it) over the mailbox.
      const bob = join(r, "bob", "mymailbox");
      writeFileSync(bob + ".new", "");
      renameSync(bob + ".new", bob);
      await restartAndDrain(r);
      expect(deferredFiles(r)).toEqual([]);
      expect(subjects(box(r, "bob"))).toEqual([]);
    });

    test("written and noted done, then two POP3 rewrites (ext4 may give the second the first file's inode number): deleted stays deleted, kept is not doubled (helper-36)", async () => {
      for (const keep of [false, true]) {
        const r = root();
        await killedMidDelivery(r, "m7", true);
        const bob = join(r, "bob", "mymailbox");
        const copy = readFileSync(bob);
        for (let i = 0; i < 2; i++) {
          writeFileSync(`${bob}.rewrite.${i}.tmp`, keep ? copy : "");
          renameSync(`${bob}.rewrite.${i}.tmp`, bob);
        }
        await restartAndDrain(r);
        expect(deferredFiles(r)).toEqual([]);
        expect(subjects(box(r, "bob"))).toEqual(keep ? ["m7"] : []);
      }
    });

    test("files that are not whole deferred messages are left alone, never appended, and never hold up the others", async () => {
      const r = root(["alice", "bob", "carol"]);
      const dead = Bun.spawn(["true"]);
      await dead.exited;
      mkdirSync(deferredDir(r), { recursive: true });
      const name = (n: number) => join(deferredDir(r), `${hostname()}-${dead.pid}-${n}.msg`);
      const good = rec("good");
      const two = Buffer.concat([rec("one"), rec("two")]);
      writeFileSync(name(1), Buffer.concat([Buffer.from(`MD2 ${good.length - 5} alice\n`), good])); // cut short
      writeFileSync(name(2), Buffer.concat([Buffer.from(`MD2 ${two.length} alice\n`), two])); // two messages
      writeFileSync(name(3), Buffer.concat([Buffer.from(`MD1 alice\n`), good, Buffer.from("at alice 1 0\n")])); // notes glued to an MD1 record
      writeFileSync(name(4), Buffer.concat([Buffer.from(`MD2 0 alice\n`)]));
      expect(Bun.spawnSync(["mkfifo", name(5)]).exitCode).toBe(0); // would hang a blocking read
      // carol's mailbox is a FIFO now: a noted copy for her must not hang the retries either.
      const carolBox = join(r, "carol", "mymailbox");
      expect(Bun.spawnSync(["mkfifo", carolBox]).exitCode).toBe(0);
      writeFileSync(name(6), Buffer.concat([Buffer.from(`MD2 ${good.length} carol\n`), good, Buffer.from("at carol 1 0\n")]));
      writeFileSync(name(7), Buffer.concat([Buffer.from(`MD2 ${good.length} bob bob\n`), good])); // the one real one, bob named twice
      const warnings: string[] = [];
      const store = track(new FileMailStore(r, (w) => warnings.push(w), 150));
      await store.recover();
      await waitFor(() => existsSync(join(r, "bob", "mymailbox")) && !deferredFiles(r).some((f) => readDeferred(join(deferredDir(r), f))?.users.includes("bob")));
      expect(subjects(box(r, "bob"))).toEqual(["good"]);
      expect(existsSync(join(r, "alice", "mymailbox"))).toBe(false);
      expect(warnings.filter((w) => w.includes("is not a deferred message")).length).toBe(5);
      // And the store still delivers.
      await store.deliver(["alice"], rec("after"));
      expect(subjects(box(r, "alice"))).toEqual(["after"]);
    });

    test("left by a smtpmail that was stopped or killed, are delivered by the next one", async () => {
      const r = root();
      const first = new FileMailStore(r, () => {}, 150);
      const sleeper = Bun.spawn(["sleep", "30"]);
      try {
        holdLock(r, "bob", sleeper.pid);
        await first.deliver(["alice", "bob"], rec("m2"));
        await first.close(); // the deferred copy stays on disk
      } finally {
        sleeper.kill();
        await sleeper.exited;
      }
      const [name] = deferredFiles(r);
      expect(name).toBeDefined();
      // As if its process had been killed: the file names a pid that is gone.
      const dead = Bun.spawn(["true"]);
      await dead.exited;
      renameSync(join(deferredDir(r), name!), join(deferredDir(r), name!.replace(`-${process.pid}-`, `-${dead.pid}-`)));
      // A temp file of a deferral that never finished (that message got a 451) is removed.
      writeFileSync(join(deferredDir(r), `.tmp-${name!.replace(`-${process.pid}-`, `-${dead.pid}-`).replace(/-\d+\.msg$/, "-1.msg")}`), "MD1 bob\npartial");
      const next = track(new FileMailStore(r, () => {}, 150));
      await next.recover();
      await waitFor(() => existsSync(join(r, "bob", "mymailbox")) && deferredFiles(r).length === 0);
      expect(subjects(box(r, "bob"))).toEqual(["m2"]);
      expect(subjects(box(r, "alice"))).toEqual(["m2"]);
      expect(deferredFiles(r)).toEqual([]);
    });
  });
});
