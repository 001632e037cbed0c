// One contender in the stale-lock race of tests/lock.test.ts: waits for the start time,
// tries the lock once, and if it got it, holds it for a moment and logs when it held it
// (a racer started late on a loaded machine may take the lock after the first let go).
import { appendFileSync } from "node:fs";
import { tryLock } from "../../lib/lock.ts";

const [path, log, start] = [process.argv[2]!, process.argv[3]!, Number(process.argv[4])];
while (Date.now() < start) {}
const lock = tryLock(path);
const clock = () => performance.timeOrigin + performance.now();
if (lock) {
  const got = clock();
  Bun.sleepSync(150);
  appendFileSync(log, `${got} ${clock()}\n`);
  lock.release();
}
