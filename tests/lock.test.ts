import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { acquireLock, alive, BOOT, isWanted, tryLock, want, wantedPath, WANTED_STALE_MS } from "../lib/lock.ts";
import { own, stopOwned } from "./helpers/children.ts";

const dir = mkdtempSync(join(tmpdir(), "lock-test-"));
const procs: { pid: number; kill(): void }[] = [];
afterAll(() => {
  for (const p of procs) p.kill();
  rmSync(dir, { recursive: true, force: true });
});
let n = 0;
const lockPath = () => join(dir, `box${++n}.lock`);

async function deadPid(): Promise<number> {
  const p = Bun.spawn(["true"]);
  await p.exited;
  return p.pid;
}
function livePid(): number {
  const p = Bun.spawn(["sleep", "60"]);
  procs.push(p);
  return p.pid;
}

describe("tryLock", () => {
  test("a lock's temp file is made anew: a symbolic link planted by its name is not written through (helper-94)", () => {
    const sub = join(dir, "planted");
    mkdirSync(sub);
    const victim = join(dir, "victim");
    writeFileSync(victim, "precious\n");
    // The names this process's temp files take, whatever its counter is at.
    for (let i = 1; i <= 2000; i++) symlinkSync(victim, join(sub, `.link.${hostname()}.${process.pid}.${i}`));
    const lock = tryLock(join(sub, "box.lock"))!;
    expect(lock).not.toBeNull();
    expect(readFileSync(join(sub, "box.lock"), "utf8")).toStartWith(`${process.pid} `);
    lock.release();
    expect(readFileSync(victim, "utf8")).toBe("precious\n");
  });

  test("takes a free lock, writes 'pid host', refuses a second taker, and releases", () => {
    const p = lockPath();
    const a = tryLock(p)!;
    expect(a).not.toBeNull();
    expect(readFileSync(p, "utf8").trim()).toBe(`${process.pid} ${hostname()} ${BOOT}`.trim());
    expect(tryLock(p)).toBeNull();
    a.release();
    expect(existsSync(p)).toBe(false);
    a.release(); // twice is harmless
    const b = tryLock(p)!;
    expect(b).not.toBeNull();
    b.release();
    // no temp files left behind
    expect(readdirSync(dir).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  test("a lock held by a live process on this host is respected", () => {
    const p = lockPath();
    writeFileSync(p, `${livePid()} ${hostname()}\n`);
    expect(tryLock(p)).toBeNull();
    expect(existsSync(p)).toBe(true);
  });

  test("a stale lock from a dead pid is broken", async () => {
    const p = lockPath();
    const pid = await deadPid();
    writeFileSync(p, `${pid} ${hostname()}\n`);
    const l = tryLock(p);
    expect(l).not.toBeNull();
    expect(readFileSync(p, "utf8").trim()).toBe(`${process.pid} ${hostname()} ${BOOT}`.trim());
    l!.release();
  });

  test.skipIf(!BOOT)("a lock of a live pid written in an earlier boot is broken (the pid was handed out again); of this boot or without a boot, it is respected", () => {
    // helper-26: after a reboot a live, unrelated process carried the pid of a lock's dead
    // owner, and the mailbox stayed blocked while it lived.
    const p = lockPath();
    writeFileSync(p, `${process.ppid} ${hostname()} 000000000000\n`);
    const l = tryLock(p);
    expect(l).not.toBeNull();
    l!.release();
    for (const content of [`${process.ppid} ${hostname()} ${BOOT}\n`, `${process.ppid} ${hostname()}\n`]) {
      writeFileSync(p, content);
      expect(tryLock(p)).toBeNull();
    }
  });

  test("a garbage or empty lock file is broken", () => {
    for (const content of ["", "garbage\n", "-5 host\n"]) {
      const p = lockPath();
      writeFileSync(p, content);
      const l = tryLock(p);
      expect(l).not.toBeNull();
      l!.release();
    }
  });

  test("a lock naming our own pid that we do not hold (left by an earlier process) is broken", () => {
    const p = lockPath();
    writeFileSync(p, `${process.pid} ${hostname()}\n`);
    const l = tryLock(p);
    expect(l).not.toBeNull();
    l!.release();
  });

  test("another host's lock is never broken (its pids cannot be checked)", async () => {
    const p = lockPath();
    writeFileSync(p, `${await deadPid()} some-other-host.example\n`);
    expect(tryLock(p)).toBeNull();
  });
});

describe("a FIFO in a lock's place", () => {
  test("is taken as held and never read (reading it blocked the event loop); a waiter's marker as a FIFO is ignored", () => {
    const path = lockPath();
    expect(Bun.spawnSync(["mkfifo", path]).exitCode).toBe(0);
    expect(tryLock(path)).toBeNull();
    expect(tryLock(path, dir)).toBeNull();
    expect(Bun.spawnSync(["mkfifo", wantedPath(path)]).exitCode).toBe(0);
    expect(isWanted(path)).toBe(false);
  });

  test("a FIFO, a symlink or an empty directory where the marker goes is nobody's request, and a waiter puts its marker in its place (helper-80, helper-81)", () => {
    const victim = join(dir, "victim");
    writeFileSync(victim, "not a marker\n");
    const makers = [(m: string) => Bun.spawnSync(["mkfifo", m]).exitCode === 0, (m: string) => (symlinkSync(victim, m), true), (m: string) => (mkdirSync(m), true)];
    for (const make of makers) {
      const path = lockPath();
      expect(make(wantedPath(path))).toBe(true);
      expect(isWanted(path)).toBe(false);
      // Before: a FIFO there made every request fail (EEXIST), and the waiter waited out its timeout.
      expect(want(path)).toBe(true);
      expect(lstatSync(wantedPath(path)).isFile()).toBe(true);
      expect(isWanted(path)).toBe(true);
    }
    expect(readFileSync(victim, "utf8")).toBe("not a marker\n");
  });

  test("a FIFO, a symlink or a directory at the name a waiter writes its new marker under neither holds it, nor is written through, nor stops it (helper-80, helper-81)", () => {
    const paths = [lockPath(), lockPath(), lockPath()];
    const victim = join(dir, "victim-2");
    writeFileSync(victim, "not a marker\n");
    // In a process of its own, which knows its pid (the name): a FIFO opened for writing blocked it for good.
    const script = `
      import { hostname } from "node:os";
      import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
      import { want, wantedPath } from ${JSON.stringify(join(import.meta.dir, "..", "lib", "lock.ts"))};
      const [fifo, link, dir] = ${JSON.stringify(paths)}.map((path) => {
        writeFileSync(wantedPath(path), "4242 another-host 1\\n");
        return wantedPath(path) + "." + hostname() + "." + process.pid;
      });
      Bun.spawnSync(["mkfifo", fifo]);
      symlinkSync(${JSON.stringify(victim)}, link);
      mkdirSync(dir);
      console.log(${JSON.stringify(paths)}.map((path) => want(path)).join(" "));
    `;
    const run = Bun.spawnSync([process.execPath, "-e", script], { timeout: 20_000 });
    expect(run.stderr.toString()).toBe("");
    expect(run.stdout.toString()).toBe("true true true\n");
    expect(readFileSync(victim, "utf8")).toBe("not a marker\n");
    for (const path of paths) {
      expect(readFileSync(wantedPath(path), "utf8")).toMatch(/^\d+ \S+ \d+\n$/);
      // Only the directory put there stays (nothing removes a directory it did not make).
      const left = readdirSync(dir).filter((n) => n.startsWith(`${basename(path)}.wanted.`));
      expect(left.filter((n) => !lstatSync(join(dir, n)).isDirectory())).toEqual([]);
    }
  });
});

describe("acquireLock", () => {
  test("waits for the holder to release", async () => {
    const p = lockPath();
    const a = tryLock(p)!;
    setTimeout(() => a.release(), 50);
    const b = await acquireLock(p, 5000);
    expect(b.path).toBe(p);
    b.release();
  });

  test("a waiter leaves a 'wanted' marker while it waits, and removes it once it has the lock", async () => {
    const p = lockPath();
    const a = tryLock(p)!;
    expect(isWanted(p)).toBe(false);
    const waiting = acquireLock(p, 5000);
    for (let i = 0; i < 500 && !isWanted(p); i++) await Bun.sleep(2);
    expect(isWanted(p)).toBe(true);
    a.release();
    const b = await waiting;
    expect(existsSync(wantedPath(p))).toBe(false);
    b.release();
  });

  test("a 'wanted' marker that has not changed for WANTED_STALE_MS is not honoured, whatever its file times say; a waiter makes its own again before then (helper-76, helper-78)", async () => {
    // Another host's waiter cannot be judged by its pid: only whether its marker changes tells.
    const hour = 3600_000;
    const paths = [0, hour, -hour].map((skew, i) => {
      const p = join(dir, `stale-marker-${i}.lock`);
      writeFileSync(wantedPath(p), "4242 another-host\n");
      // File times from a clock ahead of or behind ours (NFS, a clock stepped back) do not matter.
      const t = new Date(Date.now() + skew);
      utimesSync(wantedPath(p), t, t);
      return p;
    });
    for (const p of paths) expect(isWanted(p)).toBe(true);
    await Bun.sleep(WANTED_STALE_MS + 100);
    for (const p of paths) expect(isWanted(p)).toBe(false);
    // A waiter's next try makes it again (it cannot touch a marker another user made).
    const p = paths[1]!;
    expect(want(p)).toBe(true);
    expect(isWanted(p)).toBe(true);
    expect(readFileSync(wantedPath(p), "utf8")).toMatch(new RegExp(`^${process.pid} ${hostname().replace(/[.]/g, "\\.")} \\d+\\n$`));
    // Fresh: left as it is, and not this caller's to remove.
    expect(want(p)).toBe(false);
  });

  // The waiter in a process of its own: in one process, want() and isWanted() share what they have seen.
  test("a waiter in another process is honoured at its first try, even over a dead waiter's marker the holder already ignores, and never taken for dead while it tries (helper-79)", async () => {
    const p = join(dir, "long-wait.lock");
    writeFileSync(wantedPath(p), "4242 another-host 1\n");
    expect(isWanted(p)).toBe(true);
    await Bun.sleep(WANTED_STALE_MS + 100);
    expect(isWanted(p)).toBe(false);
    const child = Bun.spawn([process.execPath, join(import.meta.dir, "helpers", "marker-waiter.ts"), p, "3500"], { stdout: "pipe" });
    procs.push(child);
    const out = (child.stdout as ReadableStream<Uint8Array>).getReader();
    expect(new TextDecoder().decode((await out.read()).value)).toBe("first try: made\n");
    expect(isWanted(p)).toBe(true);
    let checks = 0;
    let ignored = 0;
    const until = Date.now() + 2000;
    while (Date.now() < until) {
      checks++;
      if (!isWanted(p)) ignored++;
      await Bun.sleep(5);
    }
    await child.exited;
    expect(checks).toBeGreaterThan(50);
    expect(ignored).toBe(0);
  });

  test("a 'wanted' marker left by a killed waiter is not honoured (and is removed)", async () => {
    const p = lockPath();
    writeFileSync(wantedPath(p), `${await deadPid()} ${hostname()}\n`);
    expect(isWanted(p)).toBe(false);
    expect(existsSync(wantedPath(p))).toBe(false);
    writeFileSync(wantedPath(p), `${livePid()} ${hostname()}\n`);
    expect(isWanted(p)).toBe(true);
  });

  test("times out while a live process holds it", async () => {
    const p = lockPath();
    writeFileSync(p, `${livePid()} ${hostname()}\n`);
    await expect(acquireLock(p, 100)).rejects.toThrow(/timed out/);
  });

  test("breaks a stale lock left by a killed process that really held it", async () => {
    const p = lockPath();
    // a child process takes the lock with lock.ts and is killed -9 while holding it
    const child = Bun.spawn([process.execPath, "-e", `const { tryLock } = await import(${JSON.stringify(join(import.meta.dir, "../lib/lock.ts"))}); if (!tryLock(${JSON.stringify(p)})) process.exit(3); console.log("held"); await Bun.sleep(60000);`], { stdout: "pipe" });
    procs.push(child);
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    expect(new TextDecoder().decode(value)).toContain("held");
    expect(tryLock(p)).toBeNull();
    child.kill(9);
    await child.exited;
    const l = await acquireLock(p, 5000);
    l.release();
  });

  test("locks linked from one temp file kept in another directory: exclusive, and nothing but the lock in their own", async () => {
    const shared = mkdtempSync(join(dir, "shared-"));
    const boxes = [1, 2, 3].map((i) => {
      const d = join(dir, `user${i}-${n++}`);
      mkdirSync(d);
      return join(d, "box.lock");
    });
    for (let round = 0; round < 2; round++) {
      const locks = boxes.map((p) => tryLock(p, shared)!);
      expect(locks.every((l) => l !== null)).toBe(true);
      for (const p of boxes) {
        expect(readFileSync(p, "utf8").trim()).toBe(`${process.pid} ${hostname()} ${BOOT}`.trim());
        expect(readdirSync(dirname(p))).toEqual(["box.lock"]);
        expect(tryLock(p, shared)).toBeNull();
        expect(tryLock(p)).toBeNull();
      }
      // One temp file serves them all, and stays for the next time.
      expect(readdirSync(shared).filter((f) => f.startsWith(".link."))).toHaveLength(1);
      // A lock someone else took after ours was (wrongly) broken is not removed by our release.
      rmSync(boxes[0]!);
      writeFileSync(boxes[0]!, `${livePid()} ${hostname()}\n`);
      for (const l of locks) l.release();
      expect(existsSync(boxes[0]!)).toBe(true);
      rmSync(boxes[0]!);
      expect(boxes.map((p) => existsSync(p))).toEqual([false, false, false]);
    }
    // A temp directory that cannot be written to: the lock takes a temp file of its own.
    const missing = join(dir, "no-such-dir");
    const fallback = tryLock(boxes[2]!, missing)!;
    expect(fallback).not.toBeNull();
    expect(readdirSync(dirname(boxes[2]!))).toEqual(["box.lock"]);
    fallback.release();
    expect(existsSync(boxes[2]!)).toBe(false);
    // ...and that directory is not tried again at every lock: once it exists, the next lock
    // still takes a temp file of its own (no temp kept there yet).
    mkdirSync(missing);
    const next = tryLock(boxes[2]!, missing)!;
    expect(next).not.toBeNull();
    expect(readdirSync(missing)).toEqual([]);
    next.release();
    // The kept temp file removed behind our back is made again.
    for (const f of readdirSync(shared)) rmSync(join(shared, f));
    const again = tryLock(boxes[1]!, shared)!;
    expect(again).not.toBeNull();
    again.release();
  });

  test("a process killed holding a lock from a shared temp file: the lock is broken, its temp file removed by the next process", async () => {
    const shared = mkdtempSync(join(dir, "shared-"));
    const p = lockPath();
    const lockTs = JSON.stringify(join(import.meta.dir, "../lib/lock.ts"));
    const child = Bun.spawn([process.execPath, "-e", `const { tryLock } = await import(${lockTs}); if (!tryLock(${JSON.stringify(p)}, ${JSON.stringify(shared)})) process.exit(3); console.log("held"); await Bun.sleep(60000);`], { stdout: "pipe" });
    procs.push(child);
    const { value } = await child.stdout.getReader().read();
    expect(new TextDecoder().decode(value)).toContain("held");
    expect(readdirSync(shared).filter((f) => f.startsWith(".link."))).toHaveLength(1);
    child.kill(9);
    await child.exited;
    // Another process takes it (this one has no temp file in `shared` yet) and exits cleanly.
    const next = Bun.spawn([process.execPath, "-e", `const { tryLock } = await import(${lockTs}); const l = tryLock(${JSON.stringify(p)}, ${JSON.stringify(shared)}); if (!l) process.exit(3); l.release();`]);
    procs.push(next);
    expect(await next.exited).toBe(0);
    expect(existsSync(p)).toBe(false);
    expect(readdirSync(shared)).toEqual([]); // the dead one's removed, its own gone at exit
  });

  test("many concurrent waiters in one process each get it exactly once, one at a time", async () => {
    const p = lockPath();
    let inside = 0;
    let max = 0;
    let done = 0;
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        const l = await acquireLock(p, 10000);
        inside++;
        max = Math.max(max, inside);
        await Bun.sleep(1);
        inside--;
        done++;
        l.release();
      }),
    );
    expect(done).toBe(20);
    expect(max).toBe(1);
  });
});

