// The raw write helpers the mailbox and journal writers rely on.
import { afterAll, expect, test } from "bun:test";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writevAllSync } from "../lib/fsio.ts";

const dir = mkdtempSync(join(tmpdir(), "fsio-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("writevAllSync appends more buffers than one system call takes (IOV_MAX), in order", () => {
  const path = join(dir, "append");
  writeFileSync(path, "head|");
  const parts = Array.from({ length: 1500 }, (_, i) => Buffer.from(`${i},`));
  const fd = openSync(path, "a");
  writevAllSync(fd, parts);
  closeSync(fd);
  expect(readFileSync(path, "latin1")).toBe("head|" + parts.map(String).join(""));
});

test("writevAllSync at a position writes over the bytes there and leaves the rest", () => {
  const path = join(dir, "inplace");
  writeFileSync(path, Buffer.alloc(4000, "."));
  const parts = Array.from({ length: 700 }, (_, i) => Buffer.from(String(i % 10)));
  const fd = openSync(path, "r+");
  writevAllSync(fd, parts, 100);
  closeSync(fd);
  const data = readFileSync(path, "latin1");
  expect(data.length).toBe(4000);
  expect(data.slice(0, 100)).toBe(".".repeat(100));
  expect(data.slice(100, 800)).toBe(parts.map(String).join(""));
  expect(data.slice(800)).toBe(".".repeat(3200));
});
