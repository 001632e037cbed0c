// popserver's start-up rehearsal: it must run the real session over a real file, and leave nothing behind.
import { expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { warmUpPop3 } from "../lib/warmup.ts";

function restore(saved: string | undefined): void {
  if (saved === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = saved;
}

test("the rehearsal runs a whole session in a directory of its own and removes it", async () => {
  const dir = mkdtempSync(join(tmpdir(), "warmup-test-"));
  const saved = process.env.TMPDIR;
  process.env.TMPDIR = dir;
  try {
    const seen: string[][] = [];
    const watcher = setInterval(() => seen.push(readdirSync(dir)), 1);
    const done = await warmUpPop3();
    clearInterval(watcher);
    expect(done).toEqual({ messages: 4000, sessions: 3 });
    expect(readdirSync(dir)).toEqual([]);
    expect(seen.flat().every((name) => name.startsWith("popserver-warmup-"))).toBe(true);
  } finally {
    restore(saved);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a temporary directory it cannot use costs the rehearsal only", async () => {
  const saved = process.env.TMPDIR;
  process.env.TMPDIR = "/nonexistent/warmup";
  try {
    expect(await warmUpPop3()).toBeNull();
  } finally {
    restore(saved);
  }
});