test("several processes breaking the same stale lock at once: never more than one holder at a time", async () => {
  const path = join(dir, "raced.lock");
  const log = join(dir, "raced.log");
  for (let round = 0; round < 6; round++) {
    writeFileSync(path, `999999 ${hostname()}\n`); // a dead pid on this host
    writeFileSync(log, "");
    const start = Date.now() + 300;
    const racers = Array.from({ length: 6 }, () =>
      Bun.spawn([process.execPath, join(import.meta.dir, "helpers", "lock-racer.ts"), path, log, String(start)], { stdio: ["ignore", "ignore", "inherit"] }),
    );
    await Promise.all(racers.map((p) => p.exited));
    // Held from..until, in order: each holder took it after the one before let go.
    const held = readFileSync(log, "utf8").split("\n").filter(Boolean).map((l) => l.split(" ").map(Number)).sort((a, b) => a[0]! - b[0]!);
    expect(held.length).toBeGreaterThanOrEqual(1);
    for (let i = 1; i < held.length; i++) expect([round, held[i]![0]! > held[i - 1]![1]!]).toEqual([round, true]);
  }
});

describe("a lock's owner", () => {
  test("a pid that is now a thread of some process is a dead owner: its lock is broken (helper-71)", () => {
    // One of this process's own threads (Bun runs several): kill(tid, 0) succeeds for it.
    const tid = readdirSync("/proc/self/task").map(Number).find((t) => t !== process.pid);
    expect(tid).toBeDefined();
    expect(alive(process.pid)).toBe(true);
    // Before: true, and a lock naming it stayed for as long as that process ran.
    expect(alive(tid!)).toBe(false);
    const dir = mkdtempSync(join(tmpdir(), "lock-tid-"));
    try {
      writeFileSync(join(dir, "box.lock"), `${tid} ${hostname()} ${BOOT}\n`);
      const lock = tryLock(join(dir, "box.lock"));
      expect(lock).not.toBeNull();
      lock!.release();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test.skipIf(!Bun.which("python3"))("a killed owner not yet reaped by its parent (a zombie) is a dead owner: its lock is broken (helper-111)", async () => {
    // A parent that never waits for its child: the child, killed, stays a zombie until the
    // parent ends. (bash with `exec sleep` after it was racy: a child killed before the exec
    // was reaped by bash.) SIGCHLD set back to its default: were it ignored, as a process may
    // inherit it, the kernel would reap the child at once.
    await withPython("import os,signal,time\nsignal.signal(signal.SIGCHLD,signal.SIG_DFL)\npid=os.fork()\nif pid==0:\n  time.sleep(60); os._exit(0)\nprint(pid,flush=True)\ntime.sleep(60)\n", async (zombie, lockPath) => {
      expect(alive(zombie)).toBe(true);
      process.kill(zombie, "SIGKILL");
      await showsZombie(zombie);
      // Before: true, and smtpmail neither broke its locks nor replayed its journals.
      expect(alive(zombie)).toBe(false);
      const lock = tryLock(lockPath);
      expect(lock).not.toBeNull();
      lock!.release();
    });
  });

  test.skipIf(!Bun.which("python3"))("a process whose first thread ended while others run shows Z, and is alive: its lock is respected (helper-116)", async () => {
    await withPython("import os,threading,time,ctypes\nthreading.Thread(target=lambda: time.sleep(60)).start()\nprint(os.getpid(),flush=True)\nctypes.CDLL(None).pthread_exit(None)\n", async (pid, lockPath) => {
      await showsZombie(pid);
      expect(alive(pid)).toBe(true);
      expect(tryLock(lockPath)).toBeNull();
    });
  });
});

/**
 * Runs a python program that prints a pid on its first line, and `check` with that pid and a
 * lock file naming it; the program is killed afterwards.
 */
async function withPython(program: string, check: (pid: number, lockPath: string) => Promise<void>): Promise<void> {
  const proc = own(Bun.spawn(["python3", "-c", program], { stdout: "pipe" }));
  const dir = mkdtempSync(join(tmpdir(), "lock-owner-"));
  try {
    const reader = proc.stdout.getReader();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    const pid = Number(text.trim());
    writeFileSync(join(dir, "box.lock"), `${pid} ${hostname()} ${BOOT}\n`);
    await check(pid, join(dir, "box.lock"));
  } finally {
    proc.kill("SIGKILL");
    await stopOwned();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Waits (5 s at most) until /proc shows pid in state Z, and expects it to. */
async function showsZombie(pid: number): Promise<void> {
  const status = () => readFileSync(`/proc/${pid}/status`, "latin1");
  const deadline = Date.now() + 5000;
  while (!/^State:\s*Z/m.test(status()) && Date.now() < deadline) await Bun.sleep(10);
  expect(status()).toMatch(/^State:\s*Z/m);
}
