// A waiter in a process of its own, as popserver's acquireLock tries: want() every 2 ms for
// MS milliseconds. Prints whether its first try made the marker, then keeps trying.
import { want } from "../../lib/lock.ts";

const [path, msText] = process.argv.slice(2);
console.log(`first try: ${want(path!) ? "made" : "left"}`);
const end = performance.now() + Number(msText);
while (performance.now() < end) {
  want(path!);
  await Bun.sleep(2);
}
process.exit(0);
