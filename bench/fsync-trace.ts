// Where the durable SMTP tail comes from: the duration of each fdatasync/fsync system call
// inside smtpmail during a load, recorded by `perf trace` (when it is installed and allowed),
// split by the file it flushed (delivery journal or mailbox). It separates the disk's own
// latency under this write load from the time the event loop adds around it.
import { readdirSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";

export type SyncKind = "journal" | "mailbox" | "other";

/** Durations in ms of the sync calls made while `during` ran, by kind; null without perf. */
export async function traceSyncs(pid: number, during: () => Promise<unknown>): Promise<Map<SyncKind, number[]> | null> {
  const out = join(tmpdir(), `bench-perf-trace-${process.pid}.txt`);
  let perf: ReturnType<typeof Bun.spawn>;
  try {
    perf = Bun.spawn(["perf", "trace", "-e", "fdatasync,fsync", "-p", String(pid), "-o", out], { stdout: "ignore", stderr: "ignore" });
  } catch {
    return null;
  }
  // perf needs a moment to attach; if it cannot (not allowed, no tracepoints) it exits.
  await Bun.sleep(700);
  if (perf.exitCode !== null) return null;
  try {
    await during();
  } catch (e) {
    perf.kill("SIGINT");
    throw e;
  }
  // What each descriptor is, read while the server still holds them open.
  const kinds = new Map<number, SyncKind>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target = "";
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    kinds.set(Number(fd), /\.(jnl|journal)$/.test(target) ? "journal" : target.endsWith("/mymailbox") ? "mailbox" : "other");
  }
  perf.kill("SIGINT");
  await perf.exited;
  const byKind = new Map<SyncKind, number[]>();
  let text = "";
  try {
    text = readFileSync(out, "utf8");
  } catch {
    return null;
  } finally {
    rmSync(out, { force: true });
  }
  for (const [fd, ms] of parseTrace(text)) {
    const kind = kinds.get(fd) ?? "other";
    const list = byKind.get(kind) ?? [];
    list.push(ms);
    byKind.set(kind, list);
  }
  return byKind.size ? byKind : null;
}

/**
 * [fd, ms] per completed call in `perf trace` output. A call that overlaps another thread's is
 * printed in two lines, its start ("fdatasync(fd: 5) ...", no time) and its end ("...
 * [continued]: fdatasync()) = 0", no fd), paired here by thread id.
 */
export function parseTrace(text: string): Array<[number, number]> {
  const calls: Array<[number, number]> = [];
  const started = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^\s*[\d.]+ \(\s*([\d.]+ ms)?\s*\): .*?\/(\d+) (.*)$/.exec(line);
    if (!m) continue;
    const [, time, tid, call] = m as unknown as [string, string | undefined, string, string];
    const fd = /(?:fdatasync|fsync)\(fd: (\d+)/.exec(call);
    if (fd && time) calls.push([Number(fd[1]), parseFloat(time)]);
    else if (fd) started.set(tid, Number(fd[1]));
    else if (time && /\[continued\]: (?:fdatasync|fsync)\(\)/.test(call) && started.has(tid)) {
      calls.push([started.get(tid)!, parseFloat(time)]);
      started.delete(tid);
    }
  }
  return calls;
}
