// Loaded before every test file (bunfig.toml). The servers the helpers start (servers.ts) are
// recorded; one still running when the whole run is over was left by a test that failed or
// timed out before its own stop, or that never stopped it: it is killed here, with whatever it
// started, and the run fails with its command line, so that it is fixed rather than found
// running hours later.
import { afterAll } from "bun:test";
import { killOwnedNow, stopOwned } from "./children.ts";

afterAll(async () => {
  const killed = await stopOwned(2000);
  if (killed.length > 0) throw new Error(`processes left running by the tests, killed now:\n  ${killed.join("\n  ")}`);
});

// Should the run end another way (an exception outside any test), they do not outlive it either.
process.on("exit", killOwnedNow);
