// What this test process holds open, read from /proc: descriptors are the resource under test.
import { readdirSync, readlinkSync } from "node:fs";

/** How many `mymailbox` files under `root` this process has open. */
export function openMailboxes(root: string): number {
  return readdirSync("/proc/self/fd").filter((fd) => {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      return target.startsWith(root) && target.endsWith("/mymailbox");
    } catch {
      return false; // closed since it was listed
    }
  }).length;
}
