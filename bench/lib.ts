// Shared pieces of the benchmarks: child servers, process measurements, figure printing.
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const PROJECT = resolve(import.meta.dir, "..");

/** One figure per line: name, value, unit. */
export function figure(name: string, value: number, unit: string): void {
  const v = Number.isInteger(value) ? String(value) : value >= 100 ? value.toFixed(0) : value >= 1 ? value.toFixed(2) : value.toPrecision(3);
  console.log(`${name.padEnd(52)} ${v.padStart(12)} ${unit}`);
}

export function makeRoot(users: string[]): string {
  const root = mkdtempSync(join(process.env.BENCH_TMP ?? tmpdir(), "bench-root-"));
  writeFileSync(join(root, "user.txt"), users.map((u) => `${u} ${u}pw\n`).join(""));
  for (const u of users) mkdirSync(join(root, u));
  return root;
}

export interface Child {
  proc: ReturnType<typeof Bun.spawn>;
  port: number;
  stderr: () => string;
  stop(): Promise<void>;
}

/** Starts a server script on port 0 and reads back its port. */
export async function startChild(args: string[]): Promise<Child> {
  const proc = Bun.spawn([process.execPath, ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  let err = "";
  void (async () => {
    const d = new TextDecoder();
    for await (const c of proc.stderr as ReadableStream<Uint8Array>) err += d.decode(c);
  })();
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  let out = "";
  const d = new TextDecoder();
  while (!/port (\d+)/.test(out)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server did not start: ${out}${err}`);
    out += d.decode(value);
  }
  void (async () => {
    while (!(await reader.read()).done);
  })();
  return {
    proc,
    port: Number(/port (\d+)/.exec(out)![1]),
    stderr: () => err,
    async stop() {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}

/** Resident set size and its peak (VmHWM) of a process, in KiB, from /proc. */
export function memoryOf(pid: number): { rss: number; peak: number } {
  try {
    const status = require("node:fs").readFileSync(`/proc/${pid}/status`, "utf8") as string;
    const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
    return { rss: kb("VmRSS"), peak: kb("VmHWM") };
  } catch {
    return { rss: 0, peak: 0 };
  }
}

/** CPU seconds (user+system) used so far by a process, from /proc. */
export function cpuOf(pid: number): number {
  try {
    const stat = require("node:fs").readFileSync(`/proc/${pid}/stat`, "utf8") as string;
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (100 Hz)
  } catch {
    return 0;
  }
}

/** CPU seconds used so far by each thread of a process, by thread name ("main thread", then e.g. "Bun Pool" with its threads summed), from /proc. */
export function threadCpuOf(pid: number): Map<string, number> {
  const fs = require("node:fs") as typeof import("node:fs");
  const byName = new Map<string, number>();
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const name = tid === String(pid) ? "main thread" : stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")).replace(/\s*\d+$/, "");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      byName.set(name, (byName.get(name) ?? 0) + (Number(f[11]) + Number(f[12])) / 100);
    }
  } catch {}
  return byName;
}

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}
