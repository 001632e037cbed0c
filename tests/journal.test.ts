// The delivery journal: one fsync covers a whole round of deliveries, and recover() puts
// back copies whose mailbox bytes a machine crash lost (simulated by cutting the file).
import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync, statSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileMailStore } from "../lib/mail-store.ts";
import { buildRecord, scanBuffer } from "../lib/mailbox.ts";
import { journalDir, readJournal } from "../lib/journal.ts";

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
  const journal = readdirSync(journalDir(r)).map((f) => join(journalDir(r), f));
  expect(journal.length).toBe(1);
  expect(readJournal(journal[0]!).length).toBe(6);
  // Simulate the machine crashing before the checkpoint: alice's unsynced bytes are gone,
  // bob's made it. The journal (fsync'd) survives.
  truncateSync(join(r, "alice", "mymailbox"), checkpointed);
  const restarted = new FileMailStore(r);
  expect(await restarted.recover()).toBe(3);
  expect(subjects(join(r, "alice", "mymailbox"))).toEqual(["message 1", "message 2", "message 3", "message 4"]);
  expect(subjects(join(r, "bob", "mymailbox"))).toEqual(["message 2", "message 3", "message 4"]);
  // Recovering again finds nothing to do: the journal was consumed.
  expect(await new FileMailStore(r).recover()).toBe(0);
});

test("recover() does not resurrect mail deleted by a POP3 rewrite (the file was replaced)", async () => {
  const r = root();
  const store = new FileMailStore(r);
  await Promise.all([1, 2].map((n) => store.deliver(["alice"], record(n))));
  // A POP3 session deleted message 1: the rewrite renames a new file over the mailbox.
  const box = join(r, "alice", "mymailbox");
  const data = readFileSync(box);
  const kept = scanBuffer(data).messages[1]!;
  writeFileSync(box + ".new", data.subarray(kept.offset, kept.offset + kept.length));
  renameSync(box + ".new", box);
  expect(await new FileMailStore(r).recover()).toBe(0);
  expect(subjects(box)).toEqual(["message 2"]);
});

test("a torn last journal entry (never acknowledged) is ignored", async () => {
  const r = root();
  const store = new FileMailStore(r);
  await store.deliver(["alice"], record(1));
  const [name] = readdirSync(journalDir(r));
  const path = join(journalDir(r), name!);
  const size = statSync(path).size;
  writeFileSync(path, Buffer.concat([readFileSync(path), Buffer.from("MJ1 alice 1 999 500 deadbeef\nFrom: torn")]));
  expect(readJournal(path).length).toBe(1);
  expect(size).toBeGreaterThan(0);
});
