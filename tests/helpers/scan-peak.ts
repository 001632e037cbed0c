// Indexes one mailbox file with scanFile in a process of its own and prints, as JSON, what it
// found and how far the process's peak resident memory (VmHWM) rose while it did.
// usage: bun scan-peak.ts <file>
import { closeSync, openSync, readFileSync, fstatSync } from "node:fs";
import { scanFile } from "../../lib/mailbox-scanner.ts";

const peakKiB = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]);
const fd = openSync(process.argv[2]!, "r");
try {
  // The first bytes once, so that what the code and its first run cost is in the baseline.
  await scanFile(fd, 0, Math.min(4096, fstatSync(fd).size));
  Bun.gc(true);
  const before = peakKiB();
  const scanner = await scanFile(fd, 0, fstatSync(fd).size);
  const grewKiB = peakKiB() - before;
  console.log(JSON.stringify({ grewKiB, messages: scanner.messages, validEnd: scanner.validEnd }));
} finally {
  closeSync(fd);
}
