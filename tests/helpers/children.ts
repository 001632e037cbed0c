// Child processes the tests start, and the ones those start (scripts/start.ts's servers): found
// by PID and stopped, so that a test that fails or times out before its own stop leaves
// nothing running. A server never ends by itself: one left behind ran on after `npm test`.
import { readdirSync, readFileSync } from "node:fs";
import type { Subprocess } from "bun";

/** Whether `pid` is a process that has not exited (a zombie counts as exited). */
export function alive(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, "latin1"));
  } catch {
    return false;
  }
}

/** Its command line, arguments separated by spaces ("" once gone). */
export function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "latin1").replace(/\0/g, " ").trim();
  } catch {
    return "";
  }
}

/** When it started, in clock ticks since boot: kept across an exec, new for a PID used again. */
function startTime(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/stat`, "latin1").replace(/^.*\) /s, "").split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

/** The children of `pid` (of all its threads), from /proc. */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        out.push(...readFileSync(`/proc/${pid}/task/${tid}/children`, "latin1").split(" ").filter(Boolean).map(Number));
      } catch {}
    }
  } catch {}
  return out;
}

/** Children, grandchildren... of `pid`, deepest last. */
export function descendantsOf(pid: number): number[] {
  const out: number[] = [];
  for (let at = [pid]; at.length > 0; ) {
    at = at.flatMap(childrenOf);
    out.push(...at);
  }
  return out;
}

/** A process known by PID, with its start time to tell it from a later one given the same PID. */
export interface Known {
  pid: number;
  started: string | null;
}

export function known(pid: number): Known {
  return { pid, started: startTime(pid) };
}

/** Whether it is still running (and still the same process). */
export function stillRunning(p: Known): boolean {
  return p.started !== null && alive(p.pid) && startTime(p.pid) === p.started;
}

/** SIGKILLs each one still running; returns the command lines of those killed. */
export function killKnown(procs: Known[]): string[] {
  const killed: string[] = [];
  for (const p of procs) {
    if (!stillRunning(p)) continue;
    const cmd = cmdline(p.pid);
    try {
      process.kill(p.pid, "SIGKILL");
      killed.push(`${p.pid} ${cmd}`);
    } catch {}
  }
  return killed;
}

/** Waits until none of them is running, at most `ms`; true if all are gone. */
export async function gone(procs: Known[], ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (procs.some(stillRunning) && Date.now() < deadline) await Bun.sleep(20);
  return !procs.some(stillRunning);
}

const owned = new Set<Subprocess>();

/** Records a spawned process so that stopOwned() finds it; returns it. */
export function own<T extends Subprocess>(proc: T): T {
  owned.add(proc);
  void proc.exited.then(() => owned.delete(proc));
  return proc;
}

/**
 * Kills every recorded process still running after `graceMs` (a stop already sent has that
 * long to finish), and whatever it started, by PID (SIGKILL); waits for them, and returns the
 * command lines of those it had to kill.
 */
export async function stopOwned(graceMs = 0): Promise<string[]> {
  const deadline = Date.now() + graceMs;
  while (owned.size > 0 && Date.now() < deadline) await Bun.sleep(20);
  const procs = [...owned];
  // Found before any is killed: a killed parent's children are adopted by init, out of sight.
  const all = procs.flatMap((p) => [p.pid, ...descendantsOf(p.pid)]).map(known);
  const killed = killKnown(all);
  await Promise.all(procs.map((p) => p.exited));
  await gone(all);
  return killed;
}

/** The same without waiting, for an exit handler. */
export function killOwnedNow(): void {
  killKnown([...owned].flatMap((p) => [p.pid, ...descendantsOf(p.pid)]).map(known));
}
