// The servers run without JavaScriptCore's top JIT tier (FTL). On the 2-core machines we
// measure on, its compiles (about 60 functions, 270 ms of compile time) ran through the first
// ~15,000 SMTP messages beside the event loop and the clients, and its code was not faster
// once they were done. Without it (interleaved bench runs, server only): durable SMTP at 20
// sessions 14.5-15.2k -> 21.4-22.2k msg/s, p99 4.8 -> 2.0 ms; popserver's peak RSS on the
// 1 GiB mailbox 61.9 -> 53.6 MiB; POP3 RETR rates the same, UIDL of 100,000 18.5 -> 31 ms.
//
// JavaScriptCore reads its options once, from the environment, before any code runs, so a
// server started without the option starts itself again with it (execve): same PID, same
// argv[0] and process name, the same arguments (the script's path made absolute), the
// environment it was started with, and signals ignored at start (nohup) still ignored.
// Bun's execve does not pass on descriptors above stderr: to hand a server one (a lock held
// on fd 9), set BUN_JSC_useFTLJIT yourself, to 0 or 1; a set option is left as it is.
import { readFileSync, realpathSync } from "node:fs";
import { basename } from "node:path";

/** The JavaScriptCore option; the servers set it to "0". */
export const FTL_OPTION = "BUN_JSC_useFTLJIT";

/** Replaces this process with itself run without FTL, unless the option is already set. */
export function restartWithoutFtl(): void {
  if (process.env[FTL_OPTION] !== undefined || !process.execve) return;
  // Started through the dynamic loader (`ld-linux... ./smtpmail`, for a noexec mount):
  // execPath is the loader, which would not know what to run.
  if (basename(process.execPath).startsWith("ld-")) return;
  // A compiled executable's argv[1] is its own embedded entry point, not an argument.
  const compiled = Bun.main.startsWith("/$bunfs/");
  const args = compiled ? process.argv.slice(2) : [...runtimeFlags(), ...process.argv.slice(1)];
  const env = startEnvironment();
  // Passed on as UTF-8: a value in another encoding (a latin1 path) would come back changed.
  if (!env) return;
  try {
    process.execve(sameProgramAsTyped(), [process.argv0 || process.execPath, ...args], { ...env, [FTL_OPTION]: "0" });
  } catch {
    // The executable replaced or removed since it started: run as we are.
  }
}

/** Bun's own flags; --cwd is done already, and taken again from inside the directory it would fail. */
function runtimeFlags(): string[] {
  const flags: string[] = [];
  const given = process.execArgv;
  for (let i = 0; i < given.length; i++) {
    if (given[i] === "--cwd") i++;
    else if (!given[i]!.startsWith("--cwd=")) flags.push(given[i]!);
  }
  return flags;
}

/**
 * The path the program was started by (a symlink such as node_modules/.bin/bun), so the
 * process keeps its name for ps, pgrep and pidof; else the executable itself.
 */
function sameProgramAsTyped(): string {
  try {
    const typed = Bun.which(process.argv0);
    if (typed && realpathSync(typed) === realpathSync(process.execPath)) return typed;
  } catch {}
  return process.execPath;
}

/**
 * The environment as the process got it: Bun adds a script's .env to process.env, and those
 * values (secrets, often) should not become the process's environment for all to inherit.
 * Null when an entry is not UTF-8: it could not be passed on unchanged.
 */
function startEnvironment(): Record<string, string> | null {
  let raw: Buffer;
  try {
    raw = readFileSync("/proc/self/environ");
  } catch {
    return { ...process.env } as Record<string, string>;
  }
  const env: Record<string, string> = {};
  const strict = new TextDecoder("utf-8", { fatal: true });
  for (let at = 0; at < raw.length; ) {
    let end = raw.indexOf(0, at);
    if (end < 0) end = raw.length;
    let entry: string;
    try {
      entry = strict.decode(raw.subarray(at, end));
    } catch {
      return null;
    }
    at = end + 1;
    const eq = entry.indexOf("=");
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}
