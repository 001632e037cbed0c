// The deferred-copy file format: what readDeferred accepts, and notes that survive a kill.
import { afterAll, expect, test } from "bun:test";
import { appendFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defer, notePlacement, readDeferred } from "../lib/deferred.ts";
import { BOOT } from "../lib/lock.ts";
import { buildRecord } from "../lib/mailbox.ts";

const root = mkdtempSync(join(tmpdir(), "deferred-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const record = buildRecord(Buffer.from("Subject: s\r\n\r\nbody\r\n"), "Received: 2026-12-02 : 10 : 00");

test("a written file reads back; notes say where each copy went, the last one for a user counting", async () => {
  const path = await defer(root, ["alice", "bob"], record);
  notePlacement(path, "alice", 7, 100, false);
  notePlacement(path, "alice", 7, 100, true);
  notePlacement(path, "bob", 8, 0, false);
  notePlacement(path, "bob", 9, 50, false); // tried again after a failure
  const d = readDeferred(path)!;
  expect(d.users).toEqual(["alice", "bob"]);
  expect(d.record.equals(record)).toBe(true);
  expect(d.placed.get("alice")).toEqual({ ino: 7, offset: 100, doneIn: BOOT });
  expect(d.placed.get("bob")).toEqual({ ino: 9, offset: 50 });
});

test("a note a kill cut short is ignored, and the next note is still read whole (not glued onto it)", async () => {
  const path = await defer(root, ["bob"], record);
  appendFileSync(path, "\nat bob 12");
  notePlacement(path, "bob", 345, 678, false);
  expect(readDeferred(path)!.placed.get("bob")).toEqual({ ino: 345, offset: 678 });
  appendFileSync(path, "\ndone bob");
  expect(readDeferred(path)!.placed.get("bob")).toEqual({ ino: 345, offset: 678 });
});
