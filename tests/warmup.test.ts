// popserver's start-up rehearsal: it must run the real session over a real file, and leave nothing behind.
import { expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { warmUpPop3 } from "../lib/warmup.ts";
import { command, makeRoot, removeRoot } from "./helpers/servers.ts";

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

test("a rehearsal directory left by a popserver stopped during its rehearsal is removed by the next one; a live one's is not (helper-98)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "warmup-test-"));
  const saved = process.env.TMPDIR;
  process.env.TMPDIR = dir;
  const dead = Bun.spawn(["true"]);
  await dead.exited;
  const live = Bun.spawn(["sleep", "30"]);
  try {
    for (const pid of [live.pid, dead.pid]) mkdirSync(join(dir, `popserver-warmup-${pid}-abc123`, "warmup"), { recursive: true });
    expect(await warmUpPop3()).not.toBeNull();
    expect(readdirSync(dir)).toEqual([`popserver-warmup-${live.pid}-abc123`]);
  } finally {
    live.kill();
    restore(saved);
    rmSync(dir, { recursive: true, force: true });
  }
});

// An immutable file stands for one this process may not remove (another user's, in a shared /tmp).
test.skipIf(!Bun.which("chattr"))("a leftover it cannot remove does not stop the rehearsal (helper-102)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "warmup-test-"));
  const saved = process.env.TMPDIR;
  process.env.TMPDIR = dir;
  const dead = Bun.spawn(["true"]);
  await dead.exited;
  const stuck = join(dir, `popserver-warmup-${dead.pid}-abc123`, "f");
  mkdirSync(join(stuck, ".."));
  writeFileSync(stuck, "");
  const immutable = Bun.spawnSync(["chattr", "+i", stuck]).exitCode === 0;
  try {
    expect(await warmUpPop3()).toEqual({ messages: 4000, sessions: 3 });
    if (immutable) expect(readdirSync(dir)).toEqual([`popserver-warmup-${dead.pid}-abc123`]);
  } finally {
    if (immutable) Bun.spawnSync(["chattr", "-i", stuck]);
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

test("popserver stopped during its rehearsal: exit 0, and its directory is removed (helper-99)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "warmup-test-"));
  const root = makeRoot({ ann: "a" });
  const p = Bun.spawn(command("popserver", ["0", "--host", "127.0.0.1", "--root", root]), { env: { ...process.env, TMPDIR: dir }, stdout: "pipe", stderr: "pipe" });
  try {
    // The directory exists only while the rehearsal runs: the stop comes in the middle of it.
    const deadline = Date.now() + 10_000;
    while (readdirSync(dir).length === 0 && Date.now() < deadline) await Bun.sleep(1);
    p.kill("SIGTERM");
    expect(await Promise.race([p.exited, Bun.sleep(15_000).then(() => "still running")])).toBe(0);
    expect(readdirSync(dir)).toEqual([]);
  } finally {
    p.kill("SIGKILL"); // a no-op once it has exited
    await p.exited;
    removeRoot(root);
    rmSync(dir, { recursive: true, force: true });
  }
});
