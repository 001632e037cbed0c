// Process-level pieces shared by both servers: binding with a readable error, and a
// graceful stop on SIGTERM / SIGINT / SIGHUP.
import { readFileSync } from "node:fs";
import type { MailServer } from "./server.ts";

export function listenOrExplain(server: MailServer, host: string, port: number): void {
  try {
    server.start();
  } catch (e) {
    const err = e as Error & { code?: string; errno?: number };
    const text = `${err.code ?? ""} ${err.message}`;
    if (/EADDRINUSE|in use/i.test(text)) throw new Error(`port ${port} on ${host} is already in use`);
    if (/EACCES|permission/i.test(text)) throw new Error(`no permission to listen on port ${port} (ports below 1024 need root or CAP_NET_BIND_SERVICE)`);
    if (/EADDRNOTAVAIL|ENOTFOUND|getaddrinfo/i.test(text)) throw new Error(`cannot listen on address ${host}: ${err.message}`);
    throw new Error(`cannot listen on ${host} port ${port}: ${err.message}`);
  }
}

export function installShutdown(name: string, server: MailServer, drain: () => Promise<void>, log: (l: string) => void): void {
  let stopping = false;
  const stop = async (reason: string) => {
    if (stopping) return;
    stopping = true;
    log(`${name}: ${reason}, finishing ${server.connections} connection(s)`);
    await server.shutdown();
    await drain();
    log(`${name}: stopped`);
    process.exit(0);
  };
  // SIGHUP too: the terminal running the servers was closed. Left to its default it ended the
  // process like kill -9: no goodbye to clients, locks and journals left behind (helper-26).
  // Not when it was ignored at start (nohup): a handler would undo that (helper-28).
  const signals = hangupIgnored() ? (["SIGTERM", "SIGINT"] as const) : (["SIGTERM", "SIGINT", "SIGHUP"] as const);
  for (const signal of signals) process.on(signal, () => void stop(`${signal} received`));
  // Started by `npm start` (scripts/start.ts): a parent killed with SIGKILL cannot stop us, and
  // both servers ran on, adopted by init, holding their ports. Once the parent is gone we stop
  // as on SIGTERM. Only for that parent, named in the environment: a server started from a
  // shell must outlive the shell when it was put in the background on purpose.
  const parent = Number(process.env[STOP_WITH_PARENT]);
  if (Number.isInteger(parent) && parent > 1) {
    if (process.ppid !== parent) void stop(`parent process ${parent} gone`);
    else setInterval(() => process.ppid !== parent && void stop(`parent process ${parent} gone`), 500).unref();
  }
}

/** Environment variable naming the pid whose end stops a server (set by scripts/start.ts). */
export const STOP_WITH_PARENT = "MAIL_STOP_WITH_PARENT";

/** Whether this process was started with SIGHUP ignored (nohup), from /proc; false where unknown. */
export function hangupIgnored(): boolean {
  try {
    const mask = /^SigIgn:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "latin1"))?.[1];
    return mask !== undefined && (parseInt(mask.slice(-1), 16) & 1) === 1; // bit 0: signal 1
  } catch {
    return false;
  }
}
