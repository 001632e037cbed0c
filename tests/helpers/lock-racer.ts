// One contender in the stale-lock race of tests/lock.test.ts: waits for the start time,
// tries the lock once, and if it got it, says so and holds it for a moment.
import { appendFileSync } from "node:fs";
import { tryLock } from "../../lib/lock.ts";

const [path, log, start] = [process.argv[2]!, process.argv[3]!, Number(process.argv[4])];
while (Date.now() < start) {}
const lock = tryLock(path);
if (lock) {
  appendFileSync(log, `${process.pid} got\n`);
  Bun.sleepSync(150);
  lock.release();
}
