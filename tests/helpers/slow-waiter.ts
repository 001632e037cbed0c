// A popserver-like waiter for a mailbox's write lock whose event loop is busy STALL ms at a
// time (other sessions' work), polling only in the gaps. Prints how it went, one line.
import { acquireLock } from "../../lib/lock.ts";
import { writeLockPath } from "../../lib/paths.ts";

const [root, stallText, timeoutText] = process.argv.slice(2);
const stall = Number(stallText);
const busy = setInterval(() => {
  const end = performance.now() + stall;
  while (performance.now() < end);
}, 1);
const t0 = performance.now();
try {
  const lock = await acquireLock(writeLockPath(root!, "alice"), Number(timeoutText));
  console.log(`got the lock after ${Math.round(performance.now() - t0)} ms`);
  lock.release();
} catch (e) {
  console.log(`failed after ${Math.round(performance.now() - t0)} ms: ${(e as Error).message}`);
}
clearInterval(busy);
process.exit(0);
