// The disk's fsync floor: 1 KiB appends with an fsync after each, for about two seconds.
import { open, rm } from "node:fs/promises";
import { join } from "node:path";

export async function fsyncFloor(dir: string, ms = 2000): Promise<{ perSecond: number; msEach: number }> {
  const path = join(dir, "fsync-floor.tmp");
  const fh = await open(path, "a");
  const block = Buffer.alloc(1024, 120);
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    await fh.write(block);
    await fh.datasync();
    n++;
  }
  const elapsed = performance.now() - t0;
  await fh.close();
  await rm(path);
  return { perSecond: (n / elapsed) * 1000, msEach: elapsed / n };
}
