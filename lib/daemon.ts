// Process-level pieces shared by both servers: binding with a readable error, and a
// graceful stop on SIGTERM / SIGINT / SIGHUP.
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
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log(`${name}: ${signal} received, finishing ${server.connections} connection(s)`);
    await server.shutdown();
    await drain();
    log(`${name}: stopped`);
    process.exit(0);
  };
  // SIGHUP too: the terminal running the servers was closed. Left to its default it ended the
  // process like kill -9: no goodbye to clients, locks and journals left behind (helper-26).
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(signal, () => void stop(signal));
}
