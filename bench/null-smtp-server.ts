// The protocol ceiling: smtpmail's own protocol stack (framing, session, adapter) with
// storage replaced by a no-op. A separate bench-only entry point, so the no-op store can
// never be switched on from smtpmail's command line.
import { createSmtpServer } from "../lib/smtp-server.ts";
import type { MailStore } from "../lib/mail-store.ts";

const users = (process.argv[2] ?? "u1,u2,u3,u4").split(",");
const nullStore: MailStore = { deliver: async () => {} };
const server = createSmtpServer(
  { domain: "bench", host: "127.0.0.1", port: 0, maxMessageSize: 10 << 20, maxRecipients: 1000, maxConnections: 20000, idleTimeoutMs: 300_000, verbose: false, quiet: true, log: () => {} },
  { resolve: (l) => (users.includes(l) ? l : null) },
  nullStore,
);
server.start();
console.log(`null-smtp: listening on 127.0.0.1 port ${server.port}`);
process.on("SIGTERM", () => process.exit(0));
