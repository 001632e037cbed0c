// The servers run without JavaScriptCore's top JIT tier (FTL). On the 2-core machines we
// measure on, its compiles (about 60 functions, 270 ms of compile time) run for the first
// ~15,000 SMTP messages beside the event loop and the clients, and its code was no faster
// once compiled. Without it (same bench run, server only): durable SMTP at 20 sessions
// 14.7k -> 21-23k msg/s, p99 4.7 -> 2.0 ms; popserver's peak RSS on the 1 GiB mailbox
// 61.5 -> 53 MiB; POP3 throughput unchanged. See README "Benchmarks".
//
// JavaScriptCore reads its options once, from the environment, before any code runs, so a
// server started without the option starts itself again with it: execve keeps the PID, the
// arguments, the open descriptors and ignored signals (nohup). Set BUN_JSC_useFTLJIT
// yourself (to 1 or 0) and it is left as it is.

/** The variable, and the value the servers run with. */
export const FTL_OPTION = "BUN_JSC_useFTLJIT";

/** Replaces this process with itself run without FTL, unless the option is already set. */
export function restartWithoutFtl(): void {
  if (process.env[FTL_OPTION] !== undefined) return;
  // A compiled executable's argv[1] is its own embedded entry point, not an argument.
  const compiled = Bun.main.startsWith("/$bunfs/");
  const args = compiled ? process.argv.slice(2) : [...process.execArgv, ...process.argv.slice(1)];
  try {
    process.execve?.(process.execPath, [process.execPath, ...args], { ...process.env, [FTL_OPTION]: "0" });
  } catch {
    // No execve here (the executable replaced or removed meanwhile): run as we are.
  }
}
