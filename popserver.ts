#!/usr/bin/env bun
// popserver: the POP3 server (RFC 1939) over the mailboxes smtpmail fills.
import { join, resolve } from "node:path";
import { helpText, parseArgs, parseCount, parseNumber, parsePort, runMain, securityOptions, securityFlags, UsageError, VERSION, type FlagSpec } from "./lib/cli.ts";
import { installShutdown, listenOrExplain } from "./lib/daemon.ts";
import { log } from "./lib/log.ts";
import { removeInterruptedRewrites } from "./lib/maildrop.ts";
import { createPopServer, filePopStore } from "./lib/pop3-server.ts";
import { HeldFiles } from "./lib/descriptors.ts";
import { Users } from "./lib/users.ts";
import { restartWithoutFtl } from "./lib/jit.ts";
import { warmUpPop3 } from "./lib/warmup.ts";

const FLAGS: FlagSpec = {
  "--root": { value: "DIR", help: "mail root holding user.txt and one directory per user (default: current directory)" },
  "--host": { value: "ADDR", help: "address to listen on (default: 0.0.0.0)" },
  "--max-connections": { value: "N", help: "simultaneous connections (default: 20000)" },
  "--timeout": { value: "SECONDS", help: "autologout after this idle time (default: 600, RFC 1939)" },
  ...securityFlags("pop3"),
  "--verbose": { help: "log every command and reply as C: / S: lines (passwords hidden)" },
  "--quiet": { help: "log only logins, deletions and errors, not every connection" },
  "--version": { help: "print the version and exit" },
  "--help": { help: "show this help" },
};

const USAGE = "usage: popserver [pop3_port] [options]     (port default 1100; 0 picks a free port)";

restartWithoutFtl();
void runMain("popserver", async () => {
  const { positional, flags } = parseArgs(Bun.argv.slice(2), FLAGS);
  if (flags.has("--help")) {
    process.stdout.write(helpText(USAGE, "POP3 server: lets users read and delete the mail in <root>/<user>/mymailbox.", FLAGS));
    return;
  }
  if (flags.has("--version")) {
    process.stdout.write(`popserver ${VERSION}\n`);
    return;
  }
  if (positional.length > 1) throw new UsageError(`unexpected argument "${positional[1]}"`);
  const port = parsePort(positional[0], 1100, "port");
  const root = resolve(String(flags.get("--root") ?? "."));
  const users = new Users(join(root, "user.txt"), log);
  users.load();
  const host = String(flags.get("--host") ?? "0.0.0.0");
  const sec = securityOptions(flags);
  const held = new HeldFiles();
  const server = createPopServer(
    {
      heldFiles: held,
      host,
      port,
      maxConnections: parseCount(flags.get("--max-connections"), 20000, "--max-connections", 1),
      maxPerAddress: sec.maxPerAddress,
      perAddressExemptsLoopback: sec.perAddressExemptsLoopback,
      tlsFiles: sec.tlsFiles,
      tlsPort: sec.tlsPort,
      requireTls: sec.requireTls,
      throttle: sec.throttle,
      idleTimeoutMs: parseNumber(flags.get("--timeout"), 600, "--timeout", 0.1) * 1000,
      verbose: flags.has("--verbose"),
      quiet: flags.has("--quiet"),
      log,
    },
    filePopStore(root, users, log, held),
  );
  // Before the rehearsal and the line that says it listens: a stop sent at any moment of the
  // start is graceful (exit 0, the rehearsal's directory removed).
  installShutdown("popserver", server, async () => {}, log);
  // Before listening: a first client would otherwise share the CPU with the rehearsal.
  await warmUpPop3();
  listenOrExplain(server, host, port);
  const tlsNote = sec.tlsFiles ? `, STLS${server.tlsPort ? `, TLS port ${server.tlsPort}` : ""}` : "";
  process.stdout.write(`popserver: listening on ${host} port ${server.port} (root ${root}, users ${users.summary()}${tlsNote})\n`);
  void removeInterruptedRewrites(root, users.names).catch((e) => log(`popserver: cleaning up interrupted rewrites: ${(e as Error).message}`));
});
