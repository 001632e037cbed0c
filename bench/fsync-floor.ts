// The disk's fsync floor: 1 KiB appends with an fsync after each, for about two seconds.
import { open, rm } from "node:fs/promises";
import { join } from "node:path";
import { percentile } from "./lib.ts";

export async function fsyncFloor(dir: string, ms = 2000): Promise<{ perSecond: number; msEach: number; p99ms: number }> {
  const path = join(dir, "fsync-floor.tmp");
  const fh = await open(path, "a");
  const block = Buffer.alloc(1024, 120);
  const each: number[] = [];
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    const t = performance.now();
    await fh.write(block);
    await fh.datasync();
    each.push(performance.now() - t);
  }
  const elapsed = performance.now() - t0;
  await fh.close();
  await rm(path);
  each.sort((a, b) => a - b);
  return { perSecond: (each.length / elapsed) * 1000, msEach: elapsed / each.length, p99ms: percentile(each, 99) };
}
