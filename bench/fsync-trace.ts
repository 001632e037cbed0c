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
    perf = Bun.spawn(["perf", "trace", "-e", "fdatasync,fsync", "-p", String(pid), "-o", out], { stdout: "ignore", stderr: "pipe" });
  } catch {
    return null;
  }
  // perf needs a moment to attach; if it cannot (not allowed, no tracepoints) it exits.
  await Bun.sleep(700);
  if (perf.exitCode !== null) return null;
  await during();
  // What each descriptor is, read while the server still holds them open.
  const kinds = new Map<number, SyncKind>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target = "";
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    kinds.set(Number(fd), target.endsWith(".journal") ? "journal" : target.endsWith("/mymailbox") ? "mailbox" : "other");
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
  // "  12.345 ( 0.456 ms): Bun Pool 0/1234 fdatasync(fd: 5)   = 0"
  for (const m of text.matchAll(/\(\s*([\d.]+) ms\): .*?(?:fdatasync|fsync)\(fd: (\d+)/g)) {
    const kind = kinds.get(Number(m[2])) ?? "other";
    const list = byKind.get(kind) ?? [];
    list.push(Number(m[1]));
    byKind.set(kind, list);
  }
  return byKind.size ? byKind : null;
}
